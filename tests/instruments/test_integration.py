"""Drivers against the emulator through pyvisa-py, and a plain pyvisa client (not the drivers) on
the emulated bench that ``Bench.open("emulated")`` starts in its own process."""

from __future__ import annotations

import numpy as np
import pytest
import pyvisa

from hil.bench import Bench
from hil.instruments.attenuator import KeysightAttenuator
from hil.instruments.base import InstrumentError
from hil.instruments.control import EmulatorControl
from hil.instruments.detectors import DetectorUnit
from hil.instruments.powermeter import PM100
from hil.instruments.source import QKDSource
from hil.instruments.switch import OpticalSwitch
from hil.instruments.tagger import TimeTagger

DRIVERS = {
    "source": QKDSource,
    "attenuator": KeysightAttenuator,
    "detectors": DetectorUnit,
    "tagger": TimeTagger,
    "powermeter": PM100,
    "control": EmulatorControl,
    "switch": OpticalSwitch,
}


@pytest.fixture(scope="module")
def drv(emu):
    opened = {role: cls(emu.resources[role], role) for role, cls in DRIVERS.items()}
    opened["control"].authenticate(emu.control_token)  # the control port wants its token
    yield opened
    for d in opened.values():
        d.close()


def test_every_driver_identifies_and_snapshots(drv):
    for role, d in drv.items():
        assert d.idn, role
        assert isinstance(d.settings(), dict), role
        if role != "switch":
            assert d.errors() == [], role


def test_attenuator_driver(emu, drv):
    att = drv["attenuator"]
    att.offset_db = 0
    att.speed_db_per_s = 12
    att.set_attenuation_and_wait(12.5)
    assert att.attenuation_db == 12.5 and emu.link.params.attenuation_db == 12.5
    att.wavelength_m = 1.31e-6
    assert att.wavelength_m == pytest.approx(1.31e-6)
    att.output_enabled = True
    assert att.output_enabled is True
    assert att.max_attenuation_db() == 60.0
    att.safe_state()
    att.wait()
    assert att.attenuation_db == 60.0 and att.output_enabled is False


def test_instrument_error_from_the_emulator(emu):
    att = KeysightAttenuator(emu.resources["attenuator"], "voa")
    att.channel = 2  # an empty mainframe slot
    try:
        with pytest.raises(InstrumentError) as e:
            att.attenuation_db = 5
        assert e.value.command == "INP2:ATT 5.0000DB"
        assert e.value.message.startswith('-241,"Hardware missing')
    finally:
        att.close()


def test_source_driver_and_sift(drv):
    src = drv["source"]
    src.clock_hz = 1.25e9
    src.seed = 2**63 - 1  # accepted (exact integer), write-only: never read back or recorded
    assert src.clock_hz == 1.25e9 and "seed" not in src.settings()
    src.intensities = (0.6, 0.2, 0.0)
    src.probabilities = (0.5, 0.3, 0.2)
    assert src.intensities == (0.6, 0.2, 0.0) and src.probabilities == (0.5, 0.3, 0.2)
    src.output_enabled = True
    basis, intensity, bit = src.sift(np.arange(5000))
    assert len(basis) == len(intensity) == len(bit) == 5000
    assert np.isin(bit[basis == 1], (0, 1)).all()
    src.safe_state()
    src.reset()
    assert src.output_enabled is False


def test_detector_driver(emu, drv):
    det = drv["detectors"]
    det.channels[2].efficiency = 0.3
    det.channels[2].temperature_setpoint_c = -35
    assert det.channels[2].efficiency == 0.3 and det.channels[2].temperature_c == -35
    assert emu.link.params.efficiency[2] == 0.3
    det.integration_s = 1e-3
    assert len(det.counts()) == 4
    det.reset()


def test_tagger_driver_streams_an_acquisition(emu, drv):
    src, att, tg = drv["source"], drv["attenuator"], drv["tagger"]
    src.output_enabled = True
    att.output_enabled = True
    att.set_attenuation_and_wait(10)
    tg.start(1e-3)
    chunks = list(tg.stream())
    ts = np.concatenate([c[0] for c in chunks])
    assert len(ts) > 100 and np.all(np.diff(ts) >= 0)
    assert tg.data_lost() is False
    src.safe_state()
    att.safe_state()


def test_powermeter_driver(drv):
    pm = drv["powermeter"]
    pm.unit = "DBM"
    dbm = pm.power
    pm.unit = "W"
    assert pm.power_w() == pytest.approx(1e-3 * 10 ** (dbm / 10), rel=1e-6)
    pm.wavelength_m = 1.55e-6
    assert pm.wavelength_m == pytest.approx(1.55e-6)


def test_control_driver(emu, drv):
    ctl = drv["control"]
    ctl.eavesdropper(0.25)
    assert float(ctl.parameter("eve_fraction")) == 0.25
    ctl.eavesdropper(0.0)


def test_switch_driver_over_asrl(emu, drv):
    sw = drv["switch"]
    sw.cut()
    assert sw.position == 2 and emu.link.params.link_connected is False
    sw.restore()
    assert emu.link.params.link_connected is True
    assert sw.round_trip_s(5) > 0


# ----------------------------------------------------------------------------- the emulated bench


@pytest.fixture(scope="module")
def bench():
    b = Bench.open("emulated")
    yield b
    b.close()


@pytest.fixture(scope="module")
def plain(bench):
    """A plain pyvisa client of its own on the bench's emulator."""
    rm = pyvisa.ResourceManager("@py")
    sessions = {}
    for role, resource in bench.emulator.resources.items():
        if role != "switch":
            sessions[role] = rm.open_resource(resource, read_termination="\n", timeout=10_000)
    yield sessions
    for s in sessions.values():
        s.close()


def test_round_trip_median_is_measured_for_every_instrument(bench):
    assert set(bench.latency_s) == set(bench.instruments)
    assert all(t > 0 for t in bench.latency_s.values()), bench.latency_s
    assert bench.snapshot()["control_plane_latency_s"] == bench.latency_s


def test_plain_client_identification_has_four_fields(plain):
    for role, s in plain.items():
        fields = s.query("*IDN?").split(",")
        assert len(fields) == 4 and all(f.strip() for f in fields), role


def error_text(s) -> tuple[int, str]:
    """SYST:ERR? as (code, standard text): the device detail after ';' is not standard."""
    code, _, text = s.query("SYST:ERR?").partition(",")
    return int(code), text.strip('"').split(";", 1)[0]


def test_plain_client_sees_standard_errors(plain):
    att = plain["attenuator"]
    att.write("*CLS")
    att.write("INP1:BOGUS 1")
    assert error_text(att) == (-113, "Undefined header")
    att.write("INP1:ATT 999")
    assert error_text(att) == (-222, "Data out of range")
    assert error_text(att) == (0, "No error")


def test_plain_client_forms_agree(plain):
    pm, att = plain["powermeter"], plain["attenuator"]
    assert len({pm.query(q) for q in ("MEAS:POW?", "MEASure:POWer?", "measure:power?")}) == 1
    forms = ("INP1:WAV?", "INPut1:WAVelength?", "inp:wav?", "input1:wavelength?")
    assert len({att.query(q) for q in forms}) == 1


def test_plain_client_overflow_ends_with_350(plain):
    det = plain["detectors"]
    det.write("*CLS")
    for i in range(40):
        det.write(f"NOT:A{i}:COMMAND")
    codes = []
    while (code := error_text(det)[0]) != 0:
        codes.append(code)
    # the emulator's queue depth is 16 (README): 15 errors kept, the 16th replaced by -350
    assert codes == [-113] * 15 + [-350]


def test_plain_client_parses_a_tag_fetch(bench, plain):
    bench.source.output_enabled = True
    bench.attenuator.output_enabled = True
    bench.attenuator.set_attenuation_and_wait(10)
    tg = plain["tagger"]
    tg.write("ACQ:DUR 1MS;:ACQ:STAR")
    while tg.query("ACQ:STAT?") == "RUNNING":
        pass
    raw = tg.query_binary_values(
        "FETC:TAGS? 100000", datatype="B", container=bytes, header_fmt="ieee"
    )
    # README layout: N int64 little-endian timestamps (ps), then N uint8 channels
    n, rest = divmod(len(raw), 9)
    assert rest == 0 and n > 100
    ts = np.frombuffer(raw, "<i8", count=n)
    ch = np.frombuffer(raw, np.uint8, offset=8 * n)
    assert np.all(np.diff(ts) >= 0) and set(np.unique(ch)) <= set(range(9))
    assert np.isin([1, 2, 3, 4], ch).any()
    bench.safe_state()
