"""A run's summary tells the truth: a failed test's message is in summary.json, summary.html and
the terminal; a run that measured only part of its plan (-k, interrupted, every test skipped) is
INCOMPLETE and never PASS; a session where every test skipped does not exit 0; a bench that did
not open leaves a run folder that says NOT RUN and why, reported once.

Every case is a small plan in a temporary folder run by pytest in a subprocess, as a user runs it.
"""

from __future__ import annotations

import html
import json
import re
import socket
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CRITERIA = """\
plan: demo
criteria:
  DEMO-001: {title: count rate, quantity: count_rate, unit: Hz, limits: {min: 10}}
  DEMO-002: {title: dark counts, quantity: dark_count_rate, unit: Hz, limits: {max: 100},
             marginal: {max: 80}}
  DEMO-003: {title: second rate, quantity: count_rate, unit: Hz, limits: {min: 10}}
"""


def _plan(pytester, body: str, criteria: str = CRITERIA) -> None:
    plan = pytester.mkdir("plan")
    (plan / "criteria.yaml").write_text(criteria)
    (plan / "test_demo.py").write_text(textwrap.dedent(body))


def _run(pytester, *args: str):
    result = pytester.runpytest_subprocess("plan", "--results", "res", "-rs", *args)
    (folder,) = (pytester.path / "res").iterdir()  # one run folder per session
    summary = json.loads((folder / "summary.json").read_text())
    page = (folder / "summary.html").read_text()
    banner = page.split("<h2>")[0]  # the top of the page: the banner and its reasons
    return result, summary, banner


def _tests(summary: dict) -> dict[str, tuple[str, str]]:
    return {t["nodeid"].split("::")[-1]: (t["outcome"], t["message"]) for t in summary["tests"]}


ALL_PASS = """
def test_one(judge_value):
    judge_value("DEMO-001", 100.0)
def test_two(judge_value):
    judge_value("DEMO-002", 20.0)
def test_three(judge_value):
    judge_value("DEMO-003", 50.0)
"""


def test_a_complete_plan_without_failures_passes(pytester):
    _plan(pytester, ALL_PASS)
    result, summary, banner = _run(pytester)
    assert result.ret == 0
    assert summary["overall"] == "PASS" and summary["reasons"] == []
    assert summary["test_counts"]["passed"] == 3
    assert 'class="banner PASS"' in banner
    result.stdout.fnmatch_lines(["*tests: 3 passed*", "overall: PASS"])


def test_a_complete_plan_near_a_limit_is_marginal(pytester):
    _plan(pytester, ALL_PASS.replace("20.0", "90.0"))
    result, summary, _ = _run(pytester)
    assert result.ret == 0
    assert summary["overall"] == "MARGINAL"
    assert summary["reasons"] == ["1 criteria MARGINAL (near the limit): DEMO-002"]


def test_a_failing_test_makes_the_run_fail_and_its_message_is_reported(pytester):
    _plan(
        pytester,
        """
        import pytest

        @pytest.fixture
        def interlock():
            raise RuntimeError("laser interlock open on bench 3")

        def test_one(judge_value):
            judge_value("DEMO-001", 100.0)
        def test_two(judge_value):
            judge_value("DEMO-002", 20.0)
            assert 1 + 1 == 3, "pump current out of range: 812 mA"
        def test_three(interlock, judge_value):
            judge_value("DEMO-003", 50.0)
        """,
    )
    result, summary, banner = _run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert summary["overall"] == "FAIL"
    # no verdict failed: the counts say so, and say which tests did
    assert summary["verdict_counts"]["FAIL"] == 0
    assert summary["test_counts"]["failed"] == 1 and summary["test_counts"]["error"] == 1
    tests = _tests(summary)
    assert tests["test_one"] == ("passed", "")
    assert tests["test_two"] == ("failed", "AssertionError: pump current out of range: 812 mA")
    assert tests["test_three"] == ("error", "RuntimeError: laser interlock open on bench 3")
    assert summary["reasons"][0] == "2 tests failed or errored (1 failed, 1 errored):"
    assert any("pump current out of range: 812 mA" in r for r in summary["reasons"])
    # the banner says why: the failed test and its message, the errored one and its message
    assert 'class="banner FAIL"' in banner
    assert "1 failed" in banner and "1 error" in banner
    assert "pump current out of range: 812 mA" in banner
    assert "laser interlock open on bench 3" in banner
    result.stdout.fnmatch_lines(
        [
            "*tests: 1 passed, 1 failed, 1 error*",
            "overall: FAIL:",
            "*test_two: AssertionError: pump current out of range: 812 mA",
            "*test_three: RuntimeError: laser interlock open on bench 3",
        ]
    )


def test_a_failed_verdict_names_the_criterion_and_its_value(pytester):
    _plan(pytester, ALL_PASS.replace("50.0", "2.5"))
    result, summary, banner = _run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert summary["overall"] == "FAIL"
    message = _tests(summary)["test_three"][1]
    assert message.startswith("DEMO-003 count_rate = 2.5 Hz, limit >= 10 Hz: FAIL")
    assert "1 criteria FAIL: DEMO-003" in summary["reasons"]
    assert html.escape(message) in banner


def test_a_k_selection_is_incomplete(pytester):
    _plan(pytester, ALL_PASS)
    result, summary, banner = _run(pytester, "-k", "one")
    assert result.ret == 0  # what ran passed
    assert summary["overall"] == "INCOMPLETE"
    assert summary["verdict_counts"]["PASS"] == 1
    assert "2 tests of the plan were left out (-k/-m selection)" in summary["reasons"]
    assert "2 of 3 criteria not measured: DEMO-002, DEMO-003" in summary["reasons"]
    assert 'class="banner INCOMPLETE"' in banner and "left out" in banner
    result.stdout.fnmatch_lines(["overall: INCOMPLETE:", "*left out (-k/-m selection)"])


def test_an_interrupted_run_is_incomplete(pytester):
    _plan(
        pytester,
        """
        def test_one(judge_value):
            judge_value("DEMO-001", 100.0)
        def test_two(judge_value):
            raise KeyboardInterrupt
        def test_three(judge_value):
            judge_value("DEMO-003", 50.0)
        """,
    )
    result, summary, banner = _run(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert summary["overall"] == "INCOMPLETE"
    assert "interrupted: KeyboardInterrupt during plan/test_demo.py::test_two" in summary["reasons"]
    assert "2 of 3 selected tests did not run" in summary["reasons"]
    assert summary["test_counts"]["not run"] == 2
    assert 'class="banner INCOMPLETE"' in banner and "KeyboardInterrupt" in banner


def test_a_run_stopped_by_x_names_what_did_not_run(pytester):
    _plan(pytester, ALL_PASS.replace('judge_value("DEMO-001", 100.0)', "assert False, 'no light'"))
    result, summary, _ = _run(pytester, "-x")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert summary["overall"] == "FAIL"  # a failure outranks incompleteness; both are said
    assert any(r.startswith("interrupted: stopping after 1 failures") for r in summary["reasons"])
    assert "2 of 3 selected tests did not run" in summary["reasons"]


def test_every_test_skipped_is_incomplete_and_does_not_exit_0(pytester):
    """A bench without instruments: every test skips (the issue's "28 skipped, exit 0")."""
    (pytester.path / "empty.yaml").write_text("name: empty\ninstruments: {}\n")
    _plan(
        pytester,
        """
        def test_one(source, judge_value):
            judge_value("DEMO-001", 100.0)
        def test_two(tagger, judge_value):
            judge_value("DEMO-002", 20.0)
        """,
    )
    result, summary, banner = _run(pytester, "--bench", "empty.yaml")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED  # 5, as documented in the README
    assert summary["overall"] == "INCOMPLETE"
    assert summary["test_counts"]["skipped"] == 2
    assert (
        "every test was skipped (2), e.g. the bench has no 'source' instrument"
        in summary["reasons"]
    )
    assert 'class="banner INCOMPLETE"' in banner and "every test was skipped" in banner
    result.stdout.fnmatch_lines(["*exit status 5: every test was skipped, nothing was tested*"])


def _closed_port() -> int:
    """A loopback port with no listener (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_bench_that_does_not_open_is_reported_once_and_recorded(pytester):
    port_a, port_b = _closed_port(), _closed_port()
    (pytester.path / "lab.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: lab
            instruments:
              source: {{resource: "TCPIP::127.0.0.1::{port_a}::SOCKET", timeout_s: 1}}
              attenuator: {{resource: "TCPIP::127.0.0.1::{port_b}::SOCKET", timeout_s: 1}}
            """
        )
    )
    _plan(
        pytester,
        """
        def test_one(source, judge_value):
            judge_value("DEMO-001", 100.0)
        def test_two(bench, judge_value):
            judge_value("DEMO-002", 20.0)
        def test_three(attenuator, judge_value):
            judge_value("DEMO-003", 50.0)
        def test_no_bench():
            pass
        """,
    )
    result, summary, banner = _run(pytester, "--bench", "lab.yaml")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "Traceback" not in out and "During handling" not in out
    # the cause is printed once, one line per instrument (and once more in the verdict summary)
    assert out.count("2 of 2 instruments unreachable") == 2, out
    for role, port in (("source", port_a), ("attenuator", port_b)):
        line = f"  {role} (TCPIP::127.0.0.1::{port}::SOCKET): connection refused"
        assert out.count(line) == 1, out
    # the later tests: one reference line (pytest -rs groups the two identical skips)
    assert re.search(r"SKIPPED \[2\] .*: bench did not open: see the first error above and ", out)
    result.assert_outcomes(errors=1, skipped=2, passed=1)
    assert summary["overall"] == "NOT RUN"
    error = summary["bench_error"]
    assert Path(error["bench_file"]).name == "lab.yaml"
    assert set(error["failures"]) == {"source", "attenuator"}
    assert str(port_b) in error["failures"]["attenuator"]
    assert 'class="banner NOT-RUN"' in banner and "the bench did not open" in banner
    tests = _tests(summary)
    assert tests["test_two"][0] == "skipped"
    assert tests["test_two"][1].startswith("bench did not open: see the first error above and ")


def test_an_action_the_bench_could_not_issue_on_time_is_a_bench_error_not_a_fail(pytester):
    # a real bench's control loop lagged: the test errors with the asked and achieved times, and
    # no criterion is judged FAIL from it (its criterion stays NOT MEASURED)
    _plan(
        pytester,
        """
        from hil.capture import BenchTimingError
        def test_one(judge_value):
            judge_value("DEMO-001", 100.0)
        def test_two(judge_value):
            judge_value("DEMO-002", 20.0)
        def test_three(judge_value):
            raise BenchTimingError("fiber cut", 0.5, 0.62, "was issued at 0.62 s")
        """,
    )
    result, summary, banner = _run(pytester)
    assert result.ret != 0
    outcome, message = _tests(summary)["test_three"]
    assert outcome == "error", summary["tests"]
    assert "bench timing: action 'fiber cut' asked 0.5 s" in message, message
    statuses = {c["id"]: c["status"] for c in summary["criteria"]}
    assert statuses["DEMO-003"] == "NOT MEASURED" and "FAIL" not in statuses.values()
    assert summary["test_counts"].get("failed", 0) == 0
    assert "bench timing" in html.unescape(banner)
