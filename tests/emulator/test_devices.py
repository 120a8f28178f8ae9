"""The emulated instruments' command sets, over their real transports through pyvisa-py (and
pyserial for the switch), without the project's drivers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pyvisa
import serial

H_PLANCK = 6.62607015e-34  # J s, exact (SI 2019)
C_LIGHT = 299_792_458.0  # m/s, exact


@pytest.fixture(scope="module")
def rm():
    return pyvisa.ResourceManager("@py")


@pytest.fixture()
def open_(emu, rm):
    sessions = []

    def make(role: str):
        s = rm.open_resource(emu.resources[role], read_termination="\n", timeout=10_000)
        if role == "control":  # the control port wants the token of its ready file first
            s.write(f'SYST:AUTH "{emu.control_token}"')
        s.write("*RST;*CLS")
        sessions.append(s)
        return s

    yield make
    for s in sessions:
        assert s.query("SYST:ERR?") == '0,"No error"'  # each test leaves no unread error
        s.write("*RST")
        s.close()


def link_param(emu, name: str):
    return emu.link.get(name)


def test_attenuator_transition_takes_time_at_the_set_speed(emu, open_):
    att, ctl = open_("attenuator"), open_("control")
    att.write("INP1:ATT 0;:INP1:ATT:SPE 2")
    att.query("*OPC?")
    t0 = float(ctl.query("LINK:TIME?"))
    att.write("INP1:ATT 10DB")
    assert float(att.query("INP1:ATT?")) == 10.0  # the set value at once ...
    assert link_param(emu, "attenuation_db") == 0.0  # ... but the filter has not moved yet
    assert att.query("*OPC?") == "1"  # waits for the transition (link time skips ahead)
    t1 = float(ctl.query("LINK:TIME?"))
    assert t1 - t0 == pytest.approx(10 / 2, abs=1e-3)  # 10 dB at 2 dB/s
    assert link_param(emu, "attenuation_db") == 10.0
    assert float(att.query("INP1:ATT:SPE?")) == 2.0


def test_attenuator_offset_wavelength_shutter(emu, open_):
    att = open_("attenuator")
    att.write("INP1:ATT 5;:INP1:OFFS 3")
    att.query("*OPC?")
    # displayed attenuation = filter attenuation + offset; the filter stays at 5 dB
    assert float(att.query("INP1:ATT?")) == 8.0
    assert float(att.query("INP1:ATT? MIN")) == 3.0
    assert float(att.query("INP1:ATT? MAX")) == 63.0
    assert link_param(emu, "attenuation_db") == 5.0
    att.write("INP:WAV 1.31E-6")
    assert att.query("INP1:WAV?") == "+1.31000000E-06"  # answers in metres
    att.write("INP1:WAV 1550NM")
    assert float(att.query("INP1:WAV?")) == pytest.approx(1.55e-6)
    assert att.query("OUTP1:STAT?") == "0"  # *RST closes the shutter
    att.write("OUTP1:STAT ON")
    assert att.query("OUTP1?") == "1" and link_param(emu, "attenuator_shutter_open") is True
    att.write("OUTP1:STAT 0")
    att.query("*OPC?")  # the write has been executed
    assert link_param(emu, "attenuator_shutter_open") is False


def expected_power_w(emu, wavelength_m: float) -> float:
    # mean power of the pulse train: f * sum_k p_k mu_k photons per pulse, h c / lambda each,
    # plus the meter's 1 pW noise floor (README)
    p = emu.link.params
    photons = p.clock_hz * sum(pk * mk for pk, mk in zip(p.p_mu, p.mu, strict=True))
    return photons * H_PLANCK * C_LIGHT / wavelength_m + 1e-12


def test_powermeter_power_units_and_wavelength(emu, open_):
    pm, src = open_("powermeter"), open_("source")
    assert float(pm.query("MEAS:POW?")) == pytest.approx(1e-12)  # source off: noise floor
    src.write("OUTP ON")
    src.query("*OPC?")  # executed before another connection looks
    w = float(pm.query("MEAS:POW?"))
    assert w == pytest.approx(expected_power_w(emu, 1550e-9), rel=1e-7)
    pm.write("SENS:POW:UNIT DBM")
    assert pm.query("SENS:POW:UNIT?") == "DBM"
    assert float(pm.query("MEAS:POW?")) == pytest.approx(10 * math.log10(w / 1e-3), abs=1e-6)
    pm.write("SENS:POW:UNIT W;:SENS:CORR:WAV 1310")  # PM100: a bare wavelength is in nm
    assert float(pm.query("SENS:CORR:WAV?")) == 1310.0
    assert float(pm.query("READ?")) == pytest.approx(expected_power_w(emu, 1310e-9), rel=1e-7)
    assert float(pm.query("SENS:CORR:WAV? MIN")) == 400.0
    src.write("OUTP OFF")


def sift(src, idx: np.ndarray) -> np.ndarray:
    """The source's answers (3 x N: bases, classes, bits) for pulse indices ``idx``."""
    src.write_binary_values("SIFT:QUER? ", idx, datatype="q", is_big_endian=False)
    raw = src.read_binary_values(datatype="B", container=bytes, expect_termination=True)
    assert len(raw) == 3 * len(idx)
    return np.frombuffer(raw, np.uint8).reshape(3, len(idx))


def test_source_settings_and_sift_exchange(emu, open_):
    src, det = open_("source"), open_("detectors")
    src.write("SOUR:CLOC 1GHZ;SEED 7;:SIFT:DISC:FRAC 0.1")
    assert float(src.query("SOUR:CLOC?")) == 1e9
    src.write("SOUR:SEED?")  # write-only: the pattern seed regenerates every key bit
    assert src.query("SYST:ERR?").startswith("-113")
    src.write("OUTP ON")
    assert src.query("SIFT:BLOC?") == "1"
    det.write("COUN:INT 1MS")
    det.query("COUN:DATA?")  # 1 ms of link time: 1e6 pulses emitted
    n = 100_000
    idx = emu.link.generator.emitted_to - 400_000 + np.arange(n, dtype="<i8") * 3
    basis, intensity, bit = sift(src, idx)
    assert set(np.unique(basis)) <= {0, 1} and set(np.unique(intensity)) <= {0, 1, 2}
    assert np.isin(bit[basis == 1], (0, 1)).all()  # every X-basis bit is disclosed
    z_bits = bit[basis == 0]
    disclosed = np.count_nonzero(z_bits != 255)
    # Binomial(n_z, 0.1): 5 sigma band
    mean, sd = 0.1 * len(z_bits), math.sqrt(len(z_bits) * 0.1 * 0.9)
    assert abs(disclosed - mean) < 5 * sd
    # the same indices give the same answer, also after the block closed and the fraction
    # was raised: a pulse is answered from the settings it was emitted with
    src.write("SIFT:DISC:FRAC 0.1")  # the same value: not a change
    src.write("SIFT:DISC:FRAC 1")  # a change while the block is open
    assert src.query("SYST:ERR?").startswith('-221,"Settings conflict')
    src.write("OUTP OFF;:SIFT:DISC:FRAC 1")
    assert src.query("SIFT:BLOC?") == "0" and float(src.query("SIFT:DISC:FRAC?")) == 1.0
    assert np.array_equal(sift(src, idx[:1000]), np.stack([basis, intensity, bit])[:, :1000])
    # pulses not emitted yet tell nothing
    ahead = emu.link.generator.emitted_to + np.arange(10, dtype="<i8")
    assert (sift(src, ahead) == 255).all()


def test_source_rejects_bad_intensities_and_running_changes(open_):
    src = open_("source")
    src.write("SOUR:INT2 0.6")  # decoy above signal
    src.write("OUTP ON")
    src.query("*OPC?")  # executed before another connection looks
    assert src.query("SYST:ERR?").startswith('-221,"Settings conflict')
    src.write("*RST;OUTP ON")
    src.write("SOUR:SEED 3")
    assert src.query("SYST:ERR?").startswith('-221,"Settings conflict')
    src.write("OUTP OFF")


def test_detectors_settings_and_counters(emu, open_):
    det = open_("detectors")
    det.write("DET2:EFF 0.3;:DET2:DEAD 50NS;:DET2:TEMP:SETP -40CEL;:DET2:RUN OFF")
    assert float(det.query("DET2:EFF?")) == 0.3
    assert float(det.query("DET2:DEAD?")) == pytest.approx(50e-9)
    assert float(det.query("DET2:TEMP:SETP?")) == -40.0
    assert det.query("DET2:RUN?") == "0" and float(det.query("DET2:DARK?")) == 0.0
    assert emu.link.params.efficiency[1] == 0.3 and emu.link.params.detector_on[1] is False
    det.write("DET5:EFF 0.1")
    assert det.query("SYST:ERR?").startswith("-114")
    det.write("COUN:INT 1MS")
    counts = [int(x) for x in det.query("COUN:DATA?").split(",")]
    assert len(counts) == 4 and counts[1] == 0 and all(c >= 0 for c in counts)


def fetch_tags(tg, max_tags: int):
    raw = tg.query_binary_values(
        f"FETC:TAGS? {max_tags}", datatype="B", container=bytes, expect_termination=True
    )
    n = len(raw) // 9
    assert len(raw) == 9 * n
    return np.frombuffer(raw, "<i8", count=n), np.frombuffer(raw, np.uint8, offset=8 * n)


def test_tagger_fetches_bounded_blocks_in_time_order(emu, open_):
    tg, att, src = open_("tagger"), open_("attenuator"), open_("source")
    att.write("INP1:ATT 10;:OUTP1:STAT ON")
    att.query("*OPC?")
    src.write("OUTP ON")
    src.query("*OPC?")  # executed before another connection looks
    tg.write("ACQ:DUR 2MS;:ACQ:STAR")
    while tg.query("ACQ:STAT?") == "RUNNING":
        pass
    total = int(tg.query("FETC:COUN?"))
    assert total > 1000, "the default link gives about 1.5 Mcounts/s"
    blocks = []
    while True:
        ts, ch = fetch_tags(tg, 1000)
        if not len(ts):
            break
        assert len(ts) <= 1000
        blocks.append((ts, ch))
    ts = np.concatenate([b[0] for b in blocks])
    ch = np.concatenate([b[1] for b in blocks])
    assert len(ts) == total and int(tg.query("FETC:COUN?")) == 0
    assert np.all(np.diff(ts) >= 0) and ch.max() <= 8
    assert tg.query("ACQ:LOSS?") == "0"
    src.write("OUTP OFF")


def test_tagger_sets_the_loss_flag_when_its_buffer_overflows(emu, open_):
    tg, att, src = open_("tagger"), open_("attenuator"), open_("source")
    att.write("INP1:ATT 0;:OUTP1:STAT ON")
    att.query("*OPC?")
    src.write("OUTP ON")
    src.query("*OPC?")  # executed before another connection looks
    tagger = emu.devices["tagger"]
    tagger.BUFFER_TAGS = 500  # a tiny on-board memory (instance attribute, this test only)
    try:
        tg.write("ACQ:DUR 5MS;PACE 1;:ACQ:STAR")  # paced: the tagger cannot hold the data back
        while tg.query("ACQ:STAT?") == "RUNNING":
            pass
        assert tg.query("ACQ:LOSS?") == "1"
        assert int(tg.query("FETC:COUN?")) <= 500
    finally:
        del tagger.BUFFER_TAGS
        src.write("OUTP OFF")
    tg.write("*RST")
    assert tg.query("ACQ:LOSS?") == "0"


def test_tagger_inputs(open_):
    tg = open_("tagger")
    tg.write("INP3:THR -250MV;:INP3:DEL 1.5NS;:INP3:ENAB OFF")
    assert float(tg.query("INP3:THR?")) == -0.25
    assert float(tg.query("INP3:DEL?")) == pytest.approx(1.5e-9)
    assert tg.query("INP3:ENAB?") == "0"
    assert float(tg.query("DEV:RES?")) > 0


def test_switch_through_pyvisa_asrl(emu, rm):
    sw = rm.open_resource(
        emu.resources["switch"], read_termination="\r\n", write_termination="\n", timeout=5000
    )
    try:
        assert sw.query("S?") == "1"
        sw.write("S 2")
        assert sw.query("S?") == "2" and emu.link.params.link_connected is False
        sw.write("S 1")
        assert sw.query("S?") == "1" and emu.link.params.link_connected is True
        assert sw.query("FOO") == "CMD_NOT_DEFINED"
        assert "OSW" in sw.query("I?")
    finally:
        sw.close()


def test_switch_through_plain_pyserial(emu):
    port = emu.resources["switch"][len("ASRL") : -len("::INSTR")]
    with serial.Serial(port, 115200, timeout=5) as ser:
        ser.write(b"S 2\n")
        ser.write(b"S?\n")
        assert ser.readline() == b"2\r\n"
        ser.write(b"s 1\r\nS?\n")  # lower case and CR LF are accepted
        assert ser.readline() == b"1\r\n"
        assert emu.link.params.link_connected is True


# -- the tagger's fetch answer in pieces (server fast path), in process ------------------------


def _buffered_tagger(pieces):
    """A Tagger on its own link with ``pieces`` [(ts, ch), ...] in its buffer, as the
    acquisition thread leaves them."""
    from hil.emulator.devices import Tagger
    from hil.emulator.link import Link

    tagger = Tagger(Link())
    with tagger._room:
        for ts, ch in pieces:
            tagger._append(np.asarray(ts, np.int64), np.asarray(ch, np.uint8))
    return tagger


def _expected_block(ts, ch) -> bytes:
    """The README's record layout, built independently: #<n><len>, int64 LE, uint8, LF."""
    payload = np.asarray(ts, "<i8").tobytes() + np.asarray(ch, np.uint8).tobytes()
    length = str(len(payload))
    return b"#" + str(len(length)).encode() + length.encode() + payload + b"\n"


def _pieces(seed=3, sizes=(5, 1, 7, 4)):
    rng = np.random.default_rng(seed)
    t, out = 0, []
    for n in sizes:
        ts = t + np.cumsum(rng.integers(1, 1000, n))
        t = int(ts[-1])
        out.append((ts, rng.integers(0, 5, n)))
    return out


@pytest.mark.parametrize(
    "message, n",
    [
        (b"FETC:TAGS? 9", 9),
        (b"fetch:tags? 100", 17),  # more asked than buffered: all of it
        (b":FETCh:TAGS?", 17),  # default: up to 1 000 000
        (b"  FETC:TAGS?   3 ", 3),
        (b"FETC:TAGS? 0000012", 12),
    ],
)
def test_tagger_fetch_in_pieces_is_the_documented_block(message, n):
    pieces = _pieces()
    ts = np.concatenate([p[0] for p in pieces])
    ch = np.concatenate([p[1] for p in pieces])
    tagger = _buffered_tagger(pieces)
    parts = tagger.execute_parts(message)
    assert len(parts) > 3  # header, several arrays, terminator: no joined copy
    got = b"".join(memoryview(p).cast("B") for p in parts)
    assert got == _expected_block(ts[:n], ch[:n])
    # the rest stays buffered, in order, for the generic path
    rest = tagger.execute(b"FETC:TAGS? 1000000")
    assert rest == _expected_block(ts[n:], ch[n:])
    assert tagger.execute(b"SYST:ERR?") == b'0,"No error"\n'


@pytest.mark.parametrize(
    "message, reply_start, error",
    [
        (b"FETC:TAGS? 0", None, b"-222"),  # out of range: the generic parser's error
        (b"FETC:TAGS? 2000000", None, b"-222"),
        (b"FETC:TAGS? 2;:FETC:COUN?", b"#218", None),  # compound: generic path, same block
        (b"FETC:TAGS? 1E1", b"#290", None),  # other number forms: generic path
    ],
)
def test_tagger_fetch_other_forms_take_the_generic_path(message, reply_start, error):
    tagger = _buffered_tagger(_pieces())
    parts = tagger.execute_parts(message)
    if reply_start is None:
        assert parts is None
    else:
        assert len(parts) == 1 and bytes(parts[0]).startswith(reply_start)
    err = tagger.execute(b"SYST:ERR?")
    assert err.startswith(error) if error else err == b'0,"No error"\n'


def test_tagger_fetch_in_pieces_restores_time_order_after_a_marker():
    # a marker placed between chunks at a time before the end of the buffer
    pieces = [(np.array([10, 20, 30]), np.array([1, 2, 3])), (np.array([25]), np.array([8]))]
    pieces.append((np.array([40, 50]), np.array([0, 4])))
    tagger = _buffered_tagger(pieces)
    assert tagger._unsorted
    got = b"".join(memoryview(p).cast("B") for p in tagger.execute_parts(b"FETC:TAGS?"))
    assert got == _expected_block([10, 20, 25, 30, 40, 50], [1, 2, 8, 3, 0, 4])


def test_scatter_send_delivers_every_byte_through_partial_sends():
    """More buffers than one sendmsg takes (IOV_MAX) and more bytes than the socket buffers
    hold, so sendmsg returns partial counts that end inside a buffer."""
    import socket
    import threading

    from hil.emulator.server import IOV_MAX, _send_parts

    rng = np.random.default_rng(9)
    parts = [b"#head"]
    parts += [rng.integers(0, 2**62, int(k)) for k in rng.integers(0, 50, IOV_MAX + 300)]
    parts += [rng.integers(0, 2**62, 600_000), b"", rng.integers(0, 255, 10, dtype=np.uint8)]
    expected = b"".join(memoryview(p).cast("B") for p in parts)
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    received = bytearray()

    def reader():
        while len(received) < len(expected):
            chunk = b.recv(70_001)
            if not chunk:
                return
            received.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    try:
        _send_parts(a, parts)
    finally:
        t.join(10)
        a.close()
        b.close()
    assert bytes(received) == expected
