"""``hil report RESULTS_DIR``: each criterion's value across the last N runs (a nightly trend),
with regressions flagged; exit status 1 when one is flagged.

A run is a sub-folder of RESULTS_DIR with a ``summary.json``; runs are ordered by their start time
(then run id). In a run, a criterion measured by several tests counts with its worst verdict
(the smallest margin). A run is flagged as a regression for a criterion, against the previous
run in the window that measured it, when

- its verdict got worse (PASS -> MARGINAL, PASS -> FAIL, MARGINAL -> FAIL), or
- its margin shrank by more than the width of the criterion's marginal band on the side of the
  limit it is nearest to (``|marginal.min - limits.min|`` or ``|limits.max - marginal.max|``):
  the value moved towards the limit by more than a band width in one step, even if the verdict
  did not change (a criterion without a marginal band on that side is judged on verdicts only), or
- it was measured in the previous run and is listed as not measured in this one (evidence lost).

A change of verdict or of margin counts only when it is also larger than the noise of the two
measurements: when either verdict states its standard uncertainty (``uncertainty``, one sigma,
from counting statistics or the measurement's own resolution), the margin must have shrunk by
more than ``K_SIGMA`` = 3 combined standard uncertainties, sqrt(u_prev^2 + u_this^2). Two
measurements of an unchanged link then differ by more than that once in about 740 comparisons
(one-sided 3 sigma of a normal difference, 0.135 %), so a value that jitters across a marginal
band edge is not called a regression; a measurement without a stated uncertainty is judged on
verdicts and band widths alone, as before.

Margins are compared in the quantity's SI unit, so a criterion file that changed its display
unit between runs still compares. Every flagged run in the window counts for the exit status.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .criteria import QUANTITIES

_RANK = {"PASS": 0, "MARGINAL": 1, "FAIL": 2}
# a change is a regression only beyond this many combined standard uncertainties (see above)
K_SIGMA = 3.0


def load_runs(results_dir: Path) -> tuple[list[dict], list[str]]:
    """Every run's summary in ``results_dir``, oldest first; and one-line problems met."""
    runs, problems = [], []
    for f in sorted(results_dir.glob("*/summary.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{f}: unreadable summary ({exc})")
            continue
        if not isinstance(data, dict) or "run_id" not in data:
            problems.append(f"{f}: not a qkd-hil run summary")
            continue
        runs.append(data)
    runs.sort(key=lambda r: (r.get("started_utc") or "", r["run_id"]))
    return runs, problems


def _factor(quantity: str, unit: str) -> float:
    return QUANTITIES.get(quantity, ("", {}, ""))[1].get(unit, math.nan)


def _band_width_si(entry: dict, value: float) -> float | None:
    """Width of the marginal band on the side of the limit ``value`` is nearest to (SI)."""
    lim, mar = entry.get("limits") or {}, entry.get("marginal") or {}
    sides = []
    if lim.get("min") is not None:
        sides.append((value - lim["min"], "min"))
    if lim.get("max") is not None:
        sides.append((lim["max"] - value, "max"))
    if not sides:
        return None
    side = min(sides)[1]
    if mar.get(side) is None:
        return None
    return abs(mar[side] - lim[side]) * _factor(entry["quantity"], entry["unit"])


def _point(run: dict, entry: dict) -> dict:
    """One criterion in one run: its worst verdict, or not measured."""
    verdicts = [v for v in entry.get("verdicts", []) if v.get("margin") is not None]
    base = {"run_id": run["run_id"], "started_utc": run.get("started_utc"), "unit": entry["unit"]}
    if not entry.get("verdicts"):
        return {**base, "outcome": "NOT MEASURED", "value": None, "margin": None}
    if not verdicts:  # a NaN measurement: FAIL without a margin
        v = entry["verdicts"][0]
        return {**base, "outcome": v["outcome"], "value": v.get("value"), "margin": None}
    v = min(verdicts, key=lambda x: x["margin"])
    f = _factor(entry["quantity"], entry["unit"])
    return {
        **base,
        "outcome": v["outcome"],
        "value": v["value"],
        "margin": v["margin"],
        "margin_si": v["margin"] * f,
        "unit_si": f,
        "band_width_si": _band_width_si(entry, v["value"]),
        "uncertainty": v.get("uncertainty"),
        "uncertainty_si": None if v.get("uncertainty") is None else v["uncertainty"] * f,
        "test": v.get("test", ""),
    }


def trend(runs: list[dict], criterion: str | None = None) -> dict[str, dict]:
    """criterion id -> {title, quantity, points: [...]} with each point's regression (or None)."""
    out: dict[str, dict] = {}
    for run in runs:
        for entry in run.get("criteria", []):
            cid = entry["id"]
            if criterion is not None and cid != criterion:
                continue
            t = out.setdefault(
                cid, {"title": entry.get("title", ""), "quantity": entry["quantity"], "points": []}
            )
            t["points"].append(_point(run, entry))
    for t in out.values():
        prev = None
        for p in t["points"]:
            p["change_si"] = p["change"] = None
            p["regression"] = p["within_uncertainty"] = None
            measured = p["outcome"] in _RANK
            if prev is not None and not measured and p["outcome"] == "NOT MEASURED":
                p["regression"] = f"not measured (was {prev['outcome']} in {prev['run_id']})"
            elif prev is not None and measured:
                _compare(prev, p)
            if measured:
                prev = p
    return out


def _combined_uncertainty_si(a: dict, b: dict) -> float | None:
    """sqrt(u_a^2 + u_b^2) over the stated uncertainties (SI); None when neither states one."""
    us = [x.get("uncertainty_si") for x in (a, b) if x.get("uncertainty_si") is not None]
    return math.sqrt(sum(u * u for u in us)) if us else None


def _compare(prev: dict, p: dict) -> None:
    """Set ``p``'s change against ``prev`` and its regression, if any (see the module doc)."""
    worse = _RANK[p["outcome"]] > _RANK[prev["outcome"]]
    moved = None
    if p.get("margin_si") is not None and prev.get("margin_si") is not None:
        p["change_si"] = p["margin_si"] - prev["margin_si"]
        p["change"] = p["change_si"] / p["unit_si"]  # in this run's unit
        w = p.get("band_width_si")
        if w and -p["change_si"] > w:
            moved = (
                f"moved {-p['change']:.4g} {p['unit']} towards the limit, more than "
                f"the marginal band width {w / p['unit_si']:.4g} {p['unit']}"
            )
    reason = f"verdict {prev['outcome']} -> {p['outcome']}" if worse else moved
    if reason is None:
        return
    sigma = _combined_uncertainty_si(prev, p)
    if sigma is not None and p["change_si"] is not None and -p["change_si"] <= K_SIGMA * sigma:
        # the two measurements agree within their noise: jitter, not a regression
        p["within_uncertainty"] = (
            f"{reason}, but within {K_SIGMA:g} x the combined uncertainty "
            f"{sigma / p['unit_si']:.3g} {p['unit']}"
        )
        return
    p["regression"] = reason
    if sigma is not None:
        p["regression"] += f" (beyond {K_SIGMA:g} x {sigma / p['unit_si']:.3g} {p['unit']})"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.6g}"


def print_table(result: dict[str, dict], file=None) -> None:
    file = file or sys.stdout
    for cid, t in result.items():
        print(f"{cid}  {t['title']}  ({t['quantity']})", file=file)
        rows = [("run", "value", "verdict", "margin", "margin change", "regression")]
        for p in t["points"]:
            pm = f" +- {p['uncertainty']:.2g}" if p.get("uncertainty") is not None else ""
            value = "-" if p["value"] is None else f"{p['value']:.6g}{pm} {p['unit']}"
            rows.append(
                (
                    p["run_id"],
                    value,
                    p["outcome"],
                    _fmt(p["margin"]),
                    _fmt(p["change"]),
                    ("REGRESSION: " + p["regression"])
                    if p["regression"]
                    else (p.get("within_uncertainty") or ""),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print(
                "  "
                + "  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True))
                + "  "
                + r[5],
                file=file,
            )
        print(file=file)


def cmd_report(args: argparse.Namespace) -> int:
    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        print(f"hil report: {results_dir}: no such folder", file=sys.stderr)
        return 2
    if args.last < 1:
        print("hil report: --last must be at least 1", file=sys.stderr)
        return 2
    runs, problems = load_runs(results_dir)
    for p in problems:
        print(f"hil report: skipped {p}", file=sys.stderr)
    if not runs:
        print(f"hil report: {results_dir}: no run folder with a summary.json", file=sys.stderr)
        return 2
    runs = runs[-args.last :]
    result = trend(runs, args.criterion)
    if args.criterion and not result:
        print(
            f"hil report: criterion {args.criterion!r} is in none of the last {len(runs)} runs",
            file=sys.stderr,
        )
        return 2
    flagged = sum(p["regression"] is not None for t in result.values() for p in t["points"])
    if args.json:
        print(
            json.dumps(
                {
                    "results_dir": str(results_dir),
                    "runs": [r["run_id"] for r in runs],
                    "regressions": flagged,
                    "criteria": result,
                },
                indent=2,
            )
        )
    else:
        print_table(result)
        print(f"{len(runs)} runs, {flagged} regression(s) flagged")
    return 1 if flagged else 0


def register(sub) -> None:
    """Add ``hil report`` to the ``hil`` command's subparsers."""
    p = sub.add_parser(
        "report",
        help="a criterion's value across the last runs, regressions flagged (exit 1)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="folder of run folders")
    p.add_argument("--criterion", metavar="ID", help="only this requirement id")
    p.add_argument("--last", type=int, default=10, metavar="N", help="the last N runs (10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_report)
