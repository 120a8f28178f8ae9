"""Driver protocol tests: the exact bytes each driver writes and reads, without the emulator.

Each driver talks through real pyvisa-py to a scripted peer: a loopback TCP server thread (or a
pty for the serial switch) that expects exact bytes, answers scripted bytes, and fails on
anything else, including bytes the script did not ask for. The scripts follow the manuals and
``emulator/README.md``, not the emulator's code.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import tty
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from hil.instruments.attenuator import KeysightAttenuator
from hil.instruments.base import InstrumentError, InstrumentTimeout
from hil.instruments.control import EmulatorControl
from hil.instruments.detectors import DetectorUnit
from hil.instruments.powermeter import PM100
from hil.instruments.source import QKDSource
from hil.instruments.switch import OpticalSwitch
from hil.instruments.tagger import TimeTagger

OK = (b"SYST:ERR?\n", b'0,"No error"\n')  # the error check after a setter


@dataclass
class Step:
    expect: bytes  # bytes the driver must write next (b"" for none)
    reply: bytes = b""  # bytes the peer answers
    delay_s: float = 0.0  # wait before answering


class Peer:
    """A scripted instrument on a byte stream; ``problems`` lists every deviation."""

    def __init__(self, steps):
        self.steps = [s if isinstance(s, Step) else Step(*s) for s in steps]
        self.problems: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _recv_exact(self, n: int, timeout_s: float = 5.0) -> bytes:
        got = b""
        deadline = time.monotonic() + timeout_s
        while len(got) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                break
            chunk = self.recv(n - len(got))
            if not chunk:
                break
            got += chunk
        return got

    def _run(self) -> None:
        try:
            self.connect()
            for i, step in enumerate(self.steps):
                got = self._recv_exact(len(step.expect))
                if got != step.expect:
                    self.problems.append(f"step {i}: expected {step.expect!r}, got {got!r}")
                    return
                time.sleep(step.delay_s)
                if step.reply:
                    self.send(step.reply)
            extra = self._recv_exact(1, timeout_s=0.1)
            if extra:
                self.problems.append(f"unexpected bytes after the script: {extra!r}...")
        except OSError as exc:
            self.problems.append(f"peer: {exc}")

    def check(self) -> None:
        self._thread.join(10)
        assert not self._thread.is_alive(), "the script was not finished"
        assert self.problems == []


class TcpPeer(Peer):
    def __init__(self, steps):
        super().__init__(steps)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.resource = f"TCPIP::127.0.0.1::{self.listener.getsockname()[1]}::SOCKET"
        self._thread.start()

    def connect(self) -> None:
        self.listener.settimeout(5)
        self.conn, _ = self.listener.accept()
        self.fd = self.conn.fileno()
        self.recv, self.send = self.conn.recv, self.conn.sendall


class PtyPeer(Peer):
    def __init__(self, steps):
        super().__init__(steps)
        self.fd, slave = os.openpty()
        tty.setraw(slave)
        self._slave = slave
        self.resource = f"ASRL{os.ttyname(slave)}::INSTR"
        self._thread.start()

    def connect(self) -> None:
        self.recv = lambda n: os.read(self.fd, n)
        self.send = lambda b: os.write(self.fd, b)


@pytest.fixture()
def tcp():
    peers, drivers = [], []

    def make(driver_class, steps, **kw):
        peer = TcpPeer(steps)
        drv = driver_class(peer.resource, "dut", **kw)
        peers.append(peer)
        drivers.append(drv)
        return drv, peer

    yield make
    for d in drivers:
        d.close()
    for p in peers:
        p.check()


def nr3(x: float) -> bytes:
    return f"{x:+.8E}\n".encode()


# ----------------------------------------------------------------------------- attenuator


def test_attenuator_bytes(tcp):
    att, _ = tcp(
        KeysightAttenuator,
        [
            (b"INP1:ATT 10.0000DB\n",),
            OK,
            (b"INP1:ATT?\n", nr3(10.0)),
            (b"INP1:WAV 1550.0000NM\n",),
            OK,
            (b"INP1:WAV?\n", b"+1.55000000E-006\n"),  # Keysight answers in metres
            (b"INP1:ATT:SPE 0.500\n",),
            OK,
            (b"OUTP1:STAT 1\n",),
            OK,
            (b"OUTP1:STAT?\n", b"1\n"),
            (b"INP1:ATT? MAX\n", nr3(60.0)),
            (b"INP1:ATT 3.0000DB\n",),
            OK,
            (b"*OPC?\n", b"1\n"),
            (b"INP1:ATT MAX\n",),
            (b"OUTP1:STAT 0\n",),
            OK,
        ],
    )
    att.attenuation_db = 10
    assert att.attenuation_db == 10.0
    att.wavelength_m = 1.55e-6
    assert att.wavelength_m == 1.55e-6
    att.speed_db_per_s = 0.5
    att.output_enabled = True
    assert att.output_enabled is True
    assert att.max_attenuation_db() == 60.0
    att.set_attenuation_and_wait(3)
    att.safe_state()


@pytest.mark.parametrize(
    "name, value",
    [("attenuation_db", 61), ("attenuation_db", -0.1), ("attenuation_db", "5"),
     ("attenuation_db", True), ("attenuation_db", float("nan")), ("wavelength_m", 1550),
     ("output_enabled", 1), ("output_enabled", "off"), ("speed_db_per_s", 20)],
)  # fmt: skip
def test_attenuator_rejects_before_sending(tcp, name, value):
    att, _ = tcp(KeysightAttenuator, [])  # the peer fails on any byte
    with pytest.raises(ValueError, match=f"dut.{name}"):
        setattr(att, name, value)


def test_instrument_error_names_instrument_command_and_text(tcp):
    att, _ = tcp(
        KeysightAttenuator,
        [
            (b"INP1:ATT 50.0000DB\n",),
            (b"SYST:ERR?\n", b'-222,"Data out of range"\n'),
            (b"SYST:ERR?\n", b'-221,"Settings conflict"\n'),
            OK,
        ],
    )
    with pytest.raises(InstrumentError) as e:
        att.attenuation_db = 50
    assert e.value.instrument == "dut" and e.value.command == "INP1:ATT 50.0000DB"
    assert e.value.message == '-222,"Data out of range"; -221,"Settings conflict"'
    assert str(e.value).startswith("dut: 'INP1:ATT 50.0000DB' -> -222")


def test_error_check_can_be_switched_off(tcp):
    att, _ = tcp(KeysightAttenuator, [(b"INP1:ATT 1.0000DB\n",)], check_errors=False)
    att.attenuation_db = 1


def test_timeout_names_resource_and_the_late_reply_is_discarded(tcp):
    att, peer = tcp(
        KeysightAttenuator,
        [
            (b"INP1:ATT?\n", b""),  # no answer in time ...
            Step(b"", nr3(5.0), delay_s=0.5),  # ... it comes late
            (b"INP1:ATT?\n", nr3(7.0)),
        ],
        timeout_s=0.3,
    )
    with pytest.raises(InstrumentTimeout) as e:
        att.attenuation_db  # noqa: B018 - the query is the test
    assert e.value.instrument == "dut" and peer.resource in e.value.message
    time.sleep(0.4)  # the late reply arrives before the next query
    assert att.attenuation_db == 7.0


def test_unparsable_error_answer_is_reported(tcp):
    att, _ = tcp(KeysightAttenuator, [(b"INP1:OFFS 1.0000DB\n",), (b"SYST:ERR?\n", b"hello\n")])
    with pytest.raises(InstrumentError, match="SYST:ERR"):
        att.offset_db = 1


# ----------------------------------------------------------------------------- source


def test_source_bytes(tcp):
    idx = np.array([3, 5], dtype="<i8")
    answer = bytes([0, 1, 0, 2, 255, 1])  # bases, intensity classes, bits (255 = undisclosed)
    src, _ = tcp(
        QKDSource,
        [
            (b"SOUR:CLOC 1e+09\n",),
            OK,
            (b"SOUR:SEED 42\n",),
            OK,
            (b"SOUR:INT1 0.5\n",),
            (b"SOUR:INT2 0.1\n",),
            (b"SOUR:INT3 0.0002\n",),
            OK,
            (b"SOUR:INT1:PROB 0.7\n",),
            (b"SOUR:INT2:PROB 0.2\n",),
            (b"SOUR:INT3:PROB 0.1\n",),
            OK,
            (b"SIFT:QUER? #216" + idx.tobytes() + b"\n", b"#16" + answer + b"\n"),
            (b"OUTP 0\n",),
            OK,
            (b"OUTP?\n", b"0\n"),
        ],
    )
    src.clock_hz = 1e9
    src.seed = 42
    src.intensities = (0.5, 0.1, 2e-4)
    src.probabilities = (0.7, 0.2, 0.1)
    basis, intensity, bit = src.sift(idx)
    assert basis.tolist() == [0, 1] and intensity.tolist() == [0, 2] and bit.tolist() == [255, 1]
    src.safe_state()
    assert src.output_enabled is False
    with pytest.raises(ValueError, match="intensities"):
        src.intensities = (0.1, 0.5, 0.0)
    with pytest.raises(ValueError, match="probabilities"):
        src.probabilities = (0.7, 0.2, 0.2)


# ----------------------------------------------------------------------------- detectors


def test_detector_bytes(tcp):
    det, _ = tcp(
        DetectorUnit,
        [
            (b"DET2:EFF 0.25\n",),
            OK,
            (b"DET2:DEAD 5e-08\n",),
            OK,
            (b"DET4:TEMP:SETP -40\n",),
            OK,
            (b"DET1:RUN 0\n",),
            OK,
            (b"DET3:TEMP?\n", nr3(-39.5)),
            (b"COUN:INT 0.01\n",),
            OK,
            (b"COUN:DATA?\n", b"10,20,30,40\n"),
        ],
    )
    det.channels[1].efficiency = 0.25
    det.channels[1].dead_time_s = 50e-9
    det.channels[3].temperature_setpoint_c = -40
    det.channels[0].running = False
    assert det.channels[2].temperature_c == -39.5
    det.integration_s = 0.01
    assert det.counts() == [10, 20, 30, 40]
    with pytest.raises(ValueError, match="dut.detector1.efficiency"):
        det.channels[0].efficiency = 0.99
    with pytest.raises(ValueError, match="dut.integration_s"):
        det.integration_s = 100
    with pytest.raises(ValueError, match="running"):
        det.channels[0].running = "yes"


# ----------------------------------------------------------------------------- tagger


def test_tagger_bytes(tcp):
    ts = np.array([1000, 2500, 2600], dtype="<i8")
    ch = np.array([0, 1, 8], dtype=np.uint8)
    payload = ts.tobytes() + ch.tobytes()
    tg, _ = tcp(
        TimeTagger,
        [
            (b"INP3:ENAB 0\n",),
            OK,
            (b"INP3:DEL 1500.0PS\n",),
            OK,
            (b"ACQ:DUR 0.5\n",),
            OK,
            (b"ACQ:STAR\n",),
            OK,
            (b"FETC:TAGS? 3\n", b"#227" + payload + b"\n"),
            (b"ACQ:LOSS?\n", b"1\n"),
            (b"ACQ:STOP\n",),
        ],
    )
    tg.set_input(3, enabled=False, delay_s=1.5e-9)
    tg.start(0.5)
    got_ts, got_ch = tg.fetch(3)
    assert got_ts.dtype == np.int64 and got_ts.tolist() == [1000, 2500, 2600]
    assert got_ch.tolist() == [0, 1, 8]
    assert tg.data_lost() is True
    tg.stop()
    with pytest.raises(ValueError):
        tg.fetch(0)
    with pytest.raises(ValueError):
        tg.set_input(9, enabled=True)


def tag_block(ts, ch) -> bytes:
    """A FETC:TAGS? answer per emulator/README.md: #<n><len>, int64 LE, uint8, LF."""
    payload = np.asarray(ts, "<i8").tobytes() + np.asarray(ch, np.uint8).tobytes()
    return (
        b"#" + str(len(str(len(payload)))).encode() + str(len(payload)).encode() + payload + b"\n"
    )


def test_tagger_stream_bytes_and_drain_after_the_end(tcp, monkeypatch):
    """One fetch per chunk while tags come; the status only after an empty fetch; after a
    status other than RUNNING one more fetch picks up what arrived meanwhile; empty polls
    back off (2, 4 ms ...)."""
    import hil.instruments.tagger as tagger_module

    sleeps = []
    monkeypatch.setattr(tagger_module, "time", SimpleNamespace(sleep=sleeps.append))
    fetch = b"FETC:TAGS? 1000000\n"
    empty = b"#10\n"
    a = ([10, 20], [0, 1])
    b = ([30], [2])
    c = ([40, 41, 42], [3, 4, 8])
    tg, _ = tcp(
        TimeTagger,
        [
            (fetch, tag_block(*a)),
            (fetch, empty),
            (b"ACQ:STAT?\n", b"RUNNING\n"),
            (fetch, empty),
            (b"ACQ:STAT?\n", b"RUNNING\n"),
            (fetch, tag_block(*b)),
            (fetch, empty),
            (b"ACQ:STAT?\n", b"RUNNING\n"),
            (fetch, empty),
            (b"ACQ:STAT?\n", b"DONE\n"),
            (fetch, tag_block(*c)),  # came in between the empty fetch and the status
            (fetch, empty),
            (b"ACQ:STAT?\n", b"DONE\n"),
            (fetch, empty),
        ],
    )
    chunks = [(t.tolist(), c_.tolist()) for t, c_ in tg.stream(poll_s=0.002, max_poll_s=0.016)]
    assert chunks == [a, b, c]
    assert sleeps == [0.002, 0.004, 0.002]  # doubles while empty, resets after a chunk


def test_tagger_large_block_read_in_pieces(tcp):
    """A block of many read pieces, sent by the peer in two parts with a pause between."""
    from hil.instruments.base import READ_PIECE_BYTES

    n = 3 * READ_PIECE_BYTES // 9 + 5
    rng = np.random.default_rng(2)
    ts = np.cumsum(rng.integers(0, 1000, n)).astype("<i8")
    ch = rng.integers(0, 9, n).astype(np.uint8)
    block = tag_block(ts, ch)
    half = len(block) // 2
    tg, _ = tcp(
        TimeTagger,
        [
            Step(b"FETC:TAGS? 1000000\n", block[:half]),
            Step(b"", block[half:], delay_s=0.05),
        ],
    )
    got_ts, got_ch = tg.fetch()
    np.testing.assert_array_equal(got_ts, ts)
    np.testing.assert_array_equal(got_ch, ch)


def test_tagger_block_without_terminator_is_an_instrument_error(tcp):
    bad = tag_block([1, 2], [0, 1])[:-1] + b"X"
    tg, _ = tcp(TimeTagger, [(b"FETC:TAGS? 2\n", bad)])
    with pytest.raises(InstrumentError, match="terminator"):
        tg.fetch(2)


def test_tagger_short_block_times_out_naming_the_command(tcp):
    short = tag_block([1, 2, 3], [0, 1, 2])[:-6]
    tg, _ = tcp(TimeTagger, [(b"FETC:TAGS? 3\n", short)], timeout_s=0.3)
    with pytest.raises(InstrumentTimeout, match="FETC:TAGS"):
        tg.fetch(3)


def test_tagger_block_cut_by_a_closed_connection_is_reported_unreachable():
    """The peer closes the connection halfway through a block: the fetch fails at once as
    unreachable (connection lost), naming the command, instead of waiting for the timeout."""
    from hil.instruments.base import InstrumentUnreachable

    listener = socket.create_server(("127.0.0.1", 0))
    block = tag_block(np.arange(1000, dtype="<i8"), np.zeros(1000, np.uint8))

    def peer():
        conn, _ = listener.accept()
        with conn:
            got = b""
            while not got.endswith(b"\n"):
                got += conn.recv(100)
            assert got == b"FETC:TAGS? 1000\n"
            conn.sendall(block[: len(block) // 2])

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    tg = TimeTagger(f"TCPIP::127.0.0.1::{listener.getsockname()[1]}::SOCKET", "dut", timeout_s=30)
    try:
        t0 = time.monotonic()
        with pytest.raises(InstrumentUnreachable, match="FETC:TAGS"):
            tg.fetch(1000)
        assert time.monotonic() - t0 < 10  # reported when the connection closed
    finally:
        tg.close()
        thread.join(5)
        listener.close()


# ----------------------------------------------------------------------------- power meter


def test_powermeter_bytes(tcp):
    pm, _ = tcp(
        PM100,
        [
            (b"SENS:CORR:WAV 1310.000\n",),
            OK,
            (b"SENS:CORR:WAV?\n", nr3(1310.0)),
            (b"SENS:POW:UNIT DBM\n",),
            OK,
            (b"SENS:POW:UNIT?\n", b"DBM\n"),
            (b"MEAS:POW?\n", nr3(-30.0)),
        ],
    )
    pm.wavelength_m = 1.31e-6
    assert pm.wavelength_m == pytest.approx(1.31e-6)
    pm.unit = "DBM"
    assert pm.power_w() == pytest.approx(1e-6)
    with pytest.raises(ValueError):
        pm.unit = "dbm"  # strict: the exact spelling of the manual


# ----------------------------------------------------------------------------- control


def test_control_bytes(tcp):
    ctl, _ = tcp(
        EmulatorControl,
        [
            (b'FAUL:SCH 2,"FAUL:EVE 0.5"\n',),
            OK,
            (b"FAUL:LOSS:RAMP 3,0.5\n",),
            OK,
            (b"LINK:TIME?\n", nr3(1.25)),
        ],
    )
    ctl.eavesdropper(0.5, at_s=2)
    ctl.extra_loss(3, rate_db_per_s=0.5)
    assert ctl.link_time_s() == 1.25


# ----------------------------------------------------------------------------- switch


def test_switch_bytes_over_a_pty():
    peer = PtyPeer(
        [
            (b"S 2\n",),
            (b"S?\n", b"2\r\n"),
            (b"S?\n", b"2\r\n"),
            (b"I?\n", b"Thorlabs OSW12 v1\r\n"),
            (b"S 1\n",),
            (b"S?\n", b"1\r\n"),
        ]
    )
    sw = OpticalSwitch(peer.resource, "dut")
    try:
        sw.cut()
        assert sw.position == 2
        assert sw.idn == "Thorlabs OSW12 v1"
        sw.restore()
        with pytest.raises(ValueError):
            sw.position = 3
    finally:
        sw.close()
    peer.check()


def test_switch_position_that_does_not_read_back_is_an_instrument_error():
    peer = PtyPeer([(b"S 2\n",), (b"S?\n", b"1\r\n")])
    sw = OpticalSwitch(peer.resource, "dut")
    try:
        with pytest.raises(InstrumentError, match="position reads 1"):
            sw.position = 2
    finally:
        sw.close()
    peer.check()
