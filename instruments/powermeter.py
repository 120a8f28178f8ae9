"""Optical power meter driver: Thorlabs PM100D / PM100USB SCPI command set."""

from __future__ import annotations

from .base import Instrument, control, measurement, strict_discrete_set, strict_range


class PM100(Instrument):
    """Thorlabs PM100-series power meter."""

    power = measurement(
        "MEAS:POW?", "Measure the optical power in the current unit (W or dBm, see ``unit``)."
    )
    wavelength_m = control(
        "SENS:CORR:WAV?",
        "SENS:CORR:WAV {:.3f}",
        "Control the correction wavelength in m (float, 4e-7 to 1.8e-6; sent in nm).",
        validator=strict_range,
        values=(400e-9, 1800e-9),
        get_process=lambda t: float(t) * 1e-9,
        set_process=lambda v: v * 1e9,
    )
    unit = control(
        "SENS:POW:UNIT?",
        "SENS:POW:UNIT {}",
        "Control the power unit ('W' or 'DBM').",
        validator=strict_discrete_set,
        values=("W", "DBM"),
        get_process=str.strip,
    )

    def power_w(self) -> float:
        """Measure the optical power in W, whatever the display unit."""
        unit = self.unit
        value = self.power
        return 1e-3 * 10 ** (value / 10) if unit == "DBM" else value
