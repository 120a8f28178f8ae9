"""The vendor personalities the emulator serves beside its own command sets (same link, same
physics): the ID Quantique Time Controller over ZeroMQ (emulator/idq.py). Each publishes its
resources as ``"<role>:<driver>"`` keys of the ready file, which a bench file picks by naming
that driver with ``resource: emulator``."""

from __future__ import annotations


def start_vendors(emu) -> dict[str, str]:
    """Start every vendor personality of the Emulator ``emu``; their resources by key."""
    from .idq import IdqServices

    emu.vendor_services = []
    out: dict[str, str] = {}
    idq = IdqServices(emu.link, emu.devices["tagger"], emu.host)
    out.update(idq.start())
    emu.vendor_services.append(idq)
    return out


def stop_vendors(emu) -> None:
    for svc in getattr(emu, "vendor_services", []):
        svc.stop()
