"""Run folders and the reports people read: verdicts, plots, ``summary.json``, ``summary.html``,
``manifest.sha256``, and the allure attachments of a run.

A run folder ``results/<run-id>/`` holds the acquisitions, ``summary.json`` (every criterion of
the plan's criteria files, measured or not, with value, limits, verdict, conditions and evidence
files; the bench identity; the plot data), ``summary.html`` (the same for people, readable
offline: styles and plots are inline, no external URL) and ``manifest.sha256`` over everything in
it, so that ``sha256sum -c manifest.sha256`` run inside the folder proves the evidence untouched.

Plot data: a test plan stores a series with :meth:`Run.add_series`; series that share ``plot``
are drawn in one figure. For example::

    run.add_series("key rate", loss_db, rates_bps / 1e3, x_label="loss (dB)",
                   y_label="secure key rate (kbit/s)", y_unit="kbit/s",
                   plot="Key rate against loss", criterion_id="PIL-SKR-001", log_y=True)
    run.add_series("QBER Z", t_s, qber_z * 100, x_label="time (s)", y_label="QBER (%)",
                   plot="QBER over time", ref_lines=[(11.0, "abort threshold")])

Values are drawn as given. ``criterion_id`` names the criterion the series shows: its limit
(solid) and the marginal band's edge (dashed) are drawn as horizontal lines, converted into
``y_unit`` (any unit of the criterion's quantity). ``y_unit`` defaults to the unit in parentheses
at the end of ``y_label`` ("key rate (kbit/s)" -> "kbit/s"), else to the criterion's own unit. A
``y_unit`` that does not measure the criterion's quantity draws no limit lines and says so in the
plot's title. ``ref_lines`` adds other horizontal lines (value in the plot's y unit, label).
The series is saved in ``summary.json`` under ``series`` and belongs to the test that was running
when it was added (or ``test=``).

Allure (active with ``--alluredir``): every instrument write is a step (:func:`instrument_steps`);
each test gets its verdict table and its plots as attachments and the labels epic = plan,
feature = criterion id, and a ``requirement`` link per criterion id (``--allure-link-pattern
requirement:https://tracker/{}`` turns them into URLs); ``environment.properties`` names the bench
and every instrument's ``*IDN?``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import hil

from .config import ConfigError
from .criteria import QUANTITIES, Verdict, load_criteria

NOT_MEASURED = "NOT MEASURED"
# worst first: a criterion measured by several tests takes its worst verdict
_RANK = {"FAIL": 0, "MARGINAL": 1, "PASS": 2, NOT_MEASURED: 3}
# overall status of a run, besides the verdicts: nothing measured because the bench did not open;
# something of the plan was not measured (a -k selection, an interrupted run, every test skipped)
NOT_RUN = "NOT RUN"
INCOMPLETE = "INCOMPLETE"
_BAD = ("failed", "error")  # test outcomes that make a run FAIL
_MAX_LISTED = 10  # failed tests named one by one in the reasons; the rest counted


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass
class Series:
    """One line of a plot: x and y values with their axis labels (see the module docstring)."""

    name: str
    x: list[float]
    y: list[float]
    x_label: str
    y_label: str
    plot: str
    criterion_id: str | None = None
    y_unit: str | None = None  # None: the criterion's unit
    ref_lines: list[tuple[float, str]] = field(default_factory=list)
    test: str = ""
    log_y: bool = False
    style: str = "line"  # "line" or "points"


class Run:
    """One run of a test plan: its folder, verdicts, criteria, plot series and summary.

    With ``create=False`` the folder is made on first use (:attr:`dir`, :meth:`path`,
    :meth:`finish`), and may already exist: the pytest-xdist workers of one session share it.
    """

    def __init__(self, results_dir: str | Path, run_id: str | None = None, *, create=True):
        self.run_id = run_id or new_run_id()
        self.results_dir = Path(results_dir)
        self._dir = self.results_dir / self.run_id
        self.created = False
        if create:
            self._dir.mkdir(parents=True, exist_ok=False)
            self.created = True
        self.started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.verdicts: list[Verdict] = []
        self.bench_info: dict = {}
        self.benches: dict[str, dict] = {}  # pytest-xdist worker -> the bench it used
        self.bench_error: dict | None = None  # the bench did not open: file, failures, message
        # test nodeid -> passed/failed/error/skipped/xfailed/xpassed, and the one-line reason of
        # every outcome but a pass
        self.outcomes: dict[str, str] = {}
        self.messages: dict[str, str] = {}
        self.selected: int | None = None  # tests selected to run (after -k/-m), when known
        self.deselected = 0  # tests left out by -k/-m
        self.interrupted = ""  # why the session stopped before every selected test ran
        self.series: list[Series] = []
        self.criteria: dict[str, dict] = {}  # requirement id -> criterion (from its file)
        self.criteria_errors: list[str] = []
        self.current_test: str = ""  # set by the plugin while a test runs
        self._sent = {"verdicts": 0, "series": 0, "bench": False, "bench_error": False}

    @property
    def dir(self) -> Path:
        """The run folder (created on first use)."""
        if not self.created:
            self._dir.mkdir(parents=True, exist_ok=True)
            self.created = True
        return self._dir

    @property
    def has_data(self) -> bool:
        """Something of this run must be reported (a verdict, a series, a bench, its error)."""
        return bool(self.verdicts or self.series or self.bench_info or self.bench_error)

    def record_test(self, nodeid: str, outcome: str, message: str = "") -> None:
        """The outcome of one phase of a test (pytest's setup, call, teardown): a failure or
        error is kept over a later phase's result, with its first message."""
        if self.outcomes.get(nodeid) in _BAD:
            return
        self.outcomes[nodeid] = outcome
        if message:
            self.messages[nodeid] = message

    def set_current_test(self, nodeid: str) -> None:
        """The test now running (pytest nodeid): verdicts and series added belong to it."""
        self.current_test = nodeid

    def path(self, name: str) -> Path:
        """A path for an evidence file inside the run folder."""
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def bench_opened(self, bench, worker: str = "") -> None:
        info = {
            "name": bench.spec.name,
            "file": str(bench.path),
            "emulated": bench.emulated,
            "idn": dict(bench.idn),
            "resources": {r: i.resource_name for r, i in bench.instruments.items()},
            "control_plane_latency_s": dict(bench.latency_s),
        }
        self._add_bench(info, worker)

    def _add_bench(self, info: dict, worker: str) -> None:
        if not self.bench_info:
            self.bench_info = info
        if worker:
            self.benches[worker] = info

    def bench_failed(self, bench_file: str | Path, failures: dict, message: str) -> None:
        """The bench did not open: why, per instrument (``{role: cause}``), and the message.
        Creates the run folder: a run that could not start leaves its record."""
        if self.bench_error is None:
            self.bench_error = {
                "bench_file": str(bench_file),
                "failures": {str(k): str(v) for k, v in failures.items()},
                "message": message,
            }
        self.dir  # noqa: B018 - the folder is the record, even if nothing else is written

    # -- pytest-xdist: a worker's results travel to the controller, which writes the summary ----
    def export_new(self) -> dict | None:
        """What this (worker's) run gained since the last call, as plain data for the
        controller's :meth:`merge`; None when nothing is new."""
        out: dict[str, Any] = {}
        if len(self.verdicts) > self._sent["verdicts"]:
            out["verdicts"] = [v.to_dict() for v in self.verdicts[self._sent["verdicts"] :]]
            self._sent["verdicts"] = len(self.verdicts)
        if len(self.series) > self._sent["series"]:
            out["series"] = [asdict(s) for s in self.series[self._sent["series"] :]]
            self._sent["series"] = len(self.series)
        if self.bench_info and not self._sent["bench"]:
            out["bench"] = self.bench_info
            self._sent["bench"] = True
        if self.bench_error and not self._sent["bench_error"]:
            out["bench_error"] = self.bench_error
            self._sent["bench_error"] = True
        # execnet carries only plain types: numpy scalars in conditions become floats
        return json.loads(json.dumps(out, default=_plain)) if out else None

    def merge(self, data: dict, worker: str = "") -> None:
        """Add what a worker's :meth:`export_new` sent (evidence paths are already relative to
        the shared run folder)."""
        # only the dataclass fields: to_dict may add derived keys for the summary
        vf, sf = {f.name for f in fields(Verdict)}, {f.name for f in fields(Series)}
        for d in data.get("verdicts", []):
            self.verdicts.append(Verdict(**{k: v for k, v in d.items() if k in vf}))
        for d in data.get("series", []):
            d = {k: v for k, v in d.items() if k in sf}
            d["ref_lines"] = [tuple(r) for r in d.get("ref_lines") or []]
            self.series.append(Series(**d))
        if data.get("bench"):
            self._add_bench(data["bench"], worker)
        if data.get("bench_error") and self.bench_error is None:
            self.bench_error = data["bench_error"]
            self.bench_error.setdefault("worker", worker)

    def add_verdict(self, verdict: Verdict) -> None:
        verdict.evidence = [self._evidence_path(e) for e in verdict.evidence]
        if not verdict.test:
            verdict.test = self.current_test
        self.verdicts.append(verdict)
        from .telemetry.events import emit

        emit(
            "verdict",
            criterion=verdict.criterion_id,
            outcome=verdict.outcome,
            value=verdict.value,
            unit=verdict.unit,
            uncertainty=verdict.uncertainty,
            test=verdict.test,
        )

    def _evidence_path(self, e: str) -> str:
        """Evidence inside the run folder is named relative to it (the summary's links work from
        the folder, wherever it is moved); anything else is kept as given."""
        p = Path(e).resolve()
        here = self._dir.resolve()
        return os.path.relpath(p, here) if p.is_relative_to(here) else str(e)

    def add_series(
        self,
        name: str,
        x,
        y,
        *,
        x_label: str,
        y_label: str,
        plot: str | None = None,
        criterion_id: str | None = None,
        y_unit: str | None = None,
        ref_lines=(),
        log_y: bool = False,
        style: str = "line",
        test: str | None = None,
    ) -> Series:
        """Store a plot series (drawn in summary.html and attached to allure; saved in
        summary.json). ``plot`` groups series into one figure (default: ``name``)."""
        xs = [float(v) for v in x]
        ys = [float(v) for v in y]
        if len(xs) != len(ys):
            raise ValueError(f"series {name!r}: {len(xs)} x values but {len(ys)} y values")
        if y_unit is None:
            m = re.search(r"\(([^()]+)\)\s*$", y_label)
            y_unit = m.group(1).strip() if m else None
        if style not in ("line", "points"):
            raise ValueError(f"series {name!r}: style is 'line' or 'points', not {style!r}")
        s = Series(
            name=name,
            x=xs,
            y=ys,
            x_label=x_label,
            y_label=y_label,
            plot=plot or name,
            criterion_id=criterion_id,
            y_unit=y_unit,
            ref_lines=[(float(v), str(label)) for v, label in ref_lines],
            test=self.current_test if test is None else test,
            log_y=log_y,
            style=style,
        )
        self.series.append(s)
        return s

    def add_criteria_file(self, path: str | Path) -> None:
        """Register every criterion of a criteria file, so that the ones no test measured are
        listed as not measured."""
        try:
            spec, path = load_criteria(path)
        except ConfigError as exc:
            self.criteria_errors.append(str(exc))
            return
        for cid, c in spec.criteria.items():
            self.criteria.setdefault(
                cid,
                {
                    "id": cid,
                    "plan": spec.plan,
                    "criteria_file": str(path),
                    "title": c.title,
                    "quantity": c.quantity,
                    "unit": c.unit,
                    "limits": c.limits.model_dump(),
                    "marginal": c.marginal.model_dump() if c.marginal else None,
                    "conditions": dict(c.conditions),
                },
            )

    def criteria_table(self) -> list[dict]:
        """Every criterion (registered or judged) with its verdicts and overall status."""
        table = {cid: {**c, "verdicts": []} for cid, c in self.criteria.items()}
        for v in self.verdicts:
            entry = table.setdefault(
                v.criterion_id,
                {
                    "id": v.criterion_id,
                    "plan": v.plan,
                    "criteria_file": v.criteria_file,
                    "title": v.title,
                    "quantity": v.quantity,
                    "unit": v.unit,
                    "limits": v.limits,
                    "marginal": v.marginal,
                    "conditions": {},
                    "verdicts": [],
                },
            )
            entry["verdicts"].append(
                {
                    "test": v.test,
                    "value": v.value,
                    "margin": v.margin,
                    "outcome": v.outcome,
                    "conditions": v.conditions,
                    "evidence": v.evidence,
                    "uncertainty": v.uncertainty,  # one sigma, in unit (I5)
                }
            )
        for entry in table.values():
            outcomes = [x["outcome"] for x in entry["verdicts"]] or [NOT_MEASURED]
            entry["status"] = min(outcomes, key=_RANK.__getitem__)
        return sorted(table.values(), key=lambda e: (e["plan"], e["id"]))

    def test_counts(self) -> dict[str, int]:
        counts = {k: 0 for k in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")}
        for outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        if self.selected is not None:
            counts["not run"] = max(0, self.selected - len(self.outcomes))
        return counts

    def all_skipped(self) -> bool:
        """Every test that reported was skipped (and at least one did): nothing was tested."""
        return bool(self.outcomes) and set(self.outcomes.values()) == {"skipped"}

    def assess(self, criteria: list[dict] | None = None) -> tuple[str, list[str]]:
        """The run's overall status and the one-line reasons for it (see :func:`assess`)."""
        return assess(
            self.criteria_table() if criteria is None else criteria,
            self.outcomes,
            self.messages,
            selected=self.selected,
            deselected=self.deselected,
            interrupted=self.interrupted,
            bench_error=self.bench_error,
            bench_opened=bool(self.bench_info),
            criteria_errors=self.criteria_errors,
        )

    def summary(self) -> dict:
        criteria = self.criteria_table()
        counts = {k: sum(c["status"] == k for c in criteria) for k in _RANK}
        overall, reasons = self.assess(criteria)
        return _clean(
            {
                "run_id": self.run_id,
                "started_utc": self.started_utc,
                "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": socket.gethostname(),
                "qkd_hil_version": hil.__version__,
                "bench": self.bench_info,
                "benches": self.benches,
                "bench_error": self.bench_error,
                "overall": overall,
                "reasons": reasons,
                "verdict_counts": counts,
                "test_counts": self.test_counts(),
                "tests": [
                    {"nodeid": n, "outcome": o, "message": self.messages.get(n, "")}
                    for n, o in self.outcomes.items()
                ],
                "criteria": criteria,
                "criteria_errors": self.criteria_errors,
                "verdicts": [v.to_dict() for v in self.verdicts],
                "series": [asdict(s) for s in self.series],
                "key_events": _key_events(self._dir),
            }
        )

    def finish(self) -> Path:
        """Write summary.json, summary.html and the manifest; returns the summary path."""
        summary = self.summary()
        out = self.dir / "summary.json"
        out.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        (self.dir / "summary.html").write_text(render_html(summary))
        from .telemetry.events import close_logs_in

        close_logs_in(self.dir)  # the event log is complete before the manifest hashes it
        write_manifest(self.dir)
        return out


def _key_events(folder: Path) -> dict | None:
    """Counts of the run's key events (hil.keys audit trail), or None without a key plane."""
    from .keys import event_counts

    return event_counts(folder)


def _clean(obj: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _plain(obj: Any) -> Any:
    """json.dumps default: numpy scalars and arrays as numbers and lists, anything else as text."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def assess(
    criteria: list[dict],
    tests: dict[str, str],
    messages: dict[str, str] | None = None,
    *,
    selected: int | None = None,
    deselected: int = 0,
    interrupted: str = "",
    bench_error: dict | None = None,
    bench_opened: bool = True,
    criteria_errors: list[str] = (),
) -> tuple[str, list[str]]:
    """A run's overall status and the one-line reasons for it, worst first.

    NOT RUN: the bench did not open and no bench did. FAIL: a criterion failed, or a test failed
    or errored, or a criteria file could not be read. INCOMPLETE: not everything the plan asks was
    measured — a criterion without a verdict, tests left out (-k/-m) or not run (interrupted,
    -x), every test skipped, or no test at all. MARGINAL: complete, nothing failed, a criterion is
    near its limit. PASS: every criterion of the plan measured, none failed, no test failed.
    """
    messages = messages or {}
    fail, incomplete = [], []
    if bench_error is not None:
        failures = bench_error.get("failures") or {}
        head = (bench_error.get("message") or "").splitlines()
        fail.append(f"the bench did not open: {head[0] if head else bench_error.get('bench_file')}")
        # one line per instrument, naming role, resource and cause (the BenchError's lines);
        # these are where a terminal reader finds them, once: the test error says one line
        lines = [x.strip() for x in head[1:] if x.strip()]
        fail += lines or [f"{role}: {cause}" for role, cause in failures.items()]
    bad = [n for n, o in tests.items() if o in _BAD]
    if bad:
        n_failed = sum(tests[n] == "failed" for n in bad)
        n_err = len(bad) - n_failed
        if n_failed and n_err:
            fail.append(f"{len(bad)} tests failed or errored ({n_failed} failed, {n_err} errored):")
        else:
            noun = "tests" if len(bad) > 1 else "test"
            fail.append(f"{len(bad)} {noun} {'failed' if n_failed else 'errored'}:")
        # the bench's own failure is listed above; its tests need no second copy
        listed = [n for n in bad if not messages.get(n, "").startswith("bench did not open")]
        if not listed:
            fail[-1] = fail[-1].rstrip(":") + " (the bench did not open)"
        fail += [f"  {n}: {messages.get(n) or tests[n]}" for n in listed[:_MAX_LISTED]]
        if len(listed) > _MAX_LISTED:
            fail.append(f"  ... and {len(listed) - _MAX_LISTED} more (see tests)")
    failed_criteria = [c["id"] for c in criteria if c["status"] == "FAIL"]
    if failed_criteria:
        fail.append(f"{len(failed_criteria)} criteria FAIL: {', '.join(failed_criteria)}")
    fail += [f"criteria file error: {e}" for e in criteria_errors]

    if interrupted:
        incomplete.append(f"interrupted: {interrupted}")
    not_run = 0 if selected is None else max(0, selected - len(tests))
    if not_run:
        incomplete.append(f"{not_run} of {selected} selected tests did not run")
    if deselected:
        incomplete.append(f"{deselected} tests of the plan were left out (-k/-m selection)")
    unmeasured = [c["id"] for c in criteria if c["status"] == NOT_MEASURED]
    if unmeasured:
        incomplete.append(
            f"{len(unmeasured)} of {len(criteria)} criteria not measured: {', '.join(unmeasured)}"
        )
    if tests and set(tests.values()) == {"skipped"}:
        first = next(iter(messages.values()), "")
        incomplete.append(
            f"every test was skipped ({len(tests)})" + (f", e.g. {first}" if first else "")
        )
    if not tests and not interrupted and not not_run:
        incomplete.append("no test ran")

    if bench_error is not None and not bench_opened:
        return NOT_RUN, fail + incomplete
    if fail:
        return "FAIL", fail + incomplete
    if incomplete:
        return INCOMPLETE, incomplete
    marginal = [c["id"] for c in criteria if c["status"] == "MARGINAL"]
    if marginal:
        return "MARGINAL", [
            f"{len(marginal)} criteria MARGINAL (near the limit): {', '.join(marginal)}"
        ]
    return "PASS", []


def overall_status(criteria: list[dict], tests: dict[str, str]) -> str:
    """The overall status of :func:`assess`, from the criteria and test outcomes alone."""
    return assess(criteria, tests)[0]


def plan_criteria_files(test_paths, base: str | Path | None = None) -> list[Path]:
    """The ``criteria.yaml`` files next to the given test modules (the plan's folders), relative
    to ``base`` when they lie under it (so that error lines name short paths)."""
    found = []
    for p in test_paths:
        f = Path(p).parent / "criteria.yaml"
        if not f.is_file():
            continue
        if base is not None and f.is_relative_to(base):
            f = f.relative_to(base)
        if f not in found:
            found.append(f)
    return found


def terminal_lines(run: Run) -> list[tuple[str, str]]:
    """(text, outcome) lines for the terminal summary: verdicts, then what needs attention."""
    out = [(v.line() + f"  [{v.test}]", v.outcome) for v in run.verdicts]
    table = run.criteria_table()
    counts = {k: sum(c["status"] == k for c in table) for k in _RANK}
    out.append(
        (
            f"criteria: {counts['PASS']} PASS, {counts['MARGINAL']} MARGINAL, "
            f"{counts['FAIL']} FAIL, {counts[NOT_MEASURED]} not measured",
            "FAIL" if counts["FAIL"] else ("MARGINAL" if counts["MARGINAL"] else "PASS"),
        )
    )
    for c in table:
        if c["status"] == "MARGINAL":
            out.append((f"MARGINAL (near its limit): {c['id']} {c['title']}", "MARGINAL"))
    unmeasured = [c for c in table if c["status"] == NOT_MEASURED]
    if len(unmeasured) <= 8:
        out += [(f"not measured: {c['id']} {c['title']}", NOT_MEASURED) for c in unmeasured]
    else:  # a partial run (-k, -x): one line rather than a screenful
        ids = ", ".join(c["id"] for c in unmeasured)
        out.append((f"not measured ({len(unmeasured)}): {ids}", NOT_MEASURED))
    tc = run.test_counts()
    out.append(("tests: " + (", ".join(f"{n} {k}" for k, n in tc.items() if n) or "none"), ""))
    overall, reasons = run.assess(table)
    # the criteria lines above already name the unmeasured and marginal ones
    shown = [r for r in reasons if "not measured:" not in r and "MARGINAL (near" not in r]
    out.append((f"overall: {overall}" + (":" if shown else ""), overall))
    out += [("  " + r, overall) for r in shown]
    return out


def write_manifest(folder: Path) -> Path:
    """``manifest.sha256`` over every file in ``folder`` (sha256sum -c format)."""
    lines = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "manifest.sha256":
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            lines.append(f"{h.hexdigest()}  {p.relative_to(folder).as_posix()}")
    out = folder / "manifest.sha256"
    out.write_text("\n".join(lines) + "\n")
    return out


# ----------------------------------------------------------------------------- plots


def _limit_scale(crit: dict, y_unit: str | None) -> float | None:
    """Factor from the criterion's unit to ``y_unit``; None when y_unit is another quantity."""
    units = QUANTITIES[crit["quantity"]][1]
    if y_unit is None:
        return 1.0
    if y_unit not in units:
        return None
    return units[crit["unit"]] / units[y_unit]


def plot_png(series: list[dict], criteria: dict[str, dict], title: str) -> bytes:
    """One figure of the series that share a plot, with criterion lines; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must come before pyplot
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.6), dpi=100)
    ax = fig.add_subplot()
    drawn = set()
    notes = []
    for s in series:
        xs = [math.nan if v is None else v for v in s["x"]]
        ys = [math.nan if v is None else v for v in s["y"]]
        ax.plot(xs, ys, "o-" if s.get("style") == "line" else "o", markersize=3, label=s["name"])
        for value, label in s.get("ref_lines") or []:
            ax.axhline(value, color="#555", lw=1, ls=":", label=label)
        cid = s.get("criterion_id")
        if not cid or cid in drawn:
            continue
        drawn.add(cid)
        crit = criteria.get(cid)
        if crit is None:
            notes.append(f"no criterion {cid}")
            continue
        scale = _limit_scale(crit, s.get("y_unit"))
        if scale is None:
            notes.append(
                f"{cid} limit not drawn: {s['y_unit']} does not measure {crit['quantity']}"
            )
            continue
        unit = s.get("y_unit") or crit["unit"]
        for side, sign in (("min", ">="), ("max", "<=")):
            lim = crit["limits"].get(side)
            if lim is not None:
                ax.axhline(
                    lim * scale,
                    color="#c62828",
                    lw=1.5,
                    label=f"{cid} limit {sign} {lim * scale:g} {unit}",
                )
            mar = (crit.get("marginal") or {}).get(side)
            if mar is not None:
                ax.axhline(
                    mar * scale, color="#ef6c00", lw=1.2, ls="--", label=f"{cid} marginal edge"
                )
    if any(s.get("log_y") for s in series):
        ax.set_yscale("log")
    ax.set_title(title + (f"\n({'; '.join(notes)})" if notes else ""), fontsize=10)
    ax.set_xlabel(series[0]["x_label"])
    ax.set_ylabel(series[0]["y_label"])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plots(summary: dict, test: str | None = None) -> list[tuple[str, bytes]]:
    """(title, PNG) of every plot in a summary (or of one test's series)."""
    criteria = {c["id"]: c for c in summary.get("criteria", [])}
    groups: dict[str, list[dict]] = {}
    for s in summary.get("series", []):
        if test is None or s.get("test") == test:
            groups.setdefault(s["plot"], []).append(s)
    return [(title, plot_png(group, criteria, title)) for title, group in groups.items()]


# ----------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1150px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
table.verdicts { width: 100%; table-layout: auto; }
td { overflow-wrap: anywhere; } td code { word-break: break-all; font-size: 0.85em; }
th { background: #eee; }
tr.PASS td.outcome { background: #c8e6c9; }
tr.MARGINAL td { background: #fff3c4; } tr.MARGINAL td.outcome { background: #ffb300; }
tr.FAIL td { background: #ffd9d9; } tr.FAIL td.outcome { background: #e53935; color: #fff; }
tr.NOT-MEASURED td { color: #777; font-style: italic; }
td.outcome { font-weight: bold; }
.banner { padding: 0.6em 1em; font-size: 1.3em; font-weight: bold; border-radius: 4px; }
.banner.PASS { background: #c8e6c9; } .banner.MARGINAL { background: #ffb300; }
.banner.FAIL, .banner.NOT-RUN { background: #e53935; color: #fff; }
.banner.INCOMPLETE { background: #90a4ae; color: #fff; }
ul.reasons { margin: 0.4em 0 0 0; font-size: 0.75em; font-weight: normal; }
.attention { border: 3px solid #ffb300; padding: 0.5em 1em; background: #fff8e1; }
img.plot { display: block; margin: 0.8em 0; border: 1px solid #ddd; }
code { font-size: 0.95em; }
table.signoff td { height: 2.2em; min-width: 10em; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def _band(lim: dict | None, unit: str) -> str:
    if not lim:
        return ""
    parts = []
    if lim.get("min") is not None:
        parts.append(f">= {lim['min']:g} {unit}")
    if lim.get("max") is not None:
        parts.append(f"<= {lim['max']:g} {unit}")
    return " and ".join(parts)


def _conditions(c: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in c.items())


def _evidence(files: list[str]) -> str:
    links = []
    for f in files:
        # relative paths are files of the run folder: link them; others are named only
        if not Path(f).is_absolute() and not f.startswith(".."):
            links.append(f'<a href="{_e(f)}">{_e(f)}</a>')
        else:
            links.append(f"<code>{_e(f)}</code>")
    return "<br>".join(links)


def verdict_rows(criteria: list[dict]) -> str:
    """The rows of the verdict table: one per verdict, one per criterion not measured."""
    rows = []
    for c in criteria:
        head = f"<td>{_e(c['id'])}</td><td>{_e(c['title'])}</td><td>{_e(c['quantity'])}</td>"
        limit = _e(_band(c["limits"], c["unit"]))
        marginal = _e(_band(c.get("marginal"), c["unit"]))
        if not c["verdicts"]:
            rows.append(
                f'<tr class="NOT-MEASURED">{head}<td>-</td><td>{limit}</td><td>{marginal}</td>'
                f'<td>-</td><td class="outcome">not measured</td>'
                f"<td>{_e(_conditions(c['conditions']))}</td><td></td><td></td></tr>"
            )
        for v in c["verdicts"]:
            unit = _e(c["unit"])
            rows.append(
                f'<tr class="{_e(v["outcome"])}">{head}'
                f"<td>{_num(v['value'])} {unit}</td><td>{limit}</td><td>{marginal}</td>"
                f"<td>{_num(v['margin'])} {unit}</td>"
                f'<td class="outcome">{_e(v["outcome"])}</td>'
                f"<td>{_e(_conditions(v['conditions']))}</td>"
                f"<td><code>{_e(v['test'])}</code></td><td>{_evidence(v['evidence'])}</td></tr>"
            )
    return "\n".join(rows)


VERDICT_HEADER = (
    "<tr><th>requirement</th><th>title</th><th>quantity</th><th>value</th><th>limit</th>"
    "<th>marginal beyond</th><th>margin</th><th>verdict</th><th>conditions</th>"
    "<th>test</th><th>evidence</th></tr>"
)


def verdict_table_html(criteria: list[dict]) -> str:
    return f'<table class="verdicts">{VERDICT_HEADER}\n{verdict_rows(criteria)}</table>'


def render_html(summary: dict) -> str:
    """summary.html: one self-contained page (inline CSS, plots as inline PNG data)."""
    criteria = summary.get("criteria", [])
    counts = summary.get("verdict_counts", {})
    overall = summary.get("overall", "PASS")
    tc = summary.get("test_counts") or {}
    test_text = ", ".join(f"{n} {k}" for k, n in tc.items() if n) or "no test ran"
    reasons = "".join(f"<li>{_e(r.strip())}</li>" for r in summary.get("reasons", []))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>qkd-hil run {_e(summary['run_id'])}: {_e(overall)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>qkd-hil run {_e(summary['run_id'])}</h1>",
        f'<div class="banner {_e(overall).replace(" ", "-")}">Overall: {_e(overall)} &mdash; '
        f"criteria: {counts.get('PASS', 0)} PASS, {counts.get('MARGINAL', 0)} MARGINAL, "
        f"{counts.get('FAIL', 0)} FAIL, {counts.get(NOT_MEASURED, 0)} not measured; "
        f"tests: {_e(test_text)}"
        + (f'<ul class="reasons">{reasons}</ul>' if reasons else "")
        + "</div>",
        f"<p>Started {_e(summary.get('started_utc'))}, finished "
        f"{_e(summary.get('finished_utc'))} on {_e(summary.get('host'))}, qkd-hil "
        f"{_e(summary.get('qkd_hil_version'))}.</p>",
    ]
    marginal = [c for c in criteria if c["status"] == "MARGINAL"]
    failed = [c for c in criteria if c["status"] == "FAIL"]
    if marginal or failed:
        items = "".join(
            f"<li><b>{_e(c['status'])}</b> {_e(c['id'])}: {_e(c['title'])}</li>"
            for c in failed + marginal
        )
        parts.append(
            '<div class="attention"><b>Needs attention</b> (MARGINAL passes but is near its '
            f"limit):<ul>{items}</ul></div>"
        )
    for err in summary.get("criteria_errors", []):
        parts.append(f'<p class="banner FAIL">criteria file error: {_e(err)}</p>')
    parts += ["<h2>Verdicts</h2>", verdict_table_html(criteria)]

    bench = summary.get("bench") or {}
    parts.append("<h2>Bench</h2>")
    error = summary.get("bench_error")
    if error:
        parts.append(
            f"<p><b>The bench did not open</b> (bench file <code>{_e(error.get('bench_file'))}"
            f"</code>):</p><pre>{_e(error.get('message'))}</pre>"
        )
        if error.get("failures"):
            parts.append("<table><tr><th>role</th><th>cause</th></tr>")
            for role, cause in error["failures"].items():
                parts.append(f"<tr><td>{_e(role)}</td><td>{_e(cause)}</td></tr>")
            parts.append("</table>")
    if summary.get("benches"):
        parts.append("<p>Benches by pytest-xdist worker: ")
        parts.append(
            ", ".join(
                f"{_e(w)}: {_e(b.get('name'))} (<code>{_e(b.get('file'))}</code>)"
                for w, b in sorted(summary["benches"].items())
            )
            + "</p>"
        )
    if bench:
        kind = "emulated" if bench.get("emulated") else "hardware"
        parts.append(
            f"<p>{_e(bench.get('name'))} ({kind}), bench file <code>{_e(bench.get('file'))}"
            "</code></p><table><tr><th>role</th><th>*IDN?</th><th>resource</th>"
            "<th>control-plane round trip</th></tr>"
        )
        lat = bench.get("control_plane_latency_s", {})
        for role, idn in bench.get("idn", {}).items():
            rt = lat.get(role)
            rt_text = "-" if rt is None else f"{rt * 1e3:.3g} ms"
            parts.append(
                f"<tr><td>{_e(role)}</td><td><code>{_e(idn)}</code></td>"
                f"<td><code>{_e(bench.get('resources', {}).get(role))}</code></td>"
                f"<td>{rt_text}</td></tr>"
            )
        parts.append("</table>")
    elif not error:
        parts.append("<p>No bench was opened in this run.</p>")

    keys = summary.get("key_events")
    if keys:  # the key plane's audit trail (hil.keys): counts only, never a key
        parts.append("<h2>Key events</h2><table><tr><th>event</th><th>count</th></tr>")
        for kind, n in sorted(keys.get("counts", {}).items()):
            parts.append(f"<tr><td>{_e(kind)}</td><td>{n}</td></tr>")
        parts.append(
            f"</table><p>{keys.get('keys_delivered', 0)} keys delivered, "
            f"{keys.get('bits_delivered', 0)} bits; refusals by HTTP status: "
            f"{_e(keys.get('refusals_by_status', {}))}; audit trail "
            f"<code>{_e(keys.get('file'))}</code></p>"
        )
    parts.append("<h2>Plots</h2>")
    figures = plots(summary)
    for title, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img class="plot" alt="{_e(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(title)}</figcaption></figure>"
        )
    if not figures:
        parts.append("<p>No plot data in this run.</p>")

    parts.append("<h2>Tests</h2><table><tr><th>test</th><th>outcome</th><th>message</th></tr>")
    for t in summary.get("tests", []):
        cls = {"failed": "FAIL", "error": "FAIL", "passed": "PASS"}.get(
            t["outcome"], "NOT-MEASURED"
        )
        parts.append(
            f'<tr class="{cls}"><td><code>{_e(t["nodeid"])}</code></td>'
            f'<td class="outcome">{_e(t["outcome"])}</td><td>{_e(t.get("message"))}</td></tr>'
        )
    parts.append("</table>")
    measured = sum(c["status"] != NOT_MEASURED for c in criteria)
    parts.append(
        f"<h2>Record</h2><p>{len(criteria)} requirements, {measured} measured: "
        f"{counts.get('PASS', 0)} PASS, {counts.get('MARGINAL', 0)} MARGINAL, "
        f"{counts.get('FAIL', 0)} FAIL; overall <b>{_e(overall)}</b>.</p>"
        '<table class="signoff"><tr><th>role</th><th>name</th><th>date</th><th>signature</th>'
        "</tr><tr><td>tested by</td><td></td><td></td><td></td></tr>"
        "<tr><td>accepted by</td><td></td><td></td><td></td></tr></table>"
    )
    parts.append(
        "<p>Every file of this run folder is listed with its SHA-256 in "
        '<a href="manifest.sha256">manifest.sha256</a>; check it with '
        "<code>sha256sum -c manifest.sha256</code> inside the folder.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- allure


def allure_dir(config) -> str | None:
    """The ``--alluredir`` of this session, or None when allure reporting is off."""
    return getattr(config.option, "allure_report_dir", None)


def instrument_steps(bench) -> None:
    """Make every instrument write of ``bench`` an allure step ("role: command")."""
    import allure

    def wrap(previous):
        def on_action(instrument: str, command: str) -> None:
            if previous is not None:
                previous(instrument, command)
            with allure.step(f"{instrument}: {command}"):
                pass

        return on_action

    for inst in bench.instruments.values():
        inst.on_action = wrap(inst.on_action)


def allure_attach_test(run: Run, nodeid: str) -> None:
    """Labels, verdict table and plots of one test, attached to its allure result."""
    import allure

    verdicts = [v for v in run.verdicts if v.test == nodeid]
    for plan in dict.fromkeys(v.plan for v in verdicts if v.plan):
        allure.dynamic.epic(plan)
    for cid in dict.fromkeys(v.criterion_id for v in verdicts):
        allure.dynamic.feature(cid)
        allure.dynamic.link(cid, link_type="requirement", name=cid)
    summary = run.summary()
    if verdicts:
        ids = {v.criterion_id for v in verdicts}
        table = []
        for c in summary["criteria"]:
            if c["id"] in ids:
                mine = [x for x in c["verdicts"] if x["test"] == nodeid]
                table.append({**c, "verdicts": mine})
        page = (
            f'<html><head><meta charset="utf-8"><style>{_CSS}</style></head><body>'
            f"{verdict_table_html(table)}</body></html>"
        )
        allure.attach(page, name="verdicts", attachment_type=allure.attachment_type.HTML)
    for title, png in plots(summary, test=nodeid):
        allure.attach(png, name=title, attachment_type=allure.attachment_type.PNG)


def _prop(text: str, key: bool = False) -> str:
    """Escape for a Java .properties file (ISO 8859-1 with \\u escapes)."""
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif (key and ch in "=:#!") or (ch == " " and (key or i == 0)):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) > 126 or ord(ch) < 32:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def write_allure_environment(alluredir: str | Path, run: Run) -> Path:
    """``environment.properties`` in the allure results: the bench and every *IDN?."""
    info = run.bench_info
    env = {"qkd_hil.version": hil.__version__, "run_id": run.run_id}
    if info:
        env["bench"] = info.get("name", "")
        env["bench.file"] = info.get("file", "")
        env["bench.emulated"] = str(bool(info.get("emulated"))).lower()
        for role, idn in info.get("idn", {}).items():
            env[f"{role}.idn"] = idn
    out = Path(alluredir) / "environment.properties"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{_prop(k, key=True)}={_prop(str(v))}\n" for k, v in env.items()))
    return out


__all__ = [
    "INCOMPLETE",
    "NOT_MEASURED",
    "NOT_RUN",
    "Run",
    "Series",
    "allure_attach_test",
    "allure_dir",
    "assess",
    "instrument_steps",
    "plan_criteria_files",
    "render_html",
    "terminal_lines",
    "write_allure_environment",
    "write_manifest",
]
