"""Hostile clients of the emulated bench: one client cannot stall or crash the others.

Over real sockets: an over-long line is refused as it arrives while the other instruments keep
answering, connections and scheduled faults are bounded, out-of-range numbers are -2xx errors,
and the control port refuses fault injection without the token of the ready file.
"""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hil.emulator.scpi import MessageFramer, ScpiError, block
from hil.emulator.server import MAX_CONNECTIONS, MAX_MESSAGE_BYTES, Emulator

BIG_LINE = 20 * 1024 * 1024  # the 20 MB line
FLOOD_S = 1.5  # how long the flooding client keeps sending while the other one measures
IDN_MEDIAN_BOUND_S = 2e-3  # the issue's bound on the other instruments' *IDN? median


class Client:
    """A raw SCPI socket client with a deadline on every read."""

    def __init__(self, resource: str, timeout_s: float = 10.0):
        _, host, port, _ = resource.split("::")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the emulator")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def query(self, text: str) -> str:
        self.send(text.encode() + b"\n")
        return self.readline().decode()

    def error_code(self) -> int:
        return int(self.query("SYST:ERR?").split(",", 1)[0])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def emu():
    e = Emulator()
    e.start()
    yield e
    e.stop()


@pytest.fixture()
def clients(emu):
    opened: list[Client] = []

    def make(role: str, auth: bool = False) -> Client:
        c = Client(emu.resources[role])
        if auth:
            c.send(b'SYST:AUTH "%s"\n' % emu.control_token.encode())
        assert c.query("*CLS;*OPC?") == "1"  # cleared before the test's other clients act
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()
    assert emu.crashes == 0


# ----------------------------------------------------------------------------- framing


def test_framer_gives_the_same_messages_however_the_stream_is_cut():
    blk = np.arange(40, dtype="<i8").tobytes() + b"\n\n#3"
    stream = (
        b"*IDN?\n"
        + b"SIFT:QUER? "
        + block(blk)
        + b"\n"
        + b"*CLS;SIFT:QUER? "
        + block(b"\n")
        + b"\n"
        + b'LINK:PAR? "a #9999999999"\n'
        + b"A#13\n"
        + b"B 1,#15\n"
    )
    expected = [
        b"*IDN?",
        b"SIFT:QUER? " + block(blk),
        b"*CLS;SIFT:QUER? " + block(b"\n"),
        b'LINK:PAR? "a #9999999999"',
        b"A#13",
    ]
    limits = {"SIFT:QUER?": 1 << 20, "B": 0}
    rng = random.Random(5)
    for _ in range(200):
        f = MessageFramer(4096, lambda h: limits.get(h, 0))
        got, i = [], 0
        while i < len(stream):
            step = rng.choice((1, 2, 3, 7, 64, 4096))
            got += f.feed(stream[i : i + step])
            i += step
        assert got == expected  # "B 1,#15" waits for its 5 block bytes
        assert f.buf == b"B 1,#15\n"


def test_framer_refuses_at_the_bound_and_drops_the_rest_unbuffered():
    f = MessageFramer(1000, lambda h: 100 if h == "Q?" else 0)
    out = f.feed(b"X " + b"1" * 1500)
    assert [type(o) for o in out] == [ScpiError] and out[0].code == -100
    assert len(f.buf) == 0 and f.discarding
    assert f.feed(b"2" * 10**6) == [] and len(f.buf) == 0
    assert f.feed(b"3\n*IDN?\n") == [b"*IDN?"]
    # a declared block beyond its command's limit is refused before its bytes come
    out = f.feed(b"Q? #3101")
    assert out[0].code == -100 and "at most 100" in out[0].detail
    # within the limit, block bytes do not count against the text bound
    f = MessageFramer(1000, lambda h: 5000 if h == "Q?" else 0)
    assert f.feed(b"Q? " + block(b"\n" * 4000) + b"\n") == [b"Q? " + block(b"\n" * 4000)]
    out = f.feed(b"R " + block(b"x" * 4000) + b"\n")  # R takes no block: counted as text
    assert out[0].code == -100


# ----------------------------------------------------------------------------- over sockets


def _flood(resource: str, stop: threading.Event, newline: bool, sent: list[int]) -> None:
    """Send 20 MB lines (or one endless line) to one instrument until ``stop``."""
    c = Client(resource, timeout_s=30)
    piece = b"INP1:ATT " + b"1" * (1 << 20)
    try:
        while not stop.is_set():
            for _ in range(BIG_LINE // len(piece)):
                c.send(piece)
                sent[0] += len(piece)
            if newline:
                c.send(b"\n")
    finally:
        c.close()


@pytest.mark.parametrize("newline", [True, False], ids=["lines", "no newline"])
def test_a_20_mb_line_is_refused_at_once_and_others_keep_answering(emu, clients, newline):
    victim = clients("attenuator")
    other = clients("powermeter")
    idn = other.query("*IDN?")
    stop, sent = threading.Event(), [0]
    flood = threading.Thread(
        target=_flood, args=(emu.resources["attenuator"], stop, newline, sent), daemon=True
    )
    flood.start()
    times = []
    t_end = time.monotonic() + FLOOD_S
    try:
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            assert other.query("*IDN?") == idn
            times.append(time.perf_counter() - t0)
    finally:
        stop.set()
        flood.join(30)
    assert not flood.is_alive()
    assert sent[0] >= BIG_LINE, "the flood did not send one whole line meanwhile"
    median = sorted(times)[len(times) // 2]
    assert median < IDN_MEDIAN_BOUND_S, f"*IDN? median {median * 1e3:.2f} ms during the flood"
    # refused (-100), not executed: the attenuation is unchanged and the instrument answers
    assert victim.error_code() == -100
    assert victim.query("*IDN?").startswith("Keysight")


def test_the_refusal_comes_before_the_line_ends(clients, emu):
    c = Client(emu.resources["attenuator"])
    watcher = clients("attenuator")
    try:
        c.send(b"INP1:ATT " + b"1" * (4 * MAX_MESSAGE_BYTES))  # no newline yet
        code = 0
        deadline = time.monotonic() + 5.0
        while code == 0 and time.monotonic() < deadline:
            code = watcher.error_code()
        assert code == -100
    finally:
        c.close()


def test_connections_per_instrument_are_bounded(emu, clients):
    held = [Client(emu.resources["detectors"]) for _ in range(MAX_CONNECTIONS)]
    try:
        for c in held:  # every one of them is served
            assert c.query("*IDN?").startswith("qkd-hil")
        extra = Client(emu.resources["detectors"], timeout_s=5)
        try:
            assert extra.sock.recv(1) == b"", "a connection beyond the bound is closed"
        finally:
            extra.close()
        assert clients("powermeter").query("*IDN?").startswith("Thorlabs")  # others unaffected
    finally:
        for c in held:
            c.close()
    deadline = time.monotonic() + 5.0
    while True:  # a slot is free again once the server has seen the closes
        c = Client(emu.resources["detectors"], timeout_s=5)
        try:
            if c.query("*IDN?").startswith("qkd-hil"):
                break
        except ConnectionError:
            assert time.monotonic() < deadline, "no slot freed after the clients closed"
            time.sleep(0.05)
        finally:
            c.close()


def test_out_of_range_numbers_are_data_errors(clients):
    src = clients("source")
    for value in ("1" * 400, "#H" + "F" * 5000, "-" + "9" * 400):
        src.send(b"SOUR:SEED " + value.encode() + b"\n")
        assert src.error_code() == -222, value[:10]
    src.send(b"SOUR:SEED " + b"1" * 60000 + b"!\n")  # linear-time number parsing
    assert src.error_code() in (-120, -131, -138)
    assert src.query("SYST:ERR?") == '0,"No error"'


def test_scheduled_faults_are_bounded(emu, clients):
    ctl = clients("control", auth=True)
    t = float(ctl.query("LINK:TIME?")) + 1e3
    ctl.send(b"".join(b'FAUL:SCH %.1f,"FAUL:EVE 0"\n' % (t + i) for i in range(1000)))
    assert ctl.query("SYST:ERR?") == '0,"No error"'
    ctl.send(b'FAUL:SCH 1e6,"FAUL:EVE 0"\n')
    assert ctl.error_code() == -225
    emu.link.idle_until(int((t + 1000) * 1e12))  # link time passes them: they run, room again
    assert emu.devices["control"].scheduled == 0


def test_control_port_refuses_faults_without_the_token(emu, clients):
    ctl = clients("control")
    assert ctl.query("*IDN?").startswith("qkd-hil,EMULATOR-CONTROL")
    before = emu.link.get("insertion_loss_db")
    ctl.send(b"FAUL:LOSS 20\n")
    assert ctl.error_code() == -203
    assert emu.link.get("insertion_loss_db") == before
    ctl.send(b'SYST:AUTH "wrong"\n')
    assert ctl.error_code() == -203
    ctl.send(b'SYST:AUTH "%s"\nFAUL:LOSS 0\n' % emu.control_token.encode())
    assert ctl.query("SYST:ERR?") == '0,"No error"'
    assert float(ctl.query("LINK:TIME?")) >= 0
    # the token holds for its connection only
    assert clients("control").query("LINK:TIME?;*IDN?").startswith("qkd-hil")  # *IDN? only
    other = clients("control")
    other.send(b'LINK:PAR "jitter_ps",30\n')
    assert other.error_code() == -203


def test_ready_file_holds_the_token_for_its_owner_only(tmp_path):
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.cli", "emulator", "serve", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.05)
        assert stat.S_IMODE(os.stat(ready).st_mode) == 0o600
        info = json.loads(ready.read_text())
        token = info["control_token"]
        assert len(token) >= 32
        c = Client(info["resources"]["control"])
        try:
            c.send(b'SYST:AUTH "%s"\nFAUL:EVE 0\n' % token.encode())
            assert c.query("SYST:ERR?") == '0,"No error"'
        finally:
            c.close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_scheduled_faults_are_checked_when_scheduled_and_run_at_their_time(emu, clients):
    ctl = clients("control", auth=True)
    for bad, code in (
        ('FAUL:SCH 1,"FAUL:LOSS 999"', -222),  # out of range: refused now, not at its time
        ('FAUL:SCH 1,"LINK:TIME?"', -224),
        ("FAUL:SCH 1,\"FAUL:SCH 2,'FAUL:EVE 0'\"", -224),
        ('FAUL:SCH 1,"FAUL:NOPE 1"', -113),
    ):
        ctl.send(bad.encode() + b"\n")
        assert ctl.error_code() == code, bad
    t = float(ctl.query("LINK:TIME?"))
    ctl.send(b'FAUL:SCH %.6f,"FAUL:EVE 0.25;:FAUL:DET2:DEAD ON"\n' % (t + 0.5))
    assert ctl.query("SYST:ERR?") == '0,"No error"'
    assert emu.link.get("eve_fraction") == 0.0
    emu.link.idle_until(emu.link.now_ps + 10**12)  # link time passes the scheduled moment
    assert emu.link.get("eve_fraction") == 0.25 and not emu.link.get("detector_on", 1)
    ctl.send(b"FAUL:EVE 0;:FAUL:DET2:DEAD OFF\n")
    assert ctl.query("SYST:ERR?") == '0,"No error"'
