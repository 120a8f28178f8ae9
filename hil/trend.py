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
            p["regression"] = None
            measured = p["outcome"] in _RANK
            if prev is not None and not measured and p["outcome"] == "NOT MEASURED":
                p["regression"] = f"not measured (was {prev['outcome']} in {prev['run_id']})"
            elif prev is not None and measured:
                if _RANK[p["outcome"]] > _RANK[prev["outcome"]]:
                    p["regression"] = f"verdict {prev['outcome']} -> {p['outcome']}"
                if p.get("margin_si") is not None and prev.get("margin_si") is not None:
                    p["change_si"] = p["margin_si"] - prev["margin_si"]
                    p["change"] = p["change_si"] / p["unit_si"]  # in this run's unit
                    w = p.get("band_width_si")
                    if p["regression"] is None and w and -p["change_si"] > w:
                        p["regression"] = (
                            f"moved {-p['change']:.4g} {p['unit']} towards the limit, more than "
                            f"the marginal band width {w / p['unit_si']:.4g} {p['unit']}"
                        )
            if measured:
                prev = p
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.6g}"


def print_table(result: dict[str, dict], file=None) -> None:
    file = file or sys.stdout
    for cid, t in result.items():
        print(f"{cid}  {t['title']}  ({t['quantity']})", file=file)
        rows = [("run", "value", "verdict", "margin", "margin change", "regression")]
        for p in t["points"]:
            value = "-" if p["value"] is None else f"{p['value']:.6g} {p['unit']}"
            rows.append(
                (
                    p["run_id"],
                    value,
                    p["outcome"],
                    _fmt(p["margin"]),
                    _fmt(p["change"]),
                    ("REGRESSION: " + p["regression"]) if p["regression"] else "",
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
