"""Variable optical attenuator driver: Keysight 8156A / 8157xA command set (one channel)."""

from __future__ import annotations

from .base import Instrument, control, strict_bool, strict_range, to_bool


class KeysightAttenuator(Instrument):
    """Keysight 8156A / N7764A-style VOA. ``channel`` selects the module slot (INP<n>)."""

    channel = 1

    attenuation_db = control(
        "INP{ch}:ATT?",
        "INP{ch}:ATT {:.4f}DB",
        "Control the attenuation in dB (float, 0 to 60; the instrument may allow less).",
        validator=strict_range,
        values=(0.0, 60.0),
    )
    speed_db_per_s = control(
        "INP{ch}:ATT:SPE?",
        "INP{ch}:ATT:SPE {:.3f}",
        "Control the transition speed in dB/s (float, 0.1 to 12).",
        validator=strict_range,
        values=(0.1, 12.0),
    )
    offset_db = control(
        "INP{ch}:OFFS?",
        "INP{ch}:OFFS {:.4f}DB",
        "Control the attenuation offset in dB (float, -200 to 200).",
        validator=strict_range,
        values=(-200.0, 200.0),
    )
    wavelength_m = control(
        "INP{ch}:WAV?",
        "INP{ch}:WAV {:.4f}NM",
        "Control the calibration wavelength in m (float, 1.2e-6 to 1.7e-6).",
        validator=strict_range,
        values=(1.2e-6, 1.7e-6),
        set_process=lambda v: v * 1e9,
    )
    output_enabled = control(
        "OUTP{ch}:STAT?",
        "OUTP{ch}:STAT {}",
        "Control the output shutter (bool: True = light passes).",
        validator=strict_bool,
        get_process=to_bool,
        set_process=lambda v: int(v),
    )

    def max_attenuation_db(self) -> float:
        """Get the largest attenuation the instrument accepts (``INP:ATT? MAX``), in dB."""
        return float(self.query(f"INP{self.channel}:ATT? MAX"))

    def set_attenuation_and_wait(self, value_db: float) -> None:
        """Set the attenuation and wait until the transition has finished (``*OPC?``)."""
        self.attenuation_db = value_db
        self.wait()

    def safe_state(self) -> None:
        """Set the maximum attenuation and close the shutter."""
        self.write(f"INP{self.channel}:ATT MAX")
        self.output_enabled = False
