"""ID Quantique ID120 single-photon detector personality (one instrument per detector).

SCPI over the emulator's raw socket (the real ID120 speaks it over USB-TMC; the emulator has no
USB, so a client reaches it as ``TCPIP::<host>::<port>::SOCKET``), on the same link as the
default detector unit: the emulated ID120 number j drives detector j (H, V, D, A) of the link.

Commands (units as the ID120's: uV, us, ms, m degC):
``THRESHOLD:VOLTAGE``, ``DEADTIME:TIME``, ``BIAS:VOLTAGE`` (and queries), ``BIAS:ERROR_STATUS?``,
``COUNTERS:INTEGRATION_TIME``, ``COUNTERS:DETECTION_FREQ?``, ``COUNTERS:DETECTION_COUNT?``,
``REG:TEMP_SET_POINT``, ``REG:MEASURED_TEMP?``, ``REG:RUN ON|OFF``, ``REG:STATE?``,
``OUTPUT<1|2>:POLARITY POSITIVE|NEGATIVE``.

Emulator model (not the vendor's): the efficiency follows the excess bias over a breakdown of
``BREAKDOWN_UV`` as eta = ETA_MAX (1 - exp(-dV / V_SCALE)) (the usual saturating shape of an
APD's detection probability with excess bias, e.g. Zappa et al., Sens. Actuators A 140, 103
(2007)); the detector counts while its regulation runs (``REG:RUN ON``); the regulator is ideal
(the measured temperature is the set point unless a fault moves it).
"""

from __future__ import annotations

import math

import numpy as np

from .devices import N_TAGGER_CHANNELS, LinkDevice
from .link import PS, Link
from .scpi import Choice, Num, ScpiError

BREAKDOWN_UV = 300_000_000  # 300 V
V_SCALE_UV = 10_000_000  # 10 V
ETA_MAX = 0.95
MAX_EXCESS_UV = 40_000_000


def efficiency_of_bias(bias_uv: float) -> float:
    excess = max(bias_uv - BREAKDOWN_UV, 0.0)
    return ETA_MAX * (1.0 - math.exp(-excess / V_SCALE_UV))


class ID120(LinkDevice):
    """Detector ``index`` (0..3 = H, V, D, A) of the link as an ID120."""

    def __init__(self, link: Link, index: int):
        self.index = index
        super().__init__(link)
        self.IDN = ("IDQ", "ID120 (qkd-hil emulated)", f"EMU012{index}", "1.0")
        c = self.command
        c("THRESHOLD:VOLTAGE", self._set("threshold_uv"), Num(0, 2_000_000, integer=True))
        c("THRESHOLD:VOLTAGE?", lambda s: self.threshold_uv)
        c("DEADTIME:TIME", self._set_dead, Num(0.001, 100.0))
        c("DEADTIME:TIME?", lambda s: _fmt(self.link.get("dead_time_s", index) * 1e6))
        bias_hi = BREAKDOWN_UV + MAX_EXCESS_UV
        c("BIAS:VOLTAGE", self._set_bias, Num(0, bias_hi, integer=True))
        c("BIAS:VOLTAGE?", lambda s: self.bias_uv)
        c("BIAS:ERROR_STATUS?", lambda s: 0)
        c("COUNTERS:INTEGRATION_TIME", self._set("integration_ms"), Num(1, 60000, integer=True))
        c("COUNTERS:INTEGRATION_TIME?", lambda s: self.integration_ms)
        c("COUNTERS:DETECTION_COUNT?", lambda s: self._count())
        c("COUNTERS:DETECTION_FREQ?", lambda s: _fmt(self._count() / (self.integration_ms / 1e3)))
        c("REG:TEMP_SET_POINT", self._set_temp, Num(-60_000, 25_000, integer=True))
        c("REG:TEMP_SET_POINT?", lambda s: self.setpoint_mc)
        c("REG:MEASURED_TEMP?", lambda s: round(self.link.get("temperature_c", index) * 1000))
        c("REG:RUN", self._run, Choice(("ON", "OFF")))
        c("REG:STATE?", lambda s: "RUNNING" if self.link.get("detector_on", index) else "STOPPED")
        c(
            "OUTPUT#:POLARITY",
            lambda s, v: self.polarity.__setitem__(s[0] - 1, v),
            Choice(("POSITIVE", "NEGATIVE")),
            suffix_range=(1, 2),
        )
        c("OUTPUT#:POLARITY?", lambda s: self.polarity[s[0] - 1], suffix_range=(1, 2))

    def reset(self) -> None:
        from .physics import LinkParams

        d = LinkParams()
        j = self.index
        self.threshold_uv = 100_000
        self.integration_ms = 100
        self.polarity = ["POSITIVE", "POSITIVE"]
        self.setpoint_mc = round(d.temperature_c[j] * 1000)
        self.bias_uv = _bias_for(d.efficiency[j])
        for name in ("efficiency", "dead_time_s", "temperature_c", "detector_on"):
            self.link.set(name, getattr(d, name)[j], j)

    def _set(self, attr: str):
        return lambda s, v: setattr(self, attr, int(v))

    def _set_dead(self, s, v) -> None:
        self.link.set("dead_time_s", v * 1e-6, self.index)

    def _set_bias(self, s, v) -> None:
        eta = efficiency_of_bias(v)
        if eta < 0.01:
            raise ScpiError(-222, f"bias {v} uV gives efficiency {eta:.3g} (< 0.01)")
        self.bias_uv = int(v)
        self.link.set("efficiency", eta, self.index)

    def _set_temp(self, s, v) -> None:
        self.setpoint_mc = int(v)
        self.link.set("temperature_c", v / 1000, self.index)  # ideal regulator

    def _run(self, s, v) -> None:
        self.link.set("detector_on", v == "ON", self.index)

    def _count(self) -> int:
        if getattr(self.link, "acquiring", False):
            raise ScpiError(-221, "counters unavailable while the tagger acquires")
        t_stop = self.link.now_ps + self.integration_ms * PS // 1000
        total = 0
        while self.link.now_ps < t_stop:
            _, ch = self.link.step(t_stop)
            total += int(np.bincount(ch, minlength=N_TAGGER_CHANNELS)[1 + self.index])
        return total


def _bias_for(eta: float) -> int:
    return round(BREAKDOWN_UV - V_SCALE_UV * math.log(1.0 - eta / ETA_MAX))


def _fmt(x: float) -> str:
    return f"{x:.6g}"
