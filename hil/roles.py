"""Instrument roles and the driver registry.

A bench file names a driver by its registry name (``driver: TimeTagger``), never by an import
path: a bench file is data, and a path would let it run any importable callable at start-up.
The registry holds the drivers shipped in ``hil.instruments`` plus those that installed packages
declare under the entry-point group ``hil.drivers`` (``name = "pkg.module:Class"``), so a lab's
own driver is added by installing it, not by writing its path into a bench file.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

ROLES: tuple[str, ...] = (
    "source",
    "attenuator",
    "switch",
    "detectors",
    "tagger",
    "powermeter",
    "control",
)

# driver name -> "module:Class"; the names are the class names, so a traceback and a bench file
# say the same thing
_BUILTIN: dict[str, str] = {
    "QKDSource": "hil.instruments.source:QKDSource",
    "KeysightAttenuator": "hil.instruments.attenuator:KeysightAttenuator",
    "OpticalSwitch": "hil.instruments.switch:OpticalSwitch",
    "DetectorUnit": "hil.instruments.detectors:DetectorUnit",
    "TimeTagger": "hil.instruments.tagger:TimeTagger",
    "PM100": "hil.instruments.powermeter:PM100",
    "EmulatorControl": "hil.instruments.control:EmulatorControl",
    # any SCPI instrument: *IDN?, SYST:ERR?, raw write/query (for a role with no special driver)
    "Instrument": "hil.instruments.base:Instrument",
}

ENTRY_POINT_GROUP = "hil.drivers"


def _installed() -> dict[str, str]:
    drivers = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        # a shipped name is never replaced: an installed package cannot swap the tagger driver
        drivers.setdefault(ep.name, ep.value)
    return drivers


DRIVERS: dict[str, str] = _installed()

# The driver each role uses unless the bench file names another.
DEFAULT_DRIVERS: dict[str, str] = {
    "source": "QKDSource",
    "attenuator": "KeysightAttenuator",
    "switch": "OpticalSwitch",
    "detectors": "DetectorUnit",
    "tagger": "TimeTagger",
    "powermeter": "PM100",
    "control": "EmulatorControl",
}


def unknown_driver_message(name: object) -> str:
    """One line saying ``name`` is not a registered driver and listing the installed ones."""
    hint = ""
    if isinstance(name, str):
        # an old bench file's dotted path to a shipped class: name the registry entry it means
        dotted = {v.replace(":", "."): k for k, v in DRIVERS.items()}
        if name in dotted:
            hint = f" (write {dotted[name]!r}: drivers are named, not imported by path)"
        elif "." in name or ":" in name:
            hint = " (drivers are registry names, not import paths)"
    return f"unknown driver {name!r}{hint}; installed drivers: {', '.join(sorted(DRIVERS))}"


def driver_class(name: str) -> type:
    """The class of the registered driver ``name``; imports only registry entries."""
    from .config import ConfigError  # config imports this module for ROLES and DRIVERS

    if not isinstance(name, str) or name not in DRIVERS:
        raise ConfigError(unknown_driver_message(name))
    module, _, attr = DRIVERS[name].partition(":")
    try:
        klass = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"driver {name!r} ({DRIVERS[name]}) cannot be imported: {exc}".replace("\n", " ")
        ) from None
    from hil.instruments.base import Instrument

    if not (isinstance(klass, type) and issubclass(klass, Instrument)):
        raise ConfigError(f"driver {name!r} ({DRIVERS[name]}) is not an Instrument class")
    return klass
