"""The vendor personalities the emulator serves beside its own command sets (same link, same
physics): the ID Quantique Time Controller over ZeroMQ (emulator/idq.py) and four ID120
detectors over raw SCPI sockets (emulator/id120.py), a Single Quantum SNSPD system over
JSON/TCP (emulator/snspd.py). Each publishes its
resources as ``"<role>:<driver>"`` keys of the ready file, which a bench file picks by naming
that driver with ``resource: emulator``."""

from __future__ import annotations

import threading

from .id120 import ID120
from .snspd import SnspdServices


def start_vendors(emu) -> dict[str, str]:
    """Start every vendor personality of the Emulator ``emu``; their resources by key."""
    from .idq import IdqServices

    emu.vendor_services = []
    out: dict[str, str] = {}
    idq = IdqServices(emu.link, emu.devices["tagger"], emu.host)
    out.update(idq.start())
    emu.vendor_services.append(idq)
    out["detectors:ID120"] = ",".join(_serve_scpi(emu, ID120(emu.link, j)) for j in range(4))
    sq = SnspdServices(emu.link, emu.devices["tagger"], emu.host)
    out.update(sq.start())
    emu.vendor_services.append(sq)
    return out


def _serve_scpi(emu, device) -> str:
    """Serve ``device`` on a raw SCPI socket like the emulator's own instruments."""
    from .server import _ScpiHandler, _Server

    srv = _Server((emu.host, 0), _ScpiHandler)
    srv.device = device
    srv.max_message_bytes = emu.max_message_bytes
    srv.max_connections = emu.max_connections
    name = f"scpi-{type(device).__name__}"
    threading.Thread(target=srv.serve_forever, args=(0.05,), name=name, daemon=True).start()
    emu.vendor_services.append(_Closing(srv))
    return f"TCPIP::{emu.host}::{srv.server_address[1]}::SOCKET"


class _Closing:
    def __init__(self, srv):
        self.srv = srv

    def stop(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def stop_vendors(emu) -> None:
    for svc in getattr(emu, "vendor_services", []):
        svc.stop()
