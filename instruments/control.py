"""Driver for the emulator's own control instrument: link clock and fault injection.

Exists only on the emulated bench; tests that need it are marked ``emulator_only``.
"""

from __future__ import annotations

from .base import Instrument, strict_range


class EmulatorControl(Instrument):
    """Fault injection into the emulated link (each call takes effect at the current link time,
    or at ``at_s`` when given).

    ``auth_token``: the ``control_token`` of the emulator's ready file; the control port refuses
    fault and link commands (-203) on a connection that has not sent it."""

    def __init__(self, resource: str, name: str | None = None, *, auth_token=None, **kwargs):
        super().__init__(resource, name, **kwargs)
        if auth_token is not None:
            try:
                self.authenticate(auth_token)
            except BaseException:
                self.close()
                raise

    def authenticate(self, token: str) -> None:
        """Send ``SYST:AUTH "<token>"`` (not through write(): its on_action hook records
        commands, and the token is a credential)."""
        data = (f'SYST:AUTH "{token}"' + (self.session.write_termination or "")).encode()
        with self.exchange("SYST:AUTH"):
            self._io("SYST:AUTH", lambda: self._send(data))
            self.raise_errors("SYST:AUTH")

    def _do(self, command: str, at_s: float | None = None) -> None:
        if at_s is not None:
            strict_range(at_s, (0.0, 1e6))
            command = f'FAUL:SCH {at_s:.12g},"{command}"'
        self.write(command)
        if self.check_errors:
            self.raise_errors(command)

    def link_time_s(self) -> float:
        return float(self.query("LINK:TIME?"))

    def extra_loss(self, loss_db: float, rate_db_per_s: float | None = None, at_s=None) -> None:
        """Add ``loss_db`` of fiber loss, at once or as a ramp at ``rate_db_per_s``."""
        strict_range(loss_db, (0.0, 100.0))
        if rate_db_per_s is None:
            self._do(f"FAUL:LOSS {loss_db:.6g}", at_s)
        else:
            self._do(f"FAUL:LOSS:RAMP {loss_db:.6g},{rate_db_per_s:.6g}", at_s)

    def misalignment(self, e_mis: float, rate_per_s: float | None = None, at_s=None) -> None:
        """Set the optical misalignment error (polarization drift), at once or as a ramp."""
        strict_range(e_mis, (0.0, 0.5))
        if rate_per_s is None:
            self._do(f"FAUL:EMIS {e_mis:.6g}", at_s)
        else:
            self._do(f"FAUL:EMIS:RAMP {e_mis:.6g},{rate_per_s:.6g}", at_s)

    def temperature_runaway(
        self, detector: int, target_c: float, rate_c_per_s: float, at_s=None
    ) -> None:
        strict_range(detector, (1, 4))
        self._do(f"FAUL:TEMP{detector}:RAMP {target_c:.6g},{rate_c_per_s:.6g}", at_s)

    def detector_dead(self, detector: int, dead: bool = True, at_s=None) -> None:
        strict_range(detector, (1, 4))
        self._do(f"FAUL:DET{detector}:DEAD {int(dead)}", at_s)

    def laser_off(self, off: bool = True, at_s=None) -> None:
        self._do(f"FAUL:LAS:OFF {int(off)}", at_s)

    def eavesdropper(self, fraction: float, at_s=None) -> None:
        """Intercept-resend on ``fraction`` of the pulses (0 removes Eve)."""
        strict_range(fraction, (0.0, 1.0))
        self._do(f"FAUL:EVE {fraction:.6g}", at_s)

    def clock_drift(self, ppm: float, at_s=None) -> None:
        strict_range(ppm, (-1000.0, 1000.0))
        self._do(f"FAUL:DRIF {ppm:.6g}", at_s)

    def sync_loss(self, lost: bool = True, at_s=None) -> None:
        self._do(f"FAUL:SYNC:LOSS {int(lost)}", at_s)

    # -- the emulated KME pair (ETSI GS QKD 014; hil.emulator.kme)

    def kme_deviations(self, names: str | list[str] = "") -> None:
        """Select the KME pair's deviation profiles (hil.emulator.kme.DEVIATIONS; none: the
        spec-exact behaviour)."""
        text = names if isinstance(names, str) else ",".join(names)
        self._do(f'KME:DEV "{text}"')

    def kme_max_keys(self, keys: int) -> None:
        """Set the pair's max_key_count (stock beyond it is dropped)."""
        strict_range(keys, (1, 10_000_000))
        self._do(f"KME:STOR:MAX {int(keys)}")

    def kme_clear_store(self) -> None:
        """Empty the pair's stock (keys already issued to masters stay fetchable)."""
        self._do("KME:STOR:CLE")

    def kme_supply_bps(self) -> float:
        """The secure key rate (bit/s) the link's current state supplies to the pair."""
        return float(self.query("KME:RATE?"))

    def parameter(self, name: str) -> str:
        """Get one link-model parameter (its Python repr)."""
        return self.query(f'LINK:PAR? "{name}"')

    def set_parameter(self, name: str, value: float) -> None:
        """Set a model parameter no instrument command reaches (verification runs only)."""
        self._do(f'LINK:PAR "{name}",{value:.12g}')

    def parameters(self) -> dict:
        """Get every link-model parameter."""
        import json

        return json.loads(self.query("LINK:PAR:ALL?"))
