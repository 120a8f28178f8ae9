"""Single Quantum Eos / Atlas SNSPD system driver (detectors role): JSON over TCP.

Resource: the control port and the counts port as two raw-socket resources joined by a comma,
``TCPIP::<ip>::12000::SOCKET,TCPIP::<ip>::12345::SOCKET``. Requests
(``{"request": "labelProps", "value": "None"}``) are answered with JSON ending in ``\\x17``;
commands (``SetAllBiasCurrents``, ``SetMeasurementPeriod``, ``DetectorEnable``, ...) are not
answered, so every setter reads the labels back and raises if the value did not take. Counts
come on the counts port as ``unix_time,c1,c2,...`` lines, one per measurement period: the
integration time is the measurement period.

Efficiency is set through the bias current along the system's efficiency-versus-bias curve,
eta = ETA_MAX / (1 + exp(-(I - I_HALF) / I_WIDTH)); a lab sets the three from its system's
calibration (a subclass registered under its own name); the defaults are the emulated system's.
Dead time and temperature: an SNSPD's recovery time and its cryostat are not set per detector;
the emulated system exposes the shared link's through emulator-only labels (``Emulated...``),
and on a real system these properties raise a one-line error naming what is missing.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time

from .base import (
    InstrumentError,
    InstrumentTimeout,
    InstrumentUnreachable,
    ThreadDeadlines,
    strict_range,
)

END = b"\x17"
WAIT_SLICE_S = 0.2


def _host_port(resource: str) -> tuple[str, int]:
    parts = resource.strip().split("::")
    if len(parts) != 4 or not parts[0].upper().startswith("TCPIP") or parts[3] != "SOCKET":
        raise ValueError(f"{resource!r} is not TCPIP::<host>::<port>::SOCKET")
    return parts[1], int(parts[2])


class _Detector:
    """Detector ``j`` of the system (the detectors role's ``channels[j]``)."""

    def __init__(self, system: SingleQuantum, j: int):
        self.system, self.j = system, j

    def _label(self, name: str):
        return self.system.label(name)[self.j]

    def _set_all(self, command: str, label: str, value, index_value) -> None:
        values = list(self.system.label(label))
        values[self.j] = index_value
        self.system.command(command, label, values)

    @property
    def efficiency(self) -> float:
        s = self.system
        i = self._label("BiasCurrent")
        return s.ETA_MAX / (1 + math.exp(-(i - s.I_HALF_UA) / s.I_WIDTH_UA))

    @efficiency.setter
    def efficiency(self, eta: float) -> None:
        s = self.system
        strict_range(eta, (0.01, 0.95 * s.ETA_MAX))
        i = s.I_HALF_UA + s.I_WIDTH_UA * math.log(eta / (s.ETA_MAX - eta))
        self._set_all("SetAllBiasCurrents", "BiasCurrent", None, round(i, 6))

    @property
    def dead_time_s(self) -> float:
        return float(self._label(self.system.need("EmulatedDeadTime", "dead time")))

    @dead_time_s.setter
    def dead_time_s(self, v: float) -> None:
        strict_range(v, (1e-9, 1e-4))
        label = self.system.need("EmulatedDeadTime", "dead time")
        self._set_all("SetEmulatedDeadTime", label, None, float(v))

    @property
    def temperature_setpoint_c(self) -> float:
        label = self.system.need("EmulatedTemperatureSetpoint", "temperature set point")
        return float(self._label(label))

    @temperature_setpoint_c.setter
    def temperature_setpoint_c(self, v: float) -> None:
        strict_range(v, (-60.0, 25.0))
        label = self.system.need("EmulatedTemperatureSetpoint", "temperature set point")
        self._set_all("SetEmulatedTemperatures", label, None, float(v))

    @property
    def temperature_c(self) -> float:
        return float(self._label(self.system.need("EmulatedTemperature", "temperature")))

    @property
    def running(self) -> bool:
        return bool(self.system.label("DetectorEnable"))

    @running.setter
    def running(self, on: bool) -> None:
        # the system enables its detectors together: any detector armed arms them all
        self.system.command("DetectorEnable", "DetectorEnable", bool(on))


class SingleQuantum(ThreadDeadlines):
    """Single Quantum SNSPD system (see the module docstring)."""

    roles = ("detectors",)
    name: str
    resource_name: str
    channels: list
    ETA_MAX = 0.9
    I_HALF_UA = 10.0
    I_WIDTH_UA = 0.5

    def __init__(self, resource: str, name: str | None = None, *, timeout_s: float = 5.0, **kw):
        self.name = name or "detectors"
        self.resource_name = resource
        parts = resource.split(",")
        if len(parts) != 2:
            raise ValueError(
                f"{resource!r}: name the control and counts ports, "
                "TCPIP::<ip>::12000::SOCKET,TCPIP::<ip>::12345::SOCKET"
            )
        self.control_addr = _host_port(parts[0])
        self.counts_addr = _host_port(parts[1])
        self._timeout_s = float(timeout_s)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._lost: str | None = None
        self._buf = b""
        self.sock = self._connect(self.control_addr, "open")
        self._labels: dict | None = None
        n = int(self.labels()["NumberOfDetectors"])
        self.channels = [_Detector(self, j) for j in range(min(n, 4))]

    # -- transport -------------------------------------------------------------------------
    def _connect(self, addr: tuple[str, int], what: str) -> socket.socket:
        try:
            return socket.create_connection(addr, timeout=self._timeout_s)
        except OSError as exc:
            cause = f"{addr[0]}:{addr[1]}: {exc.strerror or exc}"
            raise InstrumentUnreachable(self.name, what, cause, cause) from None

    def _end(self) -> float:
        return self._until(time.monotonic() + self._timeout_s)

    def _send(self, msg: dict, what: str) -> None:
        if self._lost:
            raise InstrumentUnreachable(self.name, what, self._lost, self._lost)
        try:
            self.sock.sendall(json.dumps(msg).encode())
        except OSError as exc:
            self._lost = f"connection lost: {exc.strerror or exc}"
            raise InstrumentUnreachable(self.name, what, self._lost, self._lost) from None

    def request(self, name: str, value: str | None = None) -> dict:
        """One request; its JSON answer (read up to ``\\x17`` within the timeout)."""
        msg = {"request": name} if value is None else {"request": name, "value": value}
        what = json.dumps(msg)
        with self._lock:
            self._send(msg, what)
            end = self._end()
            while END not in self._buf:
                left = end - time.monotonic()
                if left <= 0:
                    cause = f"no answer within {self._timeout_s:g} s"
                    raise InstrumentTimeout(self.name, what, cause, cause)
                self.sock.settimeout(min(left, WAIT_SLICE_S))
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError as exc:
                    data, self._lost = b"", f"connection lost: {exc.strerror or exc}"
                if not data:
                    self._lost = self._lost or "the system closed the connection"
                    raise InstrumentUnreachable(self.name, what, self._lost, self._lost)
                self._buf += data
            raw, self._buf = self._buf.split(END, 1)
        try:
            answer = json.loads(raw)
        except ValueError:
            raise InstrumentError(self.name, what, f"answer {raw[:60]!r} is not JSON") from None
        if isinstance(answer, dict) and "error" in answer:
            raise InstrumentError(self.name, what, str(answer["error"])[:200])
        return answer

    def labels(self) -> dict:
        """Every label's value (``labelProps``)."""
        self._labels = self.request("labelProps", "None")
        return self._labels

    def label(self, name: str):
        labels = self.labels()
        if name not in labels:
            raise InstrumentError(self.name, "labelProps", f"no label {name!r}")
        return labels[name]

    def need(self, label: str, what: str) -> str:
        if label not in (self._labels or self.labels()):
            raise InstrumentError(
                self.name, "labelProps", f"the system sets no {what} per detector (no {label})"
            )
        return label

    def command(self, command: str, label: str, value) -> None:
        """Send a command (not answered) and read its label back: a value that did not take
        raises."""
        msg = {"command": command, "label": label, "value": value}
        with self._lock:
            self._send(msg, json.dumps(msg))
            got = self.label(label)
        if got != value:
            raise InstrumentError(
                self.name, json.dumps(msg), f"{label} reads back {got!r}, not the value sent"
            )

    # -- Driver ----------------------------------------------------------------------------
    @property
    def idn(self) -> str:
        n = self.labels()["NumberOfDetectors"]
        return f"Single Quantum,{n}-detector system,{self.control_addr[0]}"

    @property
    def unreachable(self) -> str | None:
        return self._lost

    @property
    def integration_s(self) -> float:
        """Control the measurement period in s (1e-3 .. 60): the counts' integration time."""
        return float(self.label("InptMeasurementPeriod")) / 1000

    @integration_s.setter
    def integration_s(self, v: float) -> None:
        strict_range(v, (1e-3, 60.0))
        self.command("SetMeasurementPeriod", "InptMeasurementPeriod", round(v * 1000))

    def counts(self) -> list[int]:
        """Counts per detector over one measurement period: the first whole line the counts
        port sends after this call connects."""
        period_s = self.integration_s
        sock = self._connect(self.counts_addr, "counts")
        buf = b""
        end = time.monotonic() + 2 * period_s + self._timeout_s
        try:
            while b"\n" not in buf:
                left = end - time.monotonic()
                if left <= 0:
                    cause = f"no counts line within {2 * period_s + self._timeout_s:g} s"
                    raise InstrumentTimeout(self.name, "counts", cause, cause)
                sock.settimeout(min(left, WAIT_SLICE_S))
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    cause = "the counts port closed the connection"
                    raise InstrumentUnreachable(self.name, "counts", cause, cause)
                buf += data
        finally:
            sock.close()
        fields = buf.split(b"\n", 1)[0].decode().split(",")
        return [int(x) for x in fields[1 : 1 + len(self.channels)]]

    def settings(self) -> dict:
        labels = self.labels()
        return {k: v for k, v in labels.items() if isinstance(v, (int, float, bool, list, str))}

    def safe_state(self) -> None:
        """Nothing: switching SNSPDs off gains no safety and costs a recovery."""

    def round_trip_s(self, n: int = 100) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.request("NumberOfDetectors")
            times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]

    def close(self) -> None:
        self._lost = self._lost or "the connection was closed by this program"
        with contextlib.suppress(OSError):
            self.sock.close()

    def __repr__(self) -> str:
        return f"<SingleQuantum {self.name} at {self.resource_name}>"
