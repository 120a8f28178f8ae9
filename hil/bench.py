"""A Bench opens the instruments a bench file names, keeps them healthy, and leaves them safe.

Usable without pytest::

    with Bench.open("emulated") as bench:
        bench.attenuator.attenuation_db = 10

With resources set to ``emulator`` the bench starts ``hil emulator serve`` as a separate process
on free loopback ports, waits until every instrument answers ``*IDN?``, and stops it on close.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import hil

from .config import DEFAULT_DRIVERS, EMULATOR, BenchFile, ConfigError, load_bench
from .instruments.base import Instrument, InstrumentError
from .roles import driver_class


class BenchError(RuntimeError):
    """The bench cannot be used (an instrument is missing, broken or unreachable)."""


class EmulatorProcess:
    """``hil emulator serve`` in its own process (own session: Ctrl-C reaches only pytest,
    which then brings the bench to its safe state before stopping the emulator)."""

    def __init__(self, seed: int = 1, start_timeout_s: float = 30.0):
        self.seed = seed
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.resources: dict[str, str] = {}

    def start(self) -> dict[str, str]:
        self._dir = tempfile.TemporaryDirectory(prefix="hil-emulator-")
        ready = Path(self._dir.name) / "ready.json"
        log = open(Path(self._dir.name) / "emulator.log", "wb")  # noqa: SIM115
        cmd = [
            sys.executable,
            "-m",
            "hil.cli",
            "emulator",
            "serve",
            "--ready-file",
            str(ready),
            "--parent-pid",
            str(os.getpid()),
            "--seed",
            str(self.seed),
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.exists():
            if self.proc.poll() is not None:
                log.close()
                text = (Path(self._dir.name) / "emulator.log").read_text(errors="replace")
                last = text.strip().splitlines()[-1] if text.strip() else "no output"
                raise BenchError(f"emulator exited with code {self.proc.returncode}: {last}")
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"emulator did not start within {self.start_timeout_s:g} s")
            time.sleep(0.02)
        self.resources = json.loads(ready.read_text())["resources"]
        return self.resources

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _driver_class(path: str) -> type[Instrument]:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"driver {path!r} cannot be imported") from None


class Bench:
    """The instruments of one bench, by role, with health, snapshot and safe state."""

    def __init__(self, spec: BenchFile, path: Path):
        self.spec, self.path = spec, path
        self.instruments: dict[str, Instrument] = {}
        self.emulator: EmulatorProcess | None = None
        self.broken: dict[str, str] = {}  # role -> first error
        self.latency_s: dict[str, float] = {}
        self.idn: dict[str, str] = {}
        # the last instrument commands (wall time, instrument, command), for diagnosing a failure;
        # bounded so that a soak of hours does not grow it without end
        self.actions: deque[tuple[float, str, str]] = deque(maxlen=10_000)
        self.criteria_file: Path | None = None  # the plan's criteria, for the snapshot

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, name_or_path: str | Path = "emulated", *, measure_latency: bool = True) -> Bench:
        spec, path = load_bench(name_or_path)
        bench = cls(spec, path)
        try:
            bench._start(measure_latency)
        except BaseException:
            bench.close()
            raise
        return bench

    @property
    def emulated(self) -> bool:
        return self.spec.emulator is not None

    def _start(self, measure_latency: bool) -> None:
        resources = {}
        if self.emulated:
            self.emulator = EmulatorProcess(
                self.spec.emulator.seed, self.spec.emulator.start_timeout_s
            )
            resources = self.emulator.start()
        for role, ispec in self.spec.instruments.items():
            resource = ispec.resource
            if resource == EMULATOR:
                if role not in resources:
                    raise BenchError(f"{self.path}: the emulator has no instrument {role!r}")
                resource = resources[role]
            klass = driver_class(ispec.driver or DEFAULT_DRIVERS[role])  # registered names only
            inst = klass(
                resource,
                role,
                timeout_s=ispec.timeout_s,
                check_errors=ispec.check_errors,
                on_action=self._record_action,
                **ispec.options,
            )
            self.instruments[role] = inst
        deadline = time.monotonic() + (self.spec.emulator.start_timeout_s if self.emulated else 10)
        for role, inst in self.instruments.items():
            while True:
                try:
                    self.idn[role] = inst.idn
                    break
                except InstrumentError as exc:
                    if time.monotonic() > deadline:
                        raise BenchError(
                            f"{role} at {inst.resource_name} does not answer "
                            f"its identification query: {exc.message}"
                        ) from None
                    time.sleep(0.1)
        if measure_latency:
            for role, inst in self.instruments.items():
                self.latency_s[role] = inst.round_trip_s(100)

    def _record_action(self, instrument: str, command: str) -> None:
        self.actions.append((time.time(), instrument, command))

    # -- access --------------------------------------------------------------------------------
    def __getattr__(self, role: str) -> Any:
        if role.startswith("_") or role in ("instruments", "broken", "spec"):
            raise AttributeError(role)
        try:
            return self.get(role)
        except KeyError:
            raise AttributeError(role) from None

    def has(self, role: str) -> bool:
        return role in self.instruments

    def get(self, role: str) -> Instrument:
        if role in self.broken:
            raise BenchError(f"{role} is broken: {self.broken[role]}")
        return self.instruments[role]

    def mark_broken(self, role: str, error: str) -> None:
        self.broken.setdefault(role, error)

    # -- evidence ------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Every instrument's identity and settings, the bench file, the software version."""
        snap: dict[str, Any] = {
            "bench_name": self.spec.name,
            "bench_file": str(self.path),
            "bench_file_text": self.path.read_text(),
            "criteria_file": str(self.criteria_file) if self.criteria_file else None,
            "criteria_file_text": self.criteria_file.read_text() if self.criteria_file else None,
            "qkd_hil_version": hil.__version__,
            "git_revision": _git_revision(),
            "control_plane_latency_s": self.latency_s,
            "instruments": {},
        }
        for role, inst in self.instruments.items():
            entry: dict[str, Any] = {"idn": self.idn.get(role), "resource": inst.resource_name}
            if role in self.broken:
                entry["broken"] = self.broken[role]
            else:
                try:
                    entry["settings"] = inst.settings()
                except InstrumentError as exc:
                    entry["settings_error"] = str(exc)
            snap["instruments"][role] = entry
        return snap

    # -- closing -------------------------------------------------------------------------------
    def safe_state(self) -> list[str]:
        """Source output off, attenuator at maximum; returns the errors met (never raises)."""
        problems = []
        for role in ("source", "attenuator"):
            inst = self.instruments.get(role)
            if inst is None or role in self.broken:
                continue
            try:
                inst.safe_state()
            except Exception as exc:  # noqa: BLE001 - safe state must try every instrument
                problems.append(f"{role}: {exc}")
        return problems

    def close(self) -> None:
        try:
            if self.spec.safe_state and self.instruments:
                self.safe_state()
        finally:
            for inst in self.instruments.values():
                inst.close()
            if self.emulator is not None:
                self.emulator.stop()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
