"""ID Quantique ID120 single-photon detectors (SCPI over VISA: USB-TMC on the real one).

One ID120 is one detector. The detectors role takes four, H, V, D, A in that order (the
channel map of hil.roles), as one resource: their VISA resource strings joined by commas
(``USB0::0x1DDC::0x0120::SN1::INSTR,USB0::...``). Units on the wire are the ID120's (uV, us,
ms, m degC); the properties are SI like every other driver.

The ID120 sets no efficiency: it sets a bias voltage. ``efficiency`` maps it through the
detector's efficiency-versus-excess-bias curve, eta = ETA_MAX (1 - exp(-(V - V_br) / V_SCALE));
a lab sets ``BREAKDOWN_V``, ``V_SCALE_V`` and ``ETA_MAX`` from its detectors' test reports (in a
subclass registered under its own name); the defaults are the emulated ID120's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from .base import Instrument, InstrumentError, strict_bool, strict_range


class ID120(Instrument):
    """One ID120 detector."""

    roles = ()  # one detector: the role is served by ID120Detectors
    round_trip_query = "*IDN?"
    BREAKDOWN_V = 300.0
    V_SCALE_V = 10.0
    ETA_MAX = 0.95

    @property
    def efficiency(self) -> float:
        """Control the detection efficiency through the bias voltage (0.01 .. 0.9 ETA_MAX)."""
        bias_v = int(self.query("BIAS:VOLTAGE?")) * 1e-6
        return self.ETA_MAX * (1 - math.exp(-max(bias_v - self.BREAKDOWN_V, 0) / self.V_SCALE_V))

    @efficiency.setter
    def efficiency(self, eta: float) -> None:
        strict_range(eta, (0.01, 0.9 * self.ETA_MAX))
        bias_v = self.BREAKDOWN_V - self.V_SCALE_V * math.log(1 - eta / self.ETA_MAX)
        self.set_checked(f"BIAS:VOLTAGE {round(bias_v * 1e6):d}")

    @property
    def dead_time_s(self) -> float:
        """Control the dead time in s (1e-9 .. 1e-4)."""
        return float(self.query("DEADTIME:TIME?")) * 1e-6

    @dead_time_s.setter
    def dead_time_s(self, v: float) -> None:
        strict_range(v, (1e-9, 1e-4))
        self.set_checked(f"DEADTIME:TIME {v * 1e6:.6g}")

    @property
    def temperature_setpoint_c(self) -> float:
        """Control the temperature set point in degC (-60 .. 25)."""
        return int(self.query("REG:TEMP_SET_POINT?")) / 1000

    @temperature_setpoint_c.setter
    def temperature_setpoint_c(self, v: float) -> None:
        strict_range(v, (-60.0, 25.0))
        self.set_checked(f"REG:TEMP_SET_POINT {round(v * 1000):d}")

    @property
    def temperature_c(self) -> float:
        """Measure the temperature in degC."""
        return int(self.query("REG:MEASURED_TEMP?")) / 1000

    @property
    def running(self) -> bool:
        """Control whether the detector runs (its regulation: ``REG:RUN``)."""
        return self.query("REG:STATE?").strip().upper() == "RUNNING"

    @running.setter
    def running(self, on: bool) -> None:
        strict_bool(on)
        self.set_checked(f"REG:RUN {'ON' if on else 'OFF'}")

    @property
    def integration_s(self) -> float:
        """Control the counter's integration time in s (1e-3 .. 60)."""
        return int(self.query("COUNTERS:INTEGRATION_TIME?")) / 1000

    @integration_s.setter
    def integration_s(self, v: float) -> None:
        strict_range(v, (1e-3, 60.0))
        self.set_checked(f"COUNTERS:INTEGRATION_TIME {round(v * 1000):d}")

    def count(self) -> int:
        """Measure the detections over one integration time."""
        return int(self.query("COUNTERS:DETECTION_COUNT?"))

    def safe_state(self) -> None:
        """Nothing to switch off that would not need a cool-down: left as it is."""


class ID120Detectors:
    """Four ID120s as the detectors role (see the module docstring)."""

    roles = ("detectors",)
    name: str
    resource_name: str
    channels: list
    detector_class = ID120

    def __init__(self, resource: str, name: str | None = None, **kw):
        self.name = name or "detectors"
        self.resource_name = resource
        parts = [r.strip() for r in resource.split(",")]
        if len(parts) != 4:
            raise ValueError(
                f"{resource!r}: name four ID120 resources (H, V, D, A) separated by commas"
            )
        self.channels = []
        try:
            for label, r in zip("HVDA", parts, strict=True):
                self.channels.append(self.detector_class(r, f"{self.name}.{label}", **kw))
        except BaseException:
            self.close()
            raise

    def _all(self, fn):
        return [fn(ch) for ch in self.channels]

    @property
    def idn(self) -> str:
        return " | ".join(self._all(lambda c: c.idn))

    @property
    def unreachable(self) -> str | None:
        lost = [f"{c.name}: {c.unreachable}" for c in self.channels if c.unreachable]
        return "; ".join(lost) or None

    @property
    def integration_s(self) -> float:
        return self.channels[0].integration_s

    @integration_s.setter
    def integration_s(self, v: float) -> None:
        for c in self.channels:
            c.integration_s = v

    def counts(self) -> list[int]:
        """Measure each detector's count over one integration time (one after the other: on
        the emulator the four share one link clock, which each count advances)."""
        return [c.count() for c in self.channels]

    def settings(self) -> dict:
        out = {"integration_s": self.integration_s}
        for label, c in zip("HVDA", self.channels, strict=True):
            out[label] = {
                "efficiency": c.efficiency,
                "dead_time_s": c.dead_time_s,
                "temperature_setpoint_c": c.temperature_setpoint_c,
                "temperature_c": c.temperature_c,
                "running": c.running,
            }
        return out

    def safe_state(self) -> None:
        for c in self.channels:
            c.safe_state()

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for c in self.channels:
                stack.enter_context(c.deadline(seconds))
            yield

    def round_trip_s(self, n: int = 100) -> float:
        return self.channels[0].round_trip_s(n)

    def set_checked(self, command: str) -> None:
        raise InstrumentError(self.name, command, "address one ID120: detectors.channels[i]")

    def close(self) -> None:
        for c in self.channels:
            c.close()

    def __repr__(self) -> str:
        return f"<ID120Detectors {self.name} at {self.resource_name}>"
