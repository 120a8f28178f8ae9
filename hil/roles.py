"""Instrument roles and the driver registry.

A bench file names a driver by its registry name (``driver: TimeTagger``), never by an import
path: a bench file is data, and a path would let it run any importable callable at start-up.
The registry holds the drivers shipped in ``hil.instruments`` plus those that installed packages
declare under the entry-point group ``hil.drivers`` (``name = "pkg.module:Class"``), so a lab's
own driver is added by installing it, not by writing its path into a bench file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

ROLES: tuple[str, ...] = (
    "source",
    "attenuator",
    "switch",
    "detectors",
    "tagger",
    "powermeter",
    "control",
)

# -- the channel map (defined here only) ------------------------------------------------------
# The tag stream every tagger driver yields uses these channel numbers, whatever the vendor
# numbers its inputs: a driver maps its inputs onto them (DESIGN.md, Conventions).
SYNC_CHANNEL = 0  # the source's sync (clock divided by the sync divider)
DETECTOR_NAMES: tuple[str, ...] = ("H", "V", "D", "A")  # the receiver's four detectors
DETECTOR_CHANNELS: tuple[int, ...] = (1, 2, 3, 4)  # their tag channels, in DETECTOR_NAMES order
MARKER_CHANNEL = 8  # software markers (actions placed in the stream)
LINK_CHANNELS: tuple[int, ...] = (SYNC_CHANNEL, *DETECTOR_CHANNELS)  # what a QKD measurement uses
# A detectors driver's ``channels[i]`` is detector DETECTOR_NAMES[i], seen by the tagger on
# DETECTOR_CHANNELS[i]: one map for the detector unit's channel numbers and the tagger's inputs.


def detector_channel(name: str) -> int:
    """The tag channel of detector ``name`` (one of DETECTOR_NAMES)."""
    return DETECTOR_CHANNELS[DETECTOR_NAMES.index(name)]


# -- what a driver of each role offers -------------------------------------------------------
# The capture, the monitor, the fixtures and the plans use only these members. A driver need
# not subclass anything: a class whose instances offer its role's members (and Driver's) is
# accepted; the shipped SCPI drivers get Driver's members from hil.instruments.base.Instrument.


@runtime_checkable
class Driver(Protocol):
    """Every driver. Constructed as ``Class(resource, role, timeout_s=, check_errors=,
    on_action=, **options)``; every wait bounded by ``timeout_s``; failures raise
    ``hil.instruments.base.InstrumentError`` (one line: instrument, command, cause)."""

    name: str
    resource_name: str

    @property
    def idn(self) -> str: ...  # identification; its answer is the bench's probe

    @property
    def unreachable(self) -> str | None: ...  # why the connection is lost, else None

    def settings(self) -> dict[str, Any]: ...  # the snapshot of this instrument

    def safe_state(self) -> None: ...

    def deadline(self, seconds: float) -> Any: ...  # context manager: waits end by then

    def round_trip_s(self, n: int = 100) -> float: ...  # control-plane latency (median)

    def close(self) -> None: ...


@runtime_checkable
class TaggerDriver(Driver, Protocol):
    """A time tagger. Tags are yielded as blocks ``(timestamps int64 ps, channels uint8)`` in
    time order, channels per the channel map above (the driver maps its inputs)."""

    def set_input(
        self,
        channel: int,
        *,
        enabled: bool | None = None,
        threshold_v: float | None = None,
        delay_s: float | None = None,
    ) -> None: ...  # configure one channel (map numbering)

    def input_settings(self, channel: int) -> dict: ...  # {"enabled", "threshold_v", "delay_s"}

    def link_time_ps(self) -> int: ...  # the tagger's clock now, ps

    def link_time_s(self) -> float: ...

    def start(self, duration_s: float, pace: float | None = None) -> None: ...  # acquire

    def stop(self) -> None: ...

    def status(self) -> str: ...  # IDLE, RUNNING, HELD (holds only) or DONE

    def stream(
        self, on_hold: Callable[[], None] | None = None
    ) -> Iterator[tuple[Any, Any]]: ...  # blocks until the acquisition is over and drained

    def mark(self) -> None: ...  # a tag on MARKER_CHANNEL at the current link time

    def data_lost(self) -> bool: ...  # any overflow or missed event in the last acquisition

    # optional: ``loss_counts() -> dict[str, int]`` (e.g. {"overflows": n, "missed_events": n}
    # of the last acquisition), recorded in the capture when the driver offers it


@runtime_checkable
class HoldingTagger(TaggerDriver, Protocol):
    """A tagger that can stop its link clock at given offsets (emulated taggers only): the
    capture then runs actions at exact link times."""

    def set_holds(self, offsets_s: Iterable[float], timeout_s: float | None = None) -> None: ...

    def resume(self) -> None: ...

    def held_time_ps(self) -> int: ...

    def hold_expired(self) -> bool: ...


@runtime_checkable
class DetectorChannelDriver(Protocol):
    """One detector (``DetectorsDriver.channels[i]``, detector DETECTOR_NAMES[i])."""

    efficiency: float  # 0..1 (a bias-set detector maps its bias to the efficiency it gives)
    dead_time_s: float
    temperature_setpoint_c: float
    running: bool  # armed

    @property
    def temperature_c(self) -> float: ...


@runtime_checkable
class DetectorsDriver(Driver, Protocol):
    """The receiver's detectors, one ``channels`` entry per name in DETECTOR_NAMES."""

    channels: Sequence[DetectorChannelDriver]
    integration_s: float

    def counts(self) -> list[int]: ...  # per detector, over one integration time


# The interface each role's driver must offer (roles not listed need only Driver's members;
# their plans use the shipped SCPI drivers' members directly).
ROLE_INTERFACES: dict[str, type] = {"tagger": TaggerDriver, "detectors": DetectorsDriver}


def serves(klass: type, role: str) -> bool:
    """Whether instances of ``klass`` offer what a driver of ``role`` must (by its members:
    Protocol checks of classes look at attribute names, not signatures)."""
    from hil.instruments.base import Instrument

    declared = getattr(klass, "roles", None)
    if declared is None and issubclass(klass, Instrument):
        # shipped SCPI drivers: by the role they were written for
        return role in _BUILTIN_ROLES.get(klass.__name__, ROLES)
    if declared is not None and role not in declared:  # a driver says which roles it serves
        return False
    return not missing_members(klass, ROLE_INTERFACES.get(role, Driver))


def missing_members(klass: type, iface: type) -> list[str]:
    """The members of the interface ``iface`` (a Protocol above) that ``klass`` lacks."""
    members = {m for c in iface.__mro__ for m in getattr(c, "__annotations__", {})}
    members |= {
        m for c in iface.__mro__ if c.__module__ == __name__ for m in vars(c) if m[0] != "_"
    }
    own = set()
    for c in klass.__mro__:
        own |= set(getattr(c, "__annotations__", {}))
    return sorted(m for m in members if not hasattr(klass, m) and m not in own)


# Roles reached over HTTPS rather than VISA: the key management entities (ETSI GS QKD 014) at the
# master SAE's site (kme_a) and at the slave's (kme_b). Their driver is always
# hil.instruments.kme.KMEClient; a bench file gives them under ``kmes:`` (hil.config.KMESpec).
KME_ROLES: tuple[str, ...] = ("kme_a", "kme_b")

# how each role is reached: "visa" (SCPI through pyvisa, a registered driver) or "https"
ROLE_KINDS: dict[str, str] = {**{r: "visa" for r in ROLES}, **{r: "https" for r in KME_ROLES}}

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
    # vendor instruments (each class says which roles it serves in its ``roles`` attribute)
    "IDQTimeController": "hil.instruments.idq_tc:IDQTimeController",
    "ID120": "hil.instruments.id120:ID120Detectors",
    "SingleQuantum": "hil.instruments.singlequantum:SingleQuantum",
    "SwabianTimeTagger": "hil.instruments.swabian:SwabianTimeTagger",
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
# shipped SCPI drivers (Instrument subclasses) -> the roles they were written for; the plain
# Instrument serves any role that asks no more than Driver's members
_BUILTIN_ROLES: dict[str, tuple[str, ...]] = {
    **{cls: (role,) for role, cls in DEFAULT_DRIVERS.items()},
    "Instrument": tuple(r for r in ROLES if r not in ROLE_INTERFACES),
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

    ok = isinstance(klass, type) and (
        issubclass(klass, Instrument) or any(serves(klass, r) for r in ROLES)
    )
    if not ok:
        raise ConfigError(
            f"driver {name!r} ({DRIVERS[name]}) is neither an Instrument class nor a class "
            "offering a role's interface (hil.roles.ROLE_INTERFACES)"
        )
    return klass


def driver_roles(name: str) -> tuple[str, ...]:
    """The roles the registered driver ``name`` serves (its class imported)."""
    klass = driver_class(name)
    return tuple(r for r in ROLES if serves(klass, r))
