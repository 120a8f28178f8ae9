"""A bench that does not open: every instrument probed, one line each, bounded, and Ctrl-C.

Bad instruments are real loopback sockets in this process (accept and close, accept and stay
silent, answer half then reset), a port nothing listens on, a host name that does not resolve
and a serial port that does not exist. A good instrument (a minimal SCPI peer) stands beside
them as the source, so that the safe state after the failed open is checked too. Each case
runs pytest on a tiny plan in a subprocess, as a nightly job would, with a hard limit.

The bounds asserted are the issue's: pytest ends within the instrument timeout + 10 s, and a
SIGINT ends the run within 5 s.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hil.bench import Bench, BenchError

TIMEOUT_S = 2  # the bad instruments' timeout in the bench files

PLAN = """
def test_uses_bench(bench):
    pass

def test_uses_tagger(tagger):
    pass

def test_uses_attenuator(attenuator):
    pass

def test_needs_nothing():
    pass
"""


class Listener:
    """A loopback listener; each accepted connection goes to ``handler(conn)`` in a thread."""

    def __init__(self, handler):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.resource = f"TCPIP::127.0.0.1::{self.port}::SOCKET"
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        self._handler = handler
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn) -> None:
        try:
            self._handler(conn)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def _lines(conn):
    buf = b""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()


class GoodPeer(Listener):
    """Answers *IDN?, SYST:ERR? and *OPC? like any SCPI instrument; records every line.
    ``mute``: the queries it stops answering (an instrument that hangs later in the run)."""

    def __init__(self, mute: tuple[str, ...] = ()):
        self.received: list[str] = []
        self.mute = mute
        super().__init__(self._scpi)

    def _scpi(self, conn) -> None:
        answers = {"*IDN?": "test,GOOD,0,1.0", "SYST:ERR?": '0,"No error"', "*OPC?": "1"}
        for line in _lines(conn):
            self.received.append(line)
            if line in answers and line not in self.mute:
                conn.sendall((answers[line] + "\n").encode())


def _close_at_once(conn):
    conn.close()


def _stay_silent(conn):
    time.sleep(60)


def _half_then_reset(conn):
    """Answer half of an identification, then reset the connection (SO_LINGER 0: RST)."""
    next(_lines(conn))
    conn.sendall(b"#9000000100half a bl")
    time.sleep(0.2)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _free_port() -> int:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def listeners():
    made = []

    def make(handler=None):
        x = GoodPeer() if handler is None else Listener(handler)
        made.append(x)
        return x

    yield make
    for x in made:
        x.close()


def _bench_file(path: Path, instruments: dict[str, str], timeout_s: float = TIMEOUT_S) -> Path:
    lines = ["name: unreachable-lab", "instruments:"]
    for role, resource in instruments.items():
        t = 5 if role == "source" else timeout_s
        lines.append(f'  {role}: {{resource: "{resource}", timeout_s: {t}}}')
    path.write_text("\n".join(lines) + "\n")
    return path


def _pytest(tmp_path: Path, bench: Path, *extra: str) -> list[str]:
    (tmp_path / "test_plan.py").write_text(PLAN)
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--bench",
        str(bench),
        "--results",
        str(tmp_path / "results"),
        "test_plan.py",
        *extra,
    ]


def _bad_resources(case: str, listeners, tmp_path: Path) -> tuple[dict[str, str], str]:
    """(role -> resource of the two bad instruments, the cause each line must give)."""
    if case == "accept_close":
        res = [listeners(_close_at_once).resource for _ in range(2)]
        cause = "connection closed by the instrument right after connecting"
    elif case == "silent":
        res = [listeners(_stay_silent).resource for _ in range(2)]
        cause = f"no answer to '*IDN?' within {TIMEOUT_S} s"
    elif case == "reset":
        res = [listeners(_half_then_reset).resource for _ in range(2)]
        cause = "connection reset by the instrument"
    elif case == "refused":
        ports = [_free_port() for _ in range(2)]
        res = [f"TCPIP::127.0.0.1::{p}::SOCKET" for p in ports]
        cause = "connection refused (nothing listens on 127.0.0.1 port "
    elif case == "unresolvable":
        res = [
            "TCPIP::nonexistent.invalid::5025::SOCKET",
            "TCPIP::nonexistent.invalid::5026::SOCKET",
        ]
        cause = "host name 'nonexistent.invalid' does not resolve ("
    elif case == "serial_missing":
        res = [f"ASRL{tmp_path}/ttyUSB{i}::INSTR" for i in range(2)]
        cause = "cannot open the port (No such file or directory)"
    else:
        raise AssertionError(case)
    return {"tagger": res[0], "attenuator": res[1]}, cause


@pytest.mark.parametrize(
    "case", ["accept_close", "silent", "reset", "refused", "unresolvable", "serial_missing"]
)
def test_bench_that_does_not_open(tmp_path, listeners, case):
    good = listeners()
    bad, cause = _bad_resources(case, listeners, tmp_path)
    bench = _bench_file(tmp_path / "lab.yaml", {"source": good.resource, **bad})
    t0 = time.monotonic()
    proc = subprocess.run(
        _pytest(tmp_path, bench),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,  # hard limit: a hang fails here instead of holding the suite
    )
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert elapsed < TIMEOUT_S + 10, f"{elapsed:.1f} s\n{out}"
    # one line per failing instrument, naming role, resource and cause, reported once
    for role, resource in bad.items():
        line = f"  {role} ({resource}): {cause}"
        found = [x for x in out.splitlines() if x.startswith(line)]
        assert len(found) == 1, f"{line!r} found {len(found)} times in\n{out}"
    assert "2 of 3 instruments unreachable" in out, out
    assert out.count("ERROR at setup") == 1, out  # the error once, not once per test
    assert "Traceback" not in out, out
    for raw in ("gaierror", "SerialException", "VisaIOError", "ConnectionRefusedError"):
        assert raw not in out, f"raw {raw} in\n{out}"
    # the source answered: its safe state was applied after the failed open
    assert "OUTP 0" in good.received, good.received
    # the run folder records why the bench did not open (H5's part of the plugin)
    summaries = list((tmp_path / "results").glob("*/summary.json"))
    assert len(summaries) == 1, out
    summary = json.loads(summaries[0].read_text())
    assert summary["overall"] == "NOT RUN", summary["overall"]
    failures = summary["bench_error"]["failures"]
    assert set(failures) == set(bad), failures
    assert all(c.startswith(cause) for c in failures.values()), failures


def test_sigint_while_the_bench_opens_ends_the_run_within_5_s(tmp_path, listeners):
    silent = listeners(_stay_silent)
    good = listeners()
    bench = _bench_file(
        tmp_path / "lab.yaml",
        {"source": good.resource, "tagger": silent.resource},
        timeout_s=20,
    )
    proc = subprocess.Popen(
        _pytest(tmp_path, bench),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # the probe connected to the silent tagger: the run is inside Bench.open, waiting
        assert silent.accepted.wait(60), "pytest never connected to the tagger"
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 5, f"{elapsed:.1f} s after SIGINT\n{out}"
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    # the safe state was attempted on the instrument that had answered
    assert "OUTP 0" in good.received, good.received


def test_sigint_during_a_run_ends_it_within_5_s_when_the_safe_state_hangs(tmp_path, listeners):
    """The bench opened; during a test the source stops answering (here: its error queue).
    Ctrl-C: the safe state is attempted but not waited out for the source's 20 s timeout."""
    source = GoodPeer(mute=("SYST:ERR?",))
    flag = tmp_path / "running"
    bench = _bench_file(tmp_path / "lab.yaml", {"source": source.resource})
    bench.write_text(bench.read_text().replace("timeout_s: 5", "timeout_s: 20"))
    cmd = _pytest(tmp_path, bench)
    (tmp_path / "test_plan.py").write_text(
        "import pathlib, time\n"
        "def test_waits(bench):\n"
        f"    pathlib.Path({str(flag)!r}).write_text('up')\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the test never ran"
            time.sleep(0.05)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        source.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 5, f"{elapsed:.1f} s after SIGINT\n{out}"
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "OUTP 0" in source.received, source.received  # the safe state was attempted


def test_interrupted_open_logs_what_the_safe_state_could_not_apply(listeners, tmp_path, caplog):
    """In process: a Ctrl-C while the source has not answered yet; the attenuator has. The open
    ends at once, the attenuator is made safe, and one log line says the source was not."""
    silent = listeners(_stay_silent)
    good = listeners()
    bench = _bench_file(
        tmp_path / "lab.yaml", {"source": silent.resource, "attenuator": good.resource}
    )
    bench.write_text(bench.read_text().replace("timeout_s: 5", "timeout_s: 20"))
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    caplog.set_level(logging.INFO, logger="hil.bench")
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            Bench.open(bench)
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 1.0 + 5
    lines = [r.getMessage() for r in caplog.records if r.name == "hil.bench"]
    assert lines == [
        f"source ({silent.resource}): safe state not applied: "
        "interrupted before it answered its identification query",
        f"attenuator ({good.resource}): safe state applied",
    ], lines
    assert good.received[-3:] == ["INP1:ATT MAX", "OUTP1:STAT 0", "SYST:ERR?"], good.received


def test_bench_error_lists_every_instrument(tmp_path, listeners):
    """The library's side of a failed open (I4): one header line, then one per instrument."""
    good = listeners()
    closing = listeners(_close_at_once)
    port = _free_port()
    bench = _bench_file(
        tmp_path / "lab.yaml",
        {
            "source": good.resource,
            "tagger": closing.resource,
            "detectors": f"TCPIP::127.0.0.1::{port}::SOCKET",
        },
    )
    with pytest.raises(BenchError) as e:
        Bench.open(bench)
    assert str(e.value).splitlines() == [
        f"{bench}: 2 of 3 instruments unreachable",
        f"  tagger ({closing.resource}): connection closed by the instrument right after "
        "connecting",
        f"  detectors (TCPIP::127.0.0.1::{port}::SOCKET): connection refused (nothing listens "
        f"on 127.0.0.1 port {port})",
    ]
    assert set(e.value.failures) == {"tagger", "detectors"}
    assert (
        e.value.failures["tagger"] == "connection closed by the instrument right after connecting"
    )
