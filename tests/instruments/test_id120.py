"""ID Quantique ID120: the driver's SCPI lines against a scripted peer (no emulator), the
detectors role against the emulated ID120s, and a plain pyvisa client (issue 16, "Done when")."""

from __future__ import annotations

import socket
import threading

import pytest
import pyvisa

from hil.emulator.server import Emulator
from hil.instruments.id120 import ID120, ID120Detectors
from hil.roles import DetectorsDriver, driver_roles, missing_members


class ScriptedScpi:
    """A raw-socket SCPI peer: records each line; answers queries from ``answers``."""

    def __init__(self, answers: dict[str, str]):
        self.answers = {"SYST:ERR?": '0,"No error"', **answers}
        self.lines: list[str] = []
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.resource = f"TCPIP::127.0.0.1::{self.srv.getsockname()[1]}::SOCKET"
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        conn, _ = self.srv.accept()
        buf = b""
        with conn:
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode().strip()
                    self.lines.append(text)
                    if text.endswith("?"):
                        conn.sendall(self.answers[text].encode() + b"\n")

    def close(self) -> None:
        self.srv.close()


def test_id120_lines_in_its_own_units():
    peer = ScriptedScpi({"BIAS:VOLTAGE?": "302363888", "REG:MEASURED_TEMP?": "-29875"})
    d = ID120(peer.resource, "det", timeout_s=2)
    try:
        d.efficiency = 0.2
        d.dead_time_s = 50e-9
        d.temperature_setpoint_c = -30.0
        d.integration_s = 0.1
        d.running = True
        assert d.temperature_c == pytest.approx(-29.875)
        # the bias the curve gives for 0.2 reads back as 0.2 (to the uV rounding)
        assert d.efficiency == pytest.approx(0.2, abs=1e-6)
        setters = [ln for ln in peer.lines if not ln.endswith("?")]
        assert setters == [
            "BIAS:VOLTAGE 302363888",
            "DEADTIME:TIME 0.05",
            "REG:TEMP_SET_POINT -30000",
            "COUNTERS:INTEGRATION_TIME 100",
            "REG:RUN ON",
        ]
        with pytest.raises(ValueError):
            d.efficiency = 0.99  # beyond the curve's reach: refused before anything is sent
    finally:
        d.close()
        peer.close()


def test_id120_detectors_serve_the_role():
    assert missing_members(ID120Detectors, DetectorsDriver) == []
    assert driver_roles("ID120") == ("detectors",)
    with pytest.raises(ValueError, match="four ID120 resources"):
        ID120Detectors("TCPIP::127.0.0.1::1::SOCKET")


@pytest.fixture(scope="module")
def emulator():
    emu = Emulator()
    res = emu.start()
    yield emu, res
    emu.stop()


def test_emulated_id120s_drive_the_link(emulator):
    emu, _ = emulator
    dets = ID120Detectors(emu.vendor_resources["detectors:ID120"], timeout_s=10)
    try:
        for i, ch in enumerate(dets.channels):
            ch.efficiency = 0.1 + 0.05 * i
            ch.temperature_setpoint_c = -40.0 + i
        assert [round(e, 6) for e in emu.link.params.efficiency] == [0.1, 0.15, 0.2, 0.25]
        assert emu.link.params.temperature_c == (-40.0, -39.0, -38.0, -37.0)
        dets.integration_s = 0.01
        dets.channels[3].running = False
        counts = dets.counts()
        assert counts[3] == 0 and len(counts) == 4
        dets.channels[3].running = True
        assert set(dets.settings()) == {"integration_s", "H", "V", "D", "A"}
    finally:
        dets.close()


def test_plain_pyvisa_client(emulator):
    """Done when: a plain pyvisa client sees the ID120's SCPI answers."""
    emu, _ = emulator
    rm = pyvisa.ResourceManager("@py")
    inst = rm.open_resource(
        emu.vendor_resources["detectors:ID120"].split(",")[0],
        read_termination="\n",
        write_termination="\n",
    )
    try:
        inst.timeout = 5000
        assert inst.query("*IDN?").startswith("IDQ,ID120")
        inst.write("DEADTIME:TIME 0.1")
        assert float(inst.query("DEADTIME:TIME?")) == 0.1
        inst.write("REG:TEMP_SET_POINT -25000")
        assert inst.query("REG:MEASURED_TEMP?") == "-25000"
        assert inst.query("REG:STATE?") in ("RUNNING", "STOPPED")
        inst.write("BIAS:VOLTAGE 1")  # below breakdown: refused, in the error queue
        assert inst.query("SYST:ERR?").startswith("-222,")
    finally:
        inst.close()  # not rm.close(): pyvisa shares one manager per process with the drivers
