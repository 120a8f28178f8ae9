"""Single Quantum Eos/Atlas SNSPD system personality: JSON over TCP on the same link.

Control port (the vendor's 12000): each request is one JSON object, e.g.
``{"request": "labelProps", "value": "None"}``, ``{"request": "BiasCurrent"}``; each answer is
a JSON document followed by ``\\x17``. Commands (``{"command": ..., "label": ..., "value": ...}``:
``SetMeasurementPeriod`` (ms), ``SetAllBiasCurrents`` (uA, one per detector),
``SetAllTriggerLevels`` (mV), ``DetectorEnable`` (bool)) get no answer, as with the vendor's
client; a client reads the labels back to see them applied. A request it cannot read is
answered ``{"error": "..."}``.

Counts port (the vendor's 12345): while a client is connected, one line
``unix_time,c1,c2,c3,c4\\n`` per measurement period: the detections of that period of link time
(the link advances by it; lines are paced at one per period of wall time). No line is made
while the tagger acquires.

Emulator model and emulator-only labels (absent from the real system): detector j drives the
link's detector j (H, V, D, A); its efficiency follows the bias current as a sigmoid,
eta = ETA_MAX / (1 + exp(-(I - I_HALF) / I_WIDTH)) (the saturating plateau of an SNSPD's
detection efficiency with bias, Marsili et al., Nat. Photonics 7, 210 (2013)).
``EmulatedDeadTime`` (s), ``EmulatedTemperature`` (degC, measured) and
``EmulatedTemperatureSetpoint`` (degC) expose the link's dead time and detector temperatures
(the physics the other personalities share), settable with the commands ``SetEmulatedDeadTime``
and ``SetEmulatedTemperatures`` (one value per detector).
"""

from __future__ import annotations

import json
import math
import select
import socket
import socketserver
import threading
import time

import numpy as np

from .devices import N_TAGGER_CHANNELS
from .link import PS, Link

N_DETECTORS = 4
ETA_MAX = 0.9
I_HALF_UA = 10.0
I_WIDTH_UA = 0.5
MAX_REQUEST_BYTES = 64 * 1024
END = b"\x17"


def efficiency_of_current(i_ua: float) -> float:
    return ETA_MAX / (1.0 + math.exp(-(i_ua - I_HALF_UA) / I_WIDTH_UA))


def current_for(eta: float) -> float:
    return I_HALF_UA + I_WIDTH_UA * math.log(eta / (ETA_MAX - eta))


class SnspdSystem:
    """The system's labels over the link, and its request handling."""

    def __init__(self, link: Link, tagger):
        from .physics import LinkParams

        self.link, self.tagger = link, tagger
        self.lock = threading.Lock()
        d = LinkParams()
        self.period_ms = 100
        self.bias_ua = [round(current_for(e), 6) for e in d.efficiency]
        self.trigger_mv = [150.0] * N_DETECTORS
        self.enabled = True
        self.setpoint_c = list(d.temperature_c)

    def labels(self) -> dict:
        p = self.link.params
        return {
            "NumberOfDetectors": N_DETECTORS,
            "InptMeasurementPeriod": self.period_ms,
            "BiasCurrent": list(self.bias_ua),
            "TriggerLevel": list(self.trigger_mv),
            "DetectorEnable": self.enabled,
            "BiasVoltage": [round(i * 0.1, 4) for i in self.bias_ua],  # a 100 kOhm bias resistor
            "EmulatedDeadTime": [float(x) for x in p.dead_time_s],
            "EmulatedTemperature": [float(x) for x in p.temperature_c],
            "EmulatedTemperatureSetpoint": list(self.setpoint_c),
        }

    def handle(self, raw: bytes) -> bytes | None:
        try:
            msg = json.loads(raw)
            if not isinstance(msg, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return json.dumps({"error": f"unreadable request: {exc}"}).encode() + END
        with self.lock:
            if "request" in msg:
                labels = self.labels()
                name = msg["request"]
                if name == "labelProps":
                    return json.dumps(labels).encode() + END
                if name in labels:
                    return json.dumps({name: labels[name]}).encode() + END
                return json.dumps({"error": f"unknown request {name!r}"}).encode() + END
            try:
                self._command(msg.get("command"), msg.get("value"))
            except (TypeError, ValueError) as exc:
                # the real system answers no command; a wrong one is visible in the labels
                self.last_error = str(exc)
            return None

    def _command(self, name, value) -> None:
        n = N_DETECTORS
        if name == "SetMeasurementPeriod":
            if not (isinstance(value, (int, float)) and 1 <= value <= 60000):
                raise ValueError("period in ms, 1..60000")
            self.period_ms = int(value)
        elif name == "SetAllBiasCurrents":
            values = _floats(value, n, 0.0, 30.0)
            etas = [efficiency_of_current(i) for i in values]
            if min(etas) < 0.01 or max(etas) > 0.95:
                raise ValueError("bias outside the emulated efficiency range")
            self.bias_ua = values
            for j, e in enumerate(etas):
                self.link.set("efficiency", e, j)
        elif name == "SetAllTriggerLevels":
            self.trigger_mv = _floats(value, n, 0.0, 2000.0)
        elif name == "DetectorEnable":
            if not isinstance(value, bool):
                raise ValueError("DetectorEnable takes true or false")
            self.enabled = value
            for j in range(n):
                self.link.set("detector_on", value, j)
        elif name == "SetEmulatedDeadTime":
            for j, v in enumerate(_floats(value, n, 1e-9, 1e-4)):
                self.link.set("dead_time_s", v, j)
        elif name == "SetEmulatedTemperatures":
            values = _floats(value, n, -60.0, 25.0)
            self.setpoint_c = values
            for j, v in enumerate(values):
                self.link.set("temperature_c", v, j)  # ideal regulator
        else:
            raise ValueError(f"unknown command {name!r}")

    def count_period(self) -> list[int] | None:
        """Detections per detector over one period of link time (None while acquiring)."""
        if getattr(self.link, "acquiring", False):
            return None
        t_stop = self.link.now_ps + self.period_ms * PS // 1000
        counts = np.zeros(N_DETECTORS, np.int64)
        while self.link.now_ps < t_stop:
            _, ch = self.link.step(t_stop)
            counts += np.bincount(ch, minlength=N_TAGGER_CHANNELS)[1 : 1 + N_DETECTORS]
        return [int(c) for c in counts]


def _floats(value, n: int, lo: float, hi: float) -> list[float]:
    if not (isinstance(value, list) and len(value) == n):
        raise ValueError(f"a list of {n} numbers")
    out = [float(v) for v in value]
    if not all(lo <= v <= hi for v in out):
        raise ValueError(f"values in {lo:g}..{hi:g}")
    return out


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Control(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        system: SnspdSystem = self.server.system
        decoder = json.JSONDecoder()
        buf = ""
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data.decode("utf-8", "replace")
            if len(buf) > MAX_REQUEST_BYTES:
                buf = ""  # a request this long is refused without being parsed
                self.request.sendall(b'{"error": "request too long"}' + END)
                continue
            while buf.strip():
                try:
                    obj, end = decoder.raw_decode(buf.lstrip())
                except ValueError:
                    break  # incomplete: wait for more
                buf = buf.lstrip()[end:]
                reply = system.handle(json.dumps(obj).encode())
                if reply is not None:
                    self.request.sendall(reply)


class _Counts(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        system: SnspdSystem = self.server.system
        stop: threading.Event = self.server.stop_event
        sock: socket.socket = self.request
        while not stop.is_set():
            if _peer_closed(sock):  # counting advances the link: never for nobody
                return
            t0 = time.monotonic()
            counts = system.count_period()
            if counts is not None:
                line = f"{time.time():.3f}," + ",".join(map(str, counts)) + "\n"
                try:
                    sock.sendall(line.encode())
                except OSError:
                    return
            left = system.period_ms / 1000 - (time.monotonic() - t0)
            if stop.wait(max(left, 0.0)):
                return


def _peer_closed(sock: socket.socket) -> bool:
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class SnspdServices:
    def __init__(self, link: Link, tagger, host: str = "127.0.0.1"):
        self.system = SnspdSystem(link, tagger)
        self.host = host
        self.stop_event = threading.Event()
        self._servers: list[_Server] = []

    def start(self) -> dict[str, str]:
        ports = []
        for handler in (_Control, _Counts):
            srv = _Server((self.host, 0), handler)
            srv.system = self.system
            srv.stop_event = self.stop_event
            threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
            self._servers.append(srv)
            ports.append(srv.server_address[1])
        return {
            "detectors:SingleQuantum": f"TCPIP::{self.host}::{ports[0]}::SOCKET"
            f",TCPIP::{self.host}::{ports[1]}::SOCKET"
        }

    def stop(self) -> None:
        self.stop_event.set()
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
