"""Single Quantum SNSPD system: the driver's JSON messages against a scripted TCP peer (no
emulator), the detectors role against the emulated system, and a plain TCP client's
``labelProps`` (issue 16, "Done when")."""

from __future__ import annotations

import json
import math
import socket
import threading

import pytest

from hil.emulator.server import Emulator
from hil.instruments.base import InstrumentError
from hil.instruments.singlequantum import SingleQuantum
from hil.roles import DetectorsDriver, missing_members

LABELS = {
    "NumberOfDetectors": 4,
    "InptMeasurementPeriod": 100,
    "BiasCurrent": [9.0, 9.0, 9.0, 9.0],
    "TriggerLevel": [150, 150, 150, 150],
    "DetectorEnable": True,
}


class ScriptedSystem:
    """A TCP peer answering requests from ``labels`` (``\\x17`` after each answer) and applying
    commands to them (``ignore``: a command that does not take); records every message."""

    def __init__(self, ignore: set[str] = frozenset()):
        self.labels = json.loads(json.dumps(LABELS))
        self.ignore = ignore
        self.messages: list[dict] = []
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(2)
        port = self.srv.getsockname()[1]
        self.resource = f"TCPIP::127.0.0.1::{port}::SOCKET,TCPIP::127.0.0.1::1::SOCKET"
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        conn, _ = self.srv.accept()
        dec, buf = json.JSONDecoder(), ""
        with conn:
            while data := conn.recv(65536):
                buf += data.decode()
                while buf:
                    try:
                        msg, end = dec.raw_decode(buf)
                    except ValueError:
                        break
                    buf = buf[end:]
                    self.messages.append(msg)
                    if "request" in msg:
                        conn.sendall(json.dumps(self.labels).encode() + b"\x17")
                    elif msg["command"] not in self.ignore:
                        self.labels[msg["label"]] = msg["value"]

    def close(self) -> None:
        self.srv.close()


def test_messages_on_the_wire():
    peer = ScriptedSystem()
    sq = SingleQuantum(peer.resource, timeout_s=2)
    try:
        sq.channels[2].efficiency = 0.2
        sq.integration_s = 0.25
        commands = [m for m in peer.messages if "command" in m]
        bias = 10.0 + 0.5 * math.log(0.2 / 0.7)  # the sigmoid curve inverted at 0.2
        assert commands == [
            {
                "command": "SetAllBiasCurrents",
                "label": "BiasCurrent",
                "value": [9.0, 9.0, round(bias, 6), 9.0],
            },
            {"command": "SetMeasurementPeriod", "label": "InptMeasurementPeriod", "value": 250},
        ]
        assert peer.messages[0] == {"request": "labelProps", "value": "None"}
        assert sq.channels[2].efficiency == pytest.approx(0.2, abs=1e-6)
        # a real system has no per-detector temperature: one line naming what is missing
        with pytest.raises(InstrumentError, match="no temperature set point per detector"):
            sq.channels[0].temperature_setpoint_c = -30.0
    finally:
        sq.close()
        peer.close()


def test_command_that_does_not_take_raises():
    peer = ScriptedSystem(ignore={"SetMeasurementPeriod"})
    sq = SingleQuantum(peer.resource, timeout_s=2)
    try:
        with pytest.raises(InstrumentError, match="InptMeasurementPeriod reads back 100"):
            sq.integration_s = 0.5
    finally:
        sq.close()
        peer.close()


def test_driver_serves_the_detectors_role():
    assert missing_members(SingleQuantum, DetectorsDriver) == []


@pytest.fixture(scope="module")
def emulator():
    emu = Emulator()
    res = emu.start()
    yield emu, res
    emu.stop()


def test_emulated_system(emulator):
    emu, _ = emulator
    sq = SingleQuantum(emu.vendor_resources["detectors:SingleQuantum"], timeout_s=5)
    try:
        for i, ch in enumerate(sq.channels):
            ch.efficiency = 0.1 + 0.05 * i
            ch.temperature_setpoint_c = -35.0
            ch.dead_time_s = 20e-9
        assert [round(e, 6) for e in emu.link.params.efficiency] == [0.1, 0.15, 0.2, 0.25]
        assert emu.link.params.dead_time_s == (20e-9,) * 4
        sq.integration_s = 0.01
        sq.channels[0].running = False
        assert sq.counts() == [0, 0, 0, 0]  # the system disables its detectors together
        sq.channels[0].running = True
        assert len(sq.counts()) == 4
    finally:
        sq.close()


def test_plain_tcp_label_props(emulator):
    """Done when: a plain TCP client gets the Single Quantum labelProps answer."""
    emu, _ = emulator
    host, port = emu.vendor_resources["detectors:SingleQuantum"].split(",")[0].split("::")[1:3]
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(json.dumps({"request": "labelProps", "value": "None"}).encode())
        buf = b""
        while not buf.endswith(b"\x17"):
            buf += s.recv(65536)
    labels = json.loads(buf[:-1])
    assert labels["NumberOfDetectors"] == 4
    assert len(labels["BiasCurrent"]) == 4 and isinstance(labels["DetectorEnable"], bool)
    assert "InptMeasurementPeriod" in labels and len(labels["TriggerLevel"]) == 4
