"""Four-channel single-photon detector unit driver (ID120-like settings, SI units)."""

from __future__ import annotations

from .base import Instrument, strict_bool, strict_range, to_bool


class DetectorChannel:
    """One detector channel (1..4 = H, V, D, A) of a :class:`DetectorUnit`."""

    def __init__(self, unit: DetectorUnit, channel: int):
        self.unit, self.channel = unit, channel

    def _set(self, name: str, header: str, value: float, lo: float, hi: float) -> None:
        try:
            strict_range(value, (lo, hi))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.unit.name}.detector{self.channel}.{name}: {exc}") from None
        self.unit.set_checked(f"DET{self.channel}:{header} {value:.6g}")

    @property
    def efficiency(self) -> float:
        """Control the detection efficiency (float, 0.01 to 0.95)."""
        return float(self.unit.query(f"DET{self.channel}:EFF?"))

    @efficiency.setter
    def efficiency(self, v: float) -> None:
        self._set("efficiency", "EFF", v, 0.01, 0.95)

    @property
    def dead_time_s(self) -> float:
        """Control the dead time in s (float, 1e-9 to 1e-4)."""
        return float(self.unit.query(f"DET{self.channel}:DEAD?"))

    @dead_time_s.setter
    def dead_time_s(self, v: float) -> None:
        self._set("dead_time_s", "DEAD", v, 1e-9, 100e-6)

    @property
    def temperature_setpoint_c(self) -> float:
        """Control the temperature set point in degC (float, -60 to 25)."""
        return float(self.unit.query(f"DET{self.channel}:TEMP:SETP?"))

    @temperature_setpoint_c.setter
    def temperature_setpoint_c(self, v: float) -> None:
        self._set("temperature_setpoint_c", "TEMP:SETP", v, -60.0, 25.0)

    @property
    def temperature_c(self) -> float:
        """Measure the detector temperature in degC."""
        return float(self.unit.query(f"DET{self.channel}:TEMP?"))

    @property
    def running(self) -> bool:
        """Control whether the detector is armed (bool)."""
        return to_bool(self.unit.query(f"DET{self.channel}:RUN?"))

    @running.setter
    def running(self, on: bool) -> None:
        try:
            strict_bool(on)
        except TypeError as exc:
            raise ValueError(f"{self.unit.name}.detector{self.channel}.running: {exc}") from None
        self.unit.set_checked(f"DET{self.channel}:RUN {int(on)}")


class DetectorUnit(Instrument):
    """Four detectors H, V, D, A behind one SCPI interface."""

    N_CHANNELS = 4

    def __init__(self, resource: str, name: str | None = None, **kw):
        super().__init__(resource, name, **kw)
        self.channels = [DetectorChannel(self, i + 1) for i in range(self.N_CHANNELS)]

    @property
    def integration_s(self) -> float:
        """Control the counter integration time in s (float, 1e-3 to 60)."""
        return float(self.query("COUN:INT?"))

    @integration_s.setter
    def integration_s(self, v: float) -> None:
        try:
            strict_range(v, (1e-3, 60.0))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.name}.integration_s: {exc}") from None
        self.set_checked(f"COUN:INT {v:.6g}")

    def counts(self) -> list[int]:
        """Measure the counts of the four channels over one integration time."""
        return [int(x) for x in self.query("COUN:DATA?").split(",")]

    def settings(self) -> dict:
        out = {"integration_s": self.integration_s}
        for ch in self.channels:
            out[f"det{ch.channel}"] = {
                "efficiency": ch.efficiency,
                "dead_time_s": ch.dead_time_s,
                "temperature_setpoint_c": ch.temperature_setpoint_c,
                "temperature_c": ch.temperature_c,
                "running": ch.running,
            }
        return out
