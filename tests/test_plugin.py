"""The pytest plugin through pytest's own pytester: options, bench errors, verdicts, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


PID_TEST = """
import os, pathlib
def test_records_pid(bench):
    pathlib.Path({path!r}).write_text(str(bench.emulator.pid))
    {tail}
"""


def test_help_lists_options(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--bench=NAME|PATH*", "*--results=DIR*"])
    result.stdout.fnmatch_lines(["*hil_bench*", "*hil_results*"])


def test_missing_bench_file_stops_at_startup_with_one_line(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--bench", "missing.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = [line for line in result.stderr.lines if line.strip()]
    assert err == ["ERROR: missing.yaml: file not found"], err
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            """
            name: lab
            instruments:
              source: {resource: "TCPIP::10.0.0.1::5025::SOCKET"}
              laser: {resource: "TCPIP::10.0.0.2::5025::SOCKET"}
            """,
            "bad.yaml:4: instruments.laser: unknown role 'laser'",
        ),
        (
            """
            name: lab
            instruments:
              tagger:
                resource: "TCPIP::10.0.0.1:5025"
            """,
            "bad.yaml:4: instruments.tagger.resource: 'TCPIP::10.0.0.1:5025' is not a VISA",
        ),
        (
            """
            name: lab
            instruments:
              tagger:
                resource: "TCPIP::10.0.0.1::5025::SOCKET"
                timeout: 3
            """,
            "bad.yaml:5: instruments.tagger.timeout: unknown key",
        ),
        (
            """
            name: lab
            instruments: [
            """,
            "bad.yaml:3: invalid YAML",
        ),
    ],
)
def test_bad_bench_file_names_file_key_and_line(pytester, body, expected):
    pytester.makepyfile("def test_x(): pass")
    (pytester.path / "bad.yaml").write_text(textwrap.dedent(body).lstrip("\n"))
    result = pytester.runpytest_subprocess("--bench", "bad.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = [line for line in result.stderr.lines if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("ERROR: " + expected), err[0]


def test_default_bench_is_the_emulated_one_and_stops_after_the_session(pytester):
    pid_file = pytester.path / "pid"
    pytester.makepyfile(
        PID_TEST.format(path=str(pid_file), tail="assert bench.spec.name == 'emulated'")
    )
    result = pytester.runpytest_subprocess("--results", str(pytester.path / "res"))
    result.assert_outcomes(passed=1)
    pid = int(pid_file.read_text())
    assert _wait_gone(pid), f"emulator {pid} still running after a normal session"


def test_emulator_stops_after_a_failing_test(pytester):
    pid_file = pytester.path / "pid"
    pytester.makepyfile(PID_TEST.format(path=str(pid_file), tail="assert False, 'boom'"))
    result = pytester.runpytest_subprocess("--results", str(pytester.path / "res"))
    result.assert_outcomes(failed=1)
    assert _wait_gone(int(pid_file.read_text()))


def test_emulator_stops_after_an_error_in_a_fixture(pytester):
    pid_file = pytester.path / "pid"
    pytester.makepyfile(
        f"""
        import pathlib, pytest
        @pytest.fixture
        def broken(bench):
            pathlib.Path({str(pid_file)!r}).write_text(str(bench.emulator.pid))
            raise RuntimeError("fixture error")
        def test_x(broken):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--results", str(pytester.path / "res"))
    result.assert_outcomes(errors=1)
    assert _wait_gone(int(pid_file.read_text()))


def test_emulator_stops_after_sigint_during_a_test(pytester):
    pid_file = pytester.path / "pid"
    pytester.makepyfile(PID_TEST.format(path=str(pid_file), tail="import time; time.sleep(60)"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--results", "res"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the test never started"
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        assert _alive(pid)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out.decode()
    assert _wait_gone(pid), f"emulator {pid} still running after SIGINT"


def test_unmet_criterion_fails_with_value_and_limit(pytester):
    pytester.makefile(
        ".yaml",
        criteria="""
        plan: demo
        criteria:
          DEMO-001:
            title: impossible rate
            quantity: count_rate
            unit: MHz
            limits: {min: 1000}
        """,
    )
    pytester.makepyfile(
        test_demo="""
        def test_rate(judge_value):
            judge_value("DEMO-001", 2.5e6)
        """
    )
    result = pytester.runpytest_subprocess("--results", str(pytester.path / "res"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*DEMO-001 count_rate = 2.5 MHz, limit >= 1000 MHz: FAIL (margin -997.5 MHz)*"]
    )
    summaries = list((pytester.path / "res").glob("*/summary.json"))
    assert len(summaries) == 1
    import json

    verdicts = json.loads(summaries[0].read_text())["verdicts"]
    assert [(v["criterion_id"], v["outcome"], v["value"]) for v in verdicts] == [
        ("DEMO-001", "FAIL", 2.5)
    ]


def test_hil_run_is_pytest_for_people_who_do_not_use_pytest(pytester):
    """``hil run PLAN`` gives the same verdicts, run folder and exit status as pytest."""
    pytester.makefile(
        ".yaml",
        criteria="""
        plan: demo
        criteria:
          DEMO-001: {title: rate, quantity: count_rate, unit: Hz, limits: {min: 10}}
          DEMO-002: {title: rate, quantity: count_rate, unit: Hz, limits: {min: 1000}}
        """,
    )
    pytester.makepyfile(
        test_demo="""
        def test_ok(judge_value):
            judge_value("DEMO-001", 100.0)
        def test_low(judge_value):
            judge_value("DEMO-002", 100.0)
        """
    )
    import json

    outcomes = {}
    for how, argv in (
        (
            "pytest",
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "--results",
                "res-pytest",
                ".",
            ],
        ),
        ("hil run", [sys.executable, "-m", "hil.cli", "run", ".", "--results", "res-hil"]),
    ):
        proc = subprocess.run(argv, cwd=pytester.path, capture_output=True, text=True, timeout=300)
        folder = "res-pytest" if how == "pytest" else "res-hil"
        (summary,) = (pytester.path / folder).glob("*/summary.json")
        verdicts = json.loads(summary.read_text())["verdicts"]
        outcomes[how] = (
            proc.returncode,
            sorted((v["criterion_id"], v["outcome"], v["value"]) for v in verdicts),
        )
    assert outcomes["pytest"] == outcomes["hil run"]
    assert outcomes["pytest"][0] == pytest.ExitCode.TESTS_FAILED
    assert outcomes["pytest"][1] == [("DEMO-001", "PASS", 100.0), ("DEMO-002", "FAIL", 100.0)]
