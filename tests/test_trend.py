"""``hil report``: a criterion's value across the last N runs, regressions flagged, exit status.

The run folders are synthetic: written by the real Run class from hand-picked values whose
verdicts, margins and band widths are worked out in the comments."""

from __future__ import annotations

import json

import pytest

from hil.cli import main
from hil.criteria import judge, load_criteria
from hil.report import Run

CRITERIA = """\
plan: pilot
criteria:
  PIL-SKR-001:
    title: Secure key rate at 10 dB
    quantity: secure_key_rate
    unit: {skr_unit}
    limits: {{min: {skr_min}}}
    marginal: {{min: {skr_marginal}}}
  PIL-QBER-001:
    title: QBER in the Z basis
    quantity: qber
    unit: "%"
    limits: {{max: 5}}
    marginal: {{max: 4}}
"""


def _write_run(results, run_id, started, values, unit=("kbit/s", 1, 2)):
    """A run folder; ``values`` maps criterion id -> SI value (absent: not measured)."""
    run = Run(results, run_id=run_id)
    run.started_utc = started
    crit = results / f"{run_id}.criteria.yaml"  # outside the run folder
    skr_unit, skr_min, skr_marginal = unit
    crit.write_text(CRITERIA.format(skr_unit=skr_unit, skr_min=skr_min, skr_marginal=skr_marginal))
    spec, _ = load_criteria(crit)
    for cid, value in values.items():
        value, u = value if isinstance(value, tuple) else (value, None)  # (value, 1 sigma), SI
        run.add_verdict(
            judge(cid, spec.criteria[cid], value, plan="pilot", test=f"t::{cid}", uncertainty=u)
        )
    run.add_criteria_file(crit)
    run.finish()


@pytest.fixture
def results(tmp_path):
    """Five nights. PIL-SKR-001: limit 1 kbit/s, MARGINAL below 2 kbit/s, band width 1 kbit/s.
    PIL-QBER-001: limit 5 %, MARGINAL above 4 %, band width 1 %."""
    nights = [
        # folder names sort in the opposite order to the start times: order is by start time
        ("e-night1", "2026-11-01T02:00:00Z", {"PIL-SKR-001": 10e3, "PIL-QBER-001": 0.020}),
        # SKR margin 9 -> 8.5 kbit/s: 0.5 < band width, no flag. QBER 2 -> 2.5 %: no flag
        ("d-night2", "2026-11-02T02:00:00Z", {"PIL-SKR-001": 9.5e3, "PIL-QBER-001": 0.025}),
        # SKR margin 8.5 -> 7.2: moved 1.3 kbit/s > 1 kbit/s band width: flagged (still PASS)
        # QBER not measured after being measured: flagged
        ("c-night3", "2026-11-03T02:00:00Z", {"PIL-SKR-001": 8.2e3}),
        # SKR improves; QBER 3.2 % against night 2's 2.5 %: margin 2.5 -> 1.8 %, no flag
        ("b-night4", "2026-11-04T02:00:00Z", {"PIL-SKR-001": 8.5e3, "PIL-QBER-001": 0.032}),
        # SKR 1.8 kbit/s is MARGINAL: verdict PASS -> MARGINAL flagged. QBER 3 %: no flag
        ("a-night5", "2026-11-05T02:00:00Z", {"PIL-SKR-001": 1.8e3, "PIL-QBER-001": 0.030}),
    ]
    for run_id, started, values in nights:
        _write_run(tmp_path, run_id, started, values)
    return tmp_path


def _report(capsys, *args):
    status = main(["report", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_json_trend_flags_band_jump_verdict_and_lost_measurement(results, capsys):
    status, out, _ = _report(capsys, results, "--last", "5", "--json")
    assert status == 1
    data = json.loads(out)
    assert data["runs"] == ["e-night1", "d-night2", "c-night3", "b-night4", "a-night5"]
    skr = data["criteria"]["PIL-SKR-001"]["points"]
    assert [p["value"] for p in skr] == pytest.approx([10, 9.5, 8.2, 8.5, 1.8])
    assert [p["outcome"] for p in skr] == ["PASS", "PASS", "PASS", "PASS", "MARGINAL"]
    flags = [p["regression"] for p in skr]
    assert flags[0] is None and flags[1] is None and flags[3] is None
    assert flags[2] == (
        "moved 1.3 kbit/s towards the limit, more than the marginal band width 1 kbit/s"
    )
    assert flags[4] == "verdict PASS -> MARGINAL"
    assert skr[1]["change_si"] == pytest.approx(-500.0)
    assert skr[1]["change"] == pytest.approx(-0.5)  # kbit/s
    qber = data["criteria"]["PIL-QBER-001"]["points"]
    assert [p["outcome"] for p in qber] == ["PASS", "PASS", "NOT MEASURED", "PASS", "PASS"]
    assert qber[2]["regression"] == "not measured (was PASS in d-night2)"
    assert [p["regression"] for p in qber if p is not qber[2]] == [None] * 4
    assert qber[3]["change_si"] == pytest.approx(-0.007)  # against night 2, the last measured
    assert data["regressions"] == 3


def test_window_of_last_n_runs(results, capsys):
    # nights 3..5: night 3 has no predecessor in the window, so only night 5 is flagged
    status, out, _ = _report(capsys, results, "--criterion", "PIL-SKR-001", "--last", "3", "--json")
    data = json.loads(out)
    assert status == 1
    assert list(data["criteria"]) == ["PIL-SKR-001"]
    assert [p["regression"] is not None for p in data["criteria"]["PIL-SKR-001"]["points"]] == [
        False,
        False,
        True,
    ]


def test_no_regression_exits_zero_with_a_table(results, capsys):
    status, out, _ = _report(capsys, results, "--criterion", "PIL-QBER-001", "--last", "2")
    assert status == 0
    assert "PIL-QBER-001  QBER in the Z basis  (qber)" in out
    assert "b-night4" in out and "a-night5" in out and "e-night1" not in out
    assert "3.2 %" in out and "REGRESSION" not in out
    assert out.rstrip().endswith("2 runs, 0 regression(s) flagged")


def test_table_marks_the_regression(results, capsys):
    status, out, _ = _report(capsys, results, "--criterion", "PIL-SKR-001")
    assert status == 1
    (line,) = [x for x in out.splitlines() if "a-night5" in x]
    assert "1.8 kbit/s" in line and "MARGINAL" in line
    assert "REGRESSION: verdict PASS -> MARGINAL" in line


def test_margins_compare_in_si_units_across_a_unit_change(tmp_path, capsys):
    # night 1 states the criterion in bit/s (limit 1000, marginal 2000): 5000 bit/s, margin 4000
    # night 2 in kbit/s (limit 1, marginal 2): 4.5 kbit/s, margin 3.5 kbit/s = 3500 bit/s.
    # The margin shrank by 500 bit/s, less than the 1000 bit/s band: no flag (compared in the
    # display units it would be 4000 -> 3.5 and flagged).
    _write_run(tmp_path, "n1", "2026-11-01T00:00:00Z", {"PIL-SKR-001": 5e3}, ("bit/s", 1000, 2000))
    _write_run(tmp_path, "n2", "2026-11-02T00:00:00Z", {"PIL-SKR-001": 4.5e3})
    status, out, _ = _report(capsys, tmp_path, "--criterion", "PIL-SKR-001", "--json")
    points = json.loads(out)["criteria"]["PIL-SKR-001"]["points"]
    assert [p["unit"] for p in points] == ["bit/s", "kbit/s"]
    assert points[1]["change_si"] == pytest.approx(-500.0)
    assert points[1]["regression"] is None
    assert status == 0


def test_usage_errors_are_one_line_with_status_2(tmp_path, results, capsys):
    status, _, err = _report(capsys, tmp_path / "missing")
    assert status == 2 and err.strip().endswith("missing: no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, err = _report(capsys, empty)
    assert status == 2 and "no run folder with a summary.json" in err
    status, _, err = _report(capsys, results, "--criterion", "PIL-NOPE-9")
    assert status == 2
    assert err.strip() == "hil report: criterion 'PIL-NOPE-9' is in none of the last 5 runs"


def test_unreadable_summary_is_skipped_with_a_note(results, capsys):
    broken = results / "z-broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    status, out, err = _report(capsys, results, "--criterion", "PIL-QBER-001", "--json")
    assert "skipped" in err and "z-broken/summary.json" in err
    assert "z-broken" not in json.loads(out)["runs"]
    assert status == 1  # night 3's lost measurement is still in the window


# -- uncertainty (I5): a change is a regression only beyond 3 combined standard uncertainties ----


def _skr_points(tmp_path, capsys, nights):
    for i, values in enumerate(nights, 1):
        _write_run(tmp_path, f"n{i}", f"2026-11-0{i}T00:00:00Z", {"PIL-SKR-001": values})
    status, out, _ = _report(capsys, tmp_path, "--criterion", "PIL-SKR-001", "--json")
    return status, json.loads(out)["criteria"]["PIL-SKR-001"]["points"]


def test_jitter_across_the_marginal_edge_within_the_uncertainty_is_not_a_regression(
    tmp_path, capsys
):
    # 2.05 +- 0.1 kbit/s (PASS) then 1.95 +- 0.1 (MARGINAL below 2): the margin shrank by
    # 0.1 kbit/s, the combined uncertainty is sqrt(0.1^2 + 0.1^2) = 0.141 kbit/s, 3 x = 0.424
    status, points = _skr_points(tmp_path, capsys, [(2050.0, 100.0), (1950.0, 100.0)])
    assert [p["outcome"] for p in points] == ["PASS", "MARGINAL"]
    assert points[1]["uncertainty"] == pytest.approx(0.1)  # kbit/s, from summary.json
    assert points[1]["regression"] is None
    assert points[1]["within_uncertainty"] == (
        "verdict PASS -> MARGINAL, but within 3 x the combined uncertainty 0.141 kbit/s"
    )
    assert status == 0


def test_a_band_sized_move_inside_the_uncertainty_is_not_a_regression(tmp_path, capsys):
    # 10 +- 1 -> 8.7 +- 1 kbit/s: moved 1.3 kbit/s, more than the 1 kbit/s band, but less than
    # 3 x sqrt(2) = 4.24 kbit/s
    status, points = _skr_points(tmp_path, capsys, [(10e3, 1e3), (8.7e3, 1e3)])
    assert points[1]["change"] == pytest.approx(-1.3)
    assert points[1]["regression"] is None and status == 0


def test_a_real_drop_beyond_the_band_and_the_uncertainty_is_flagged(tmp_path, capsys):
    # 10 +- 0.1 -> 8.5 +- 0.1 kbit/s: moved 1.5 > band 1 and > 3 x 0.141 = 0.424 kbit/s
    status, points = _skr_points(tmp_path, capsys, [(10e3, 100.0), (8.5e3, 100.0)])
    assert points[1]["regression"] == (
        "moved 1.5 kbit/s towards the limit, more than the marginal band width 1 kbit/s "
        "(beyond 3 x 0.141 kbit/s)"
    )
    assert status == 1


def test_a_verdict_change_beyond_the_uncertainty_is_flagged(tmp_path, capsys):
    # 2.5 -> 1.5 kbit/s (PASS -> MARGINAL); only the second run states an uncertainty (0.05):
    # the combined one is 0.05 kbit/s, and the 1 kbit/s move is far beyond 3 x 0.05
    status, points = _skr_points(tmp_path, capsys, [2500.0, (1500.0, 50.0)])
    assert points[0]["uncertainty"] is None
    assert points[1]["regression"] == "verdict PASS -> MARGINAL (beyond 3 x 0.05 kbit/s)"
    assert status == 1


def test_the_table_shows_the_uncertainty_and_why_a_change_was_not_flagged(tmp_path, capsys):
    _skr_points(tmp_path, capsys, [(2050.0, 100.0), (1950.0, 100.0)])
    status, out, _ = _report(capsys, tmp_path, "--criterion", "PIL-SKR-001")
    (line,) = [x for x in out.splitlines() if x.strip().startswith("n2")]
    assert "1.95 +- 0.1 kbit/s" in line and "within 3 x the combined uncertainty" in line
    assert "REGRESSION" not in out and status == 0
