"""Optical switch driver: Thorlabs OSW12/OSW22 serial ASCII protocol (``S 1``, ``S 2``, ``S?``).

Reached through pyvisa-py's ASRL resources (``ASRL/dev/ttyUSB0::INSTR``, or a pty) at
115200 8N1; commands end with ``\\n``, replies with ``\\r\\n``.
"""

from __future__ import annotations

from pyvisa import constants

from .base import Instrument, InstrumentError


class OpticalSwitch(Instrument):
    """1x2 optical switch; position 1 passes the link fiber, position 2 cuts it."""

    read_termination = "\r\n"
    round_trip_query = "S?"
    write_termination = "\n"

    def __init__(self, resource: str, name: str | None = None, **kw):
        kw.setdefault("baud_rate", 115200)  # OSW manual: 115200 8N1 with RTS/CTS handshake
        kw.setdefault("flow_control", constants.ControlFlow.rts_cts)
        kw.setdefault("check_errors", False)  # the protocol has no error queue
        super().__init__(resource, name, **kw)

    @property
    def idn(self) -> str:
        """Get the identification string (``I?``)."""
        return self.query("I?")

    @property
    def position(self) -> int:
        """Control the switch position (1 or 2)."""
        return int(self.query("S?"))

    @position.setter
    def position(self, value: int) -> None:
        if value not in (1, 2):
            raise ValueError(f"{self.name}.position: {value!r} is not 1 or 2")
        with self.exchange(f"S {value}"):  # no other thread's command between the two
            self.write(f"S {value}")
            got = self.position  # the protocol has no acknowledgement: read back
        if got != value:
            raise InstrumentError(self.name, f"S {value}", f"position reads {got} afterwards")

    def cut(self) -> None:
        """Set position 2: the link fiber is cut."""
        self.position = 2

    def restore(self) -> None:
        """Set position 1: the link fiber passes."""
        self.position = 1

    def reset(self) -> None:
        self.position = 1

    def settings(self) -> dict:
        return {"position": self.position}
