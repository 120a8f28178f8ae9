"""Run reports: summary.json covers every criterion (also the ones not measured), summary.html is
self-contained and renders in headless Chromium with its plots, manifest.sha256 checks with the
real sha256sum, and the plugin writes all of it (terminal summary, JUnit properties)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hil.criteria import judge, load_criteria
from hil.report import NOT_MEASURED, Run, render_html

pytest_plugins = ["pytester"]

CRITERIA = """\
plan: pilot
criteria:
  PIL-SKR-001:
    title: Secure key rate at 10 dB
    quantity: secure_key_rate
    unit: kbit/s
    limits: {min: 1}
    marginal: {min: 2}
    conditions: {attenuation_db: 10, duration_s: 1}
  PIL-QBER-001:
    title: QBER in the Z basis
    quantity: qber
    unit: "%"
    limits: {max: 5}
    marginal: {max: 4}
  PIL-UP-001:
    title: Uptime over the soak
    quantity: uptime
    unit: "%"
    limits: {min: 99}
"""

IDN = {"source": "ACME,QKD-TX,0001,1.2", "tagger": "ACME,TAGGER,0042,3.4"}


def _synthetic_run(tmp_path: Path) -> Run:
    """A run with three criteria: one PASS, one MARGINAL, one not measured, and two plots."""
    crit_file = tmp_path / "plan" / "criteria.yaml"
    crit_file.parent.mkdir()
    crit_file.write_text(CRITERIA)
    spec, _ = load_criteria(crit_file)
    run = Run(tmp_path / "results", run_id="run-1")
    run.bench_info = {
        "name": "emulated",
        "file": "benches/emulated.yaml",
        "emulated": True,
        "idn": IDN,
        "resources": {"source": "TCPIP::127.0.0.1::5025::SOCKET"},
        "control_plane_latency_s": {"source": 2e-4},
    }
    evidence = run.path("skr.h5")
    evidence.write_bytes(b"not really HDF5")
    run.current_test = "plan/test_link.py::test_key_rate"
    loss = np.arange(0.0, 21.0, 2.0)
    rate = 5e4 * 10 ** (-loss / 10)  # bit/s
    run.add_series(
        "finite-key rate",
        loss,
        rate,
        x_label="loss (dB)",
        y_label="secure key rate (bit/s)",
        y_unit="bit/s",
        plot="Key rate against loss",
        criterion_id="PIL-SKR-001",
        log_y=True,
    )
    run.add_verdict(
        judge("PIL-SKR-001", spec.criteria["PIL-SKR-001"], 5e3, plan="pilot", evidence=[evidence])
    )
    run.current_test = "plan/test_link.py::test_qber"
    t = np.linspace(0, 60, 61)
    run.add_series(
        "QBER Z",
        t,
        3 + 0.1 * np.sin(t),
        x_label="time (s)",
        y_label="QBER (%)",
        ref_lines=[(11.0, "abort threshold")],
    )
    run.add_verdict(judge("PIL-QBER-001", spec.criteria["PIL-QBER-001"], 0.045, plan="pilot"))
    run.current_test = ""
    run.outcomes = {
        "plan/test_link.py::test_key_rate": "passed",
        "plan/test_link.py::test_qber": "passed",
    }
    run.add_criteria_file(crit_file)
    return run


def test_summary_lists_every_criterion_with_verdict_or_not_measured(tmp_path):
    run = _synthetic_run(tmp_path)
    summary = json.loads(run.finish().read_text())
    by_id = {c["id"]: c for c in summary["criteria"]}
    assert set(by_id) == {"PIL-SKR-001", "PIL-QBER-001", "PIL-UP-001"}
    skr = by_id["PIL-SKR-001"]
    assert skr["status"] == "PASS"
    assert skr["limits"] == {"min": 1.0, "max": None}
    assert skr["marginal"] == {"min": 2.0, "max": None}
    assert skr["conditions"] == {"attenuation_db": 10, "duration_s": 1}
    (v,) = skr["verdicts"]
    # 5e3 bit/s against a 1 kbit/s limit: 5 kbit/s, margin 4 kbit/s
    assert v["value"] == pytest.approx(5.0) and v["margin"] == pytest.approx(4.0)
    assert v["test"] == "plan/test_link.py::test_key_rate"
    assert v["evidence"] == ["skr.h5"]  # relative to the run folder
    assert by_id["PIL-QBER-001"]["status"] == "MARGINAL"
    assert by_id["PIL-QBER-001"]["verdicts"][0]["test"] == "plan/test_link.py::test_qber"
    assert by_id["PIL-UP-001"]["status"] == NOT_MEASURED
    assert by_id["PIL-UP-001"]["verdicts"] == []
    assert summary["verdict_counts"] == {"PASS": 1, "MARGINAL": 1, "FAIL": 0, NOT_MEASURED: 1}
    # a criterion of the plan without a verdict: the run cannot say PASS (nor MARGINAL)
    assert summary["overall"] == "INCOMPLETE"
    assert summary["reasons"] == ["1 of 3 criteria not measured: PIL-UP-001"]
    assert summary["tests"] == [
        {"nodeid": "plan/test_link.py::test_key_rate", "outcome": "passed", "message": ""},
        {"nodeid": "plan/test_link.py::test_qber", "outcome": "passed", "message": ""},
    ]
    assert summary["bench"]["idn"] == IDN
    series = {s["name"]: s for s in summary["series"]}
    assert series["finite-key rate"]["criterion_id"] == "PIL-SKR-001"
    assert series["finite-key rate"]["test"] == "plan/test_link.py::test_key_rate"
    assert len(series["QBER Z"]["x"]) == 61 and series["QBER Z"]["plot"] == "QBER Z"


def test_nan_values_are_written_as_null_json(tmp_path):
    run = Run(tmp_path, run_id="r")
    spec, _ = _criteria(tmp_path)
    run.add_verdict(judge("PIL-QBER-001", spec.criteria["PIL-QBER-001"], float("nan")))
    run.add_series("s", [0, 1], [float("nan"), 1.0], x_label="x", y_label="y")
    text = run.finish().read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["verdicts"][0]["value"] is None and data["verdicts"][0]["outcome"] == "FAIL"
    assert data["series"][0]["y"] == [None, 1.0]


def _criteria(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(CRITERIA)
    return load_criteria(f)


def test_series_rejects_mismatched_lengths(tmp_path):
    run = Run(tmp_path, run_id="r")
    with pytest.raises(ValueError, match="3 x values but 2 y values"):
        run.add_series("s", [1, 2, 3], [1, 2], x_label="x", y_label="y")


def test_html_is_self_contained_and_highlights_marginal(tmp_path):
    run = _synthetic_run(tmp_path)
    run.finish()
    page = (run.dir / "summary.html").read_text()
    # offline: no URL with a scheme or protocol-relative, no external stylesheet or script
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"[a-z]+://", text, re.IGNORECASE)
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith("data:image/png;base64,") or not re.match(r"[a-z]+:|//", attr)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert page.count('src="data:image/png;base64,') == 2  # two plots, inline
    assert 'class="banner INCOMPLETE"' in page
    assert "1 of 3 criteria not measured: PIL-UP-001" in page.split("<h2>")[0]
    assert re.search(r'<tr class="MARGINAL"><td>PIL-QBER-001</td>', page)
    assert "Needs attention" in page and "PIL-QBER-001" in page.split("Needs attention")[1]
    assert re.search(r'<tr class="NOT-MEASURED"><td>PIL-UP-001</td>', page)
    assert '<a href="skr.h5">skr.h5</a>' in page
    for idn in IDN.values():
        assert idn in page
    assert "attenuation_db = 10" in page
    assert "3 requirements, 2 measured: 1 PASS, 1 MARGINAL, 0 FAIL" in page
    assert "accepted by" in page


def test_html_escapes_text_from_files(tmp_path):
    run = Run(tmp_path, run_id="r")
    run.bench_info = {"name": "<b>lab</b>", "idn": {"source": "A&B <x>"}}
    page = render_html(run.summary())
    assert "<b>lab</b>" not in page and "&lt;b&gt;lab&lt;/b&gt;" in page
    assert "A&amp;B &lt;x&gt;" in page


def test_failed_criterion_makes_the_run_fail(tmp_path):
    run = Run(tmp_path, run_id="r")
    spec, _ = _criteria(tmp_path)
    run.add_verdict(judge("PIL-QBER-001", spec.criteria["PIL-QBER-001"], 0.02))
    run.add_verdict(judge("PIL-QBER-001", spec.criteria["PIL-QBER-001"], 0.07))
    summary = run.summary()
    (qber,) = summary["criteria"]
    assert qber["status"] == "FAIL"  # the worst of its two verdicts
    assert summary["overall"] == "FAIL"


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils sha256sum")
def test_manifest_checks_with_sha256sum_and_catches_a_change(tmp_path):
    run = _synthetic_run(tmp_path)
    run.path("sub/more.txt").write_text("evidence in a sub-folder\n")
    run.finish()
    listed = (run.dir / "manifest.sha256").read_text().splitlines()
    names = sorted(line.split("  ", 1)[1] for line in listed)
    assert names == ["skr.h5", "sub/more.txt", "summary.html", "summary.json"]
    ok = subprocess.run(["sha256sum", "-c", "manifest.sha256"], cwd=run.dir, capture_output=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with open(run.dir / "skr.h5", "ab") as f:
        f.write(b"x")
    bad = subprocess.run(["sha256sum", "-c", "manifest.sha256"], cwd=run.dir, capture_output=True)
    assert bad.returncode != 0
    assert b"skr.h5: FAILED" in bad.stdout


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail(
            "chromium is not installed (CI: apt-get install -y --no-install-recommends chromium)"
        )
    pytest.skip("chromium is not installed (apt-get install chromium)")


def test_summary_html_renders_with_plots_in_headless_chromium(tmp_path):
    chromium = _chromium()
    run = _synthetic_run(tmp_path)
    run.finish()
    shot = tmp_path / "shot.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        (run.dir / "summary.html").resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, timeout=60)
    assert shot.exists(), proc.stderr.decode(errors="replace")[-2000:]
    import matplotlib.image

    img = matplotlib.image.imread(shot)  # floats 0..1, rows x columns x channels
    assert img.shape[:2] == (2000, 1200)
    rgb = img[..., :3]
    assert rgb.std() > 0.05, "the screenshot is blank"
    # the plots are drawn: matplotlib's first line colour (#1f77b4) appears only in them
    blue = np.array([0x1F, 0x77, 0xB4]) / 255
    near = np.all(np.abs(rgb - blue) < 0.06, axis=-1)
    assert near.sum() > 200, f"no plot line pixels in the screenshot ({near.sum()})"
    # and the MARGINAL row's highlight (#ffb300) is on screen
    amber = np.array([0xFF, 0xB3, 0x00]) / 255
    assert np.all(np.abs(rgb - amber) < 0.06, axis=-1).sum() > 500


# ----------------------------------------------------------------------------- through pytest

PLAN_TEST = """
import numpy as np

def test_key_rate(judge_value, run):
    loss = np.arange(0, 12, 2.0)
    run.add_series("rate", loss, 4 * 10 ** (-loss / 10), x_label="loss (dB)",
                   y_label="secure key rate (kbit/s)", plot="Key rate against loss",
                   criterion_id="PIL-SKR-001", log_y=True)
    judge_value("PIL-SKR-001", 1.5e3, evidence=[run.path("skr.h5")])

def test_qber(judge_value):
    judge_value("PIL-QBER-001", 0.02)
"""


def test_plugin_writes_reports_and_junit_properties(pytester):
    plan = pytester.mkdir("plan")
    (plan / "criteria.yaml").write_text(CRITERIA)
    (plan / "test_link.py").write_text(textwrap.dedent(PLAN_TEST))
    result = pytester.runpytest_subprocess(
        "plan", "--results", "res", "--junitxml", "junit.xml", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*qkd-hil verdicts*",
            "*PIL-SKR-001 secure_key_rate = 1.5 kbit/s*MARGINAL*"
            "[[]plan/test_link.py::test_key_rate]",
            "*PIL-QBER-001 qber = 2 %*PASS*",
            "*criteria: 1 PASS, 1 MARGINAL, 0 FAIL, 1 not measured*",
            "*MARGINAL (near its limit): PIL-SKR-001*",
            "*not measured: PIL-UP-001 Uptime over the soak*",
            "*tests: 2 passed*",
            "*overall: INCOMPLETE*",
        ]
    )
    assert result.ret == 0  # the tests passed; the summary says what was not measured
    (run_dir,) = (pytester.path / "res").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    status = {c["id"]: c["status"] for c in summary["criteria"]}
    assert status == {"PIL-SKR-001": "MARGINAL", "PIL-QBER-001": "PASS", "PIL-UP-001": NOT_MEASURED}
    assert summary["series"][0]["test"] == "plan/test_link.py::test_key_rate"
    assert (run_dir / "summary.html").read_text().count("data:image/png;base64,") == 1
    listed = (run_dir / "manifest.sha256").read_text()
    assert "  summary.html\n" in listed and "  summary.json\n" in listed
    # JUnit XML: each criterion's value, unit and outcome as properties of its test
    junit = (pytester.path / "junit.xml").read_text()
    assert re.search(
        r'testcase[^>]*name="test_key_rate".*?<property name="PIL-SKR-001.value" value="1.5"',
        junit,
        re.S,
    )
    assert '<property name="PIL-SKR-001.outcome" value="MARGINAL"' in junit
    assert '<property name="PIL-QBER-001.value" value="2"' in junit


def test_limit_lines_are_converted_into_the_series_unit():
    from hil.report import _limit_scale, plot_png

    skr = {"id": "S", "quantity": "secure_key_rate", "unit": "kbit/s"}
    assert _limit_scale(skr, None) == 1.0  # default: the criterion's own unit
    assert _limit_scale(skr, "bit/s") == 1000.0  # 1 kbit/s limit drawn at 1000 bit/s
    assert _limit_scale(skr, "Mbit/s") == pytest.approx(1e-3)
    assert _limit_scale(skr, "%") is None  # another quantity: no limit line
    crit = {**skr, "limits": {"min": 1.0, "max": None}, "marginal": None}
    series = {"name": "s", "x": [0, 1], "y": [1, None], "x_label": "x", "y_label": "y"}
    for unit in ("bit/s", "%"):
        png = plot_png([{**series, "criterion_id": "S", "y_unit": unit}], {"S": crit}, "t")
        assert png.startswith(b"\x89PNG")


def test_terminal_lines_group_many_unmeasured_criteria(tmp_path):
    from hil.report import terminal_lines

    body = "".join(
        f"  REQ-{i:02d}:\n    title: t{i}\n    quantity: qber\n    unit: '%'\n"
        "    limits: {max: 5}\n"
        for i in range(10)
    )
    f = tmp_path / "criteria.yaml"
    f.write_text("plan: p\ncriteria:\n" + body)
    run = Run(tmp_path / "res", run_id="r")
    run.add_criteria_file(f)
    spec, _ = load_criteria(f)
    run.add_verdict(judge("REQ-00", spec.criteria["REQ-00"], 0.01, test="t::a"))
    lines = [text for text, _ in terminal_lines(run)]
    assert lines[1] == "criteria: 1 PASS, 0 MARGINAL, 0 FAIL, 9 not measured"
    assert lines[2] == "not measured (9): " + ", ".join(f"REQ-{i:02d}" for i in range(1, 10))
    # the overall line does not repeat the nine ids
    assert lines[3:] == ["tests: none", "overall: INCOMPLETE:", "  no test ran"]


def test_series_unit_defaults_to_the_unit_in_the_y_label(tmp_path):
    run = Run(tmp_path, run_id="r")
    a = run.add_series("a", [0], [1], x_label="t (s)", y_label="key-rate estimate (kbit/s)")
    b = run.add_series("b", [0], [1], x_label="t (s)", y_label="QBER", y_unit="%")
    c = run.add_series("c", [0], [1], x_label="t (s)", y_label="QBER")
    assert (a.y_unit, b.y_unit, c.y_unit) == ("kbit/s", "%", None)


def test_bad_criteria_file_stops_the_plan_with_one_line(pytester):
    plan = pytester.mkdir("plan")
    (plan / "criteria.yaml").write_text(CRITERIA.replace("unit: kbit/s", "unit: kHz"))
    (plan / "test_link.py").write_text("def test_x(judge_value):\n    pass\n")
    result = pytester.runpytest_subprocess("plan", "--results", "res")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = [line for line in result.stderr.lines if line.strip()]
    assert err == [
        "ERROR: plan/criteria.yaml:6: criteria.PIL-SKR-001.unit: unit 'kHz' does not measure "
        "secure_key_rate; use one of bit/s, kbit/s, Mbit/s, bps, kbps, Mbps"
    ], err
    assert not (pytester.path / "res").exists()


def test_evidence_is_named_relative_to_the_run_folder(tmp_path, monkeypatch):
    """The summary's evidence links work from inside the run folder, also when the results
    folder was given as a relative path (the default ``results``)."""
    from hil.criteria import Criterion, judge
    from hil.report import Run

    monkeypatch.chdir(tmp_path)
    run = Run("results")
    inside = run.path("cap.h5")
    assert not inside.is_absolute()
    crit = Criterion(title="t", quantity="count_rate", unit="Hz", limits={"min": 1})
    run.add_verdict(judge("X-1", crit, 5.0, evidence=[str(inside), "/elsewhere/ref.h5"]))
    assert run.verdicts[0].evidence == ["cap.h5", "/elsewhere/ref.h5"]


def test_a_workers_results_merge_into_the_controllers_run(tmp_path):
    """pytest-xdist: what a worker's run gains travels as plain data (numpy values included)
    and the controller's summary holds it as if measured there; nothing is sent twice."""
    worker = Run(tmp_path, run_id="shared", create=False)
    controller = Run(tmp_path, run_id="shared", create=False)
    spec, _ = _criteria(tmp_path)
    worker.current_test = "plan/test_link.py::test_qber"
    worker.add_verdict(
        judge("PIL-QBER-001", spec.criteria["PIL-QBER-001"], np.float64(0.045), plan="pilot")
    )
    worker.add_series(
        "QBER Z",
        np.arange(3),
        np.array([4.0, 4.5, 4.2]),
        x_label="t (s)",
        y_label="QBER (%)",
        ref_lines=[(11.0, "abort threshold")],
    )
    data = worker.export_new()
    assert worker.export_new() is None  # sent once
    json.dumps(data, allow_nan=False)  # plain types only, as execnet needs
    controller.merge(data, worker="gw1")
    assert controller.summary()["verdicts"] == worker.summary()["verdicts"]
    assert controller.summary()["series"] == worker.summary()["series"]
    assert controller.criteria_table()[0]["status"] == "MARGINAL"
