"""Bench health and safe state: a dead emulator, a bench without the control instrument, and the
safe state after a failing test, an error in a fixture and SIGINT (checked on the emulator)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import pyvisa

pytest_plugins = ["pytester"]


@pytest.fixture
def emulator(tmp_path):
    """A separately started emulator, so that it outlives the pytest session under test."""
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.cli", "emulator", "serve", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "emulator exited"
        assert time.monotonic() < deadline, "emulator did not start"
        time.sleep(0.05)
    yield json.loads(ready.read_text())["resources"]
    proc.terminate()
    proc.wait(10)


def _bench_file(path: Path, resources: dict, roles=None) -> Path:
    lines = ["name: external-emulator", "instruments:"]
    for role, res in resources.items():
        if roles is None or role in roles:
            lines.append(f'  {role}: {{resource: "{res}"}}')
    path.write_text("\n".join(lines) + "\n")
    return path


def _query(resource: str, command: str) -> str:
    rm = pyvisa.ResourceManager("@py")
    inst = rm.open_resource(resource, read_termination="\n", write_termination="\n", timeout=5000)
    try:
        return inst.query(command).strip()
    finally:
        inst.close()


def _assert_safe(resources: dict) -> None:
    assert _query(resources["source"], "OUTP?") == "0", "source output still on"
    att = float(_query(resources["attenuator"], "INP1:ATT?"))
    att_max = float(_query(resources["attenuator"], "INP1:ATT? MAX"))
    assert att == att_max, f"attenuator at {att} dB, not at its maximum {att_max} dB"


TURN_ON = """
import pathlib, pytest
def _on(bench):
    bench.source.output_enabled = True
    bench.attenuator.set_attenuation_and_wait(0.0)
    bench.attenuator.output_enabled = True
    assert bench.source.output_enabled
"""


def test_safe_state_after_a_failing_test(pytester, emulator):
    bench = _bench_file(pytester.path / "lab.yaml", emulator)
    pytester.makepyfile(
        TURN_ON
        + textwrap.dedent("""
        def test_fails(bench):
            _on(bench)
            assert False, "deliberate failure with the link up"
    """)
    )
    result = pytester.runpytest_subprocess("--bench", str(bench), "--results", "res")
    result.assert_outcomes(failed=1)
    _assert_safe(emulator)


def test_safe_state_after_an_error_in_a_fixture(pytester, emulator):
    bench = _bench_file(pytester.path / "lab.yaml", emulator)
    pytester.makepyfile(
        TURN_ON
        + textwrap.dedent("""
        @pytest.fixture
        def broken(bench):
            _on(bench)
            raise RuntimeError("fixture error with the link up")
        def test_x(broken):
            pass
    """)
    )
    result = pytester.runpytest_subprocess("--bench", str(bench), "--results", "res")
    result.assert_outcomes(errors=1)
    _assert_safe(emulator)


def test_safe_state_after_sigint(pytester, emulator):
    bench = _bench_file(pytester.path / "lab.yaml", emulator)
    flag = pytester.path / "up"
    pytester.makepyfile(
        TURN_ON
        + textwrap.dedent(f"""
        def test_waits(bench):
            _on(bench)
            pathlib.Path({str(flag)!r}).write_text("up")
            import time; time.sleep(60)
    """)
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--bench",
            str(bench),
            "--results",
            "res",
        ],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _query(emulator["source"], "OUTP?") == "1"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out.decode()
    assert elapsed < 5, f"the run ended {elapsed:.1f} s after the first Ctrl-C"  # issue 14
    _assert_safe(emulator)


def test_emulator_only_tests_skip_on_a_bench_without_control(pytester, emulator):
    bench = _bench_file(
        pytester.path / "lab.yaml",
        emulator,
        roles={"source", "attenuator", "switch", "detectors", "tagger", "powermeter"},
    )
    pytester.makepyfile("""
        import pytest
        @pytest.mark.emulator_only
        def test_fault(bench, control):
            pass
        def test_plain(source):
            assert source.idn
    """)
    result = pytester.runpytest_subprocess("--bench", str(bench), "--results", "res", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*control*"])


def test_killed_emulator_fails_the_running_test_and_skips_the_rest(pytester):
    pytester.makepyfile("""
        import os, signal, time
        def test_kill(bench, source):
            os.kill(bench.emulator.pid, signal.SIGKILL)
            time.sleep(0.5)
            source.output_enabled = True
        def test_after_1(source):
            source.output_enabled = True
        def test_after_2(bench):
            bench.tagger.status()
        def test_unrelated():
            pass
    """)
    t0 = time.monotonic()
    result = pytester.runpytest_subprocess("--results", "res", "-rs")
    elapsed = time.monotonic() - t0
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1, skipped=2, passed=1)
    result.stdout.fnmatch_lines(["*source*"])
    result.stdout.fnmatch_lines(["*SKIPPED*broken*"])
    # every instrument fails at once on a refused connection: no timeout is waited out
    assert elapsed < 60, elapsed
