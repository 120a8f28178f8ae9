"""A Bench opens the instruments a bench file names, keeps them healthy, and leaves them safe.

Usable without pytest::

    with Bench.open("emulated") as bench:
        bench.attenuator.attenuation_db = 10

With resources set to ``emulator`` the bench starts ``hil emulator serve`` as a separate process
on free loopback ports, waits until every instrument answers ``*IDN?``, and stops it on close.

Opening probes every instrument at once, each within its own timeout, and a bench that does not
open raises one :class:`BenchError` naming every instrument that did not answer (role, resource,
cause). Closing brings the bench to its safe state within a budget: instruments whose connection
is known lost are skipped, each of the others gets its timeout (2 s after a Ctrl-C), and what
could not be applied is logged, one line per instrument (logger ``hil.bench``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import hil

from .config import DEFAULT_DRIVERS, EMULATOR, BenchFile, load_bench
from .instruments.base import Instrument, InstrumentError, wait_event
from .roles import driver_class

log = logging.getLogger("hil.bench")

# the roles a safe state acts on, in order: light off at the source, then the attenuator closed
SAFE_STATE_ROLES = ("source", "attenuator")
# after a Ctrl-C each instrument's safe state gets at most this long, so that the run ends
# within the few seconds an operator waits before pressing again
INTERRUPTED_SAFE_STATE_S = 2.0
# an emulated bench's instruments may take a moment to accept after the ready file is written;
# a real bench's instrument is asked once (a retry would only repeat its timeout)
EMULATED_PROBE_RETRY_S = 10.0


class BenchError(RuntimeError):
    """The bench cannot be used (an instrument is missing, broken or unreachable).

    ``failures``: role -> one-line cause, for each instrument that did not answer when the
    bench was opened (empty for other errors); ``str()`` is a header line naming the bench
    file, then one line per failing instrument, ``  <role> (<resource>): <cause>``.
    """

    def __init__(self, message: str, failures: dict[str, str] | None = None):
        super().__init__(message)
        self.failures: dict[str, str] = dict(failures or {})

    def __reduce__(self):  # picklable with its failures (pytest-xdist sends errors across)
        return type(self), (str(self), self.failures)


class EmulatorProcess:
    """``hil emulator serve`` in its own process (own session: Ctrl-C reaches only pytest,
    which then brings the bench to its safe state before stopping the emulator)."""

    def __init__(self, seed: int = 1, start_timeout_s: float = 30.0):
        self.seed = seed
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.resources: dict[str, str] = {}
        self.vendor_resources: dict[str, str] = {}
        self.control_token: str | None = None  # the control port's SYST:AUTH token (I2)
        self.kme: dict | None = None  # the emulated KME pair's ready_info (URLs, IDs, PEM paths)

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
        info = json.loads(ready.read_text())
        self.resources = info["resources"]
        self.vendor_resources = info.get("vendor_resources", {})  # "role:driver" -> resource
        self.control_token = info.get("control_token")
        self.kme = info.get("kme")
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


class _Probe:
    """Open one instrument and ask its ``*IDN?``, in a thread of its own, so that every
    instrument of a bench is probed at once and each within its own timeout."""

    def __init__(self, role: str, klass: type, resource: str, kwargs: dict, retry_s: float):
        self.role, self.klass, self.resource, self.kwargs = role, klass, resource, kwargs
        self.started = time.monotonic()
        self.retry_until = self.started + retry_s
        self.inst: Instrument | None = None
        self.idn: str | None = None
        self.cause: str | None = None
        self.done = threading.Event()
        self._cancelled = threading.Event()
        self._gate = threading.Lock()
        timeout_s = float(kwargs.get("timeout_s", 5.0))
        # open, *IDN?, and the drain after a timed-out answer: each within one timeout
        self.bound_s = 3 * timeout_s + 1.0 + retry_s
        self.thread = threading.Thread(target=self._run, name=f"probe {role}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                inst = None
                try:
                    inst = self.klass(self.resource, self.role, **self.kwargs)
                    with self._gate:
                        if self._cancelled.is_set():
                            inst.close()
                            return
                        self.inst = inst
                    self.idn = inst.idn
                    return
                except InstrumentError as exc:
                    self.cause = exc.cause
                except Exception as exc:  # noqa: BLE001 - a driver's own failure, as one line
                    self.cause = f"{type(exc).__name__}: {exc}"
                with self._gate:
                    self.inst = None
                if inst is not None:
                    inst.close()
                if time.monotonic() >= self.retry_until or self._cancelled.wait(0.1):
                    return
        finally:
            self.done.set()

    def cancel(self) -> None:
        """Stop the probe (its waits end within a fraction of a second) and close what it
        opened; the thread is not waited for."""
        with self._gate:
            self._cancelled.set()
            inst, self.inst = self.inst, None
        if inst is not None:
            inst.close()

    @property
    def answered(self) -> bool:
        return self.done.is_set() and self.idn is not None


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
        self.resources: dict[str, str] = {}  # role -> the resource actually opened
        # roles that did not answer when the bench was opened -> cause (no safe state for them)
        self.unreachable: dict[str, str] = {}
        self._probes: dict[str, _Probe] = {}
        self._opened_at = time.monotonic()
        # the KMEs (roles kme_a, kme_b; hil.keys): their clients, and what a test needs to reach
        # them by other means (URL, IDs, PEM paths; never a key)
        self.kmes: dict[str, Any] = {}
        self.kme_info: dict[str, dict] = {}

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, name_or_path: str | Path = "emulated", *, measure_latency: bool = True) -> Bench:
        """Open every instrument of the bench file and check that each answers ``*IDN?``;
        raises BenchError naming every one that does not (after a safe state of the others)."""
        spec, path = load_bench(name_or_path)
        bench = cls(spec, path)
        _watch_sigint()
        try:
            bench._start(measure_latency)
        except KeyboardInterrupt:
            bench.close(interrupted=True)
            raise
        except BaseException:
            bench.close()
            raise
        return bench

    @property
    def emulated(self) -> bool:
        return self.spec.emulator is not None

    def _start(self, measure_latency: bool) -> None:
        emulated = {}
        if self.emulated:
            self.emulator = EmulatorProcess(
                self.spec.emulator.seed, self.spec.emulator.start_timeout_s
            )
            emulated = self.emulator.start()
        plan = []
        for role, ispec in self.spec.instruments.items():
            resource = ispec.resource
            if resource == EMULATOR:
                # a vendor personality (emulator/vendors.py) is published as "role:driver"
                vendor = self.emulator.vendor_resources.get(f"{role}:{ispec.driver}")
                if role not in emulated and vendor is None:
                    raise BenchError(f"{self.path}: the emulator has no instrument {role!r}")
                resource = vendor or emulated[role]
            klass = driver_class(ispec.driver or DEFAULT_DRIVERS[role])  # registered names only
            kwargs = dict(
                timeout_s=ispec.timeout_s,
                check_errors=ispec.check_errors,
                on_action=self._record_action,
                **ispec.options,
            )
            token = self.emulator.control_token if self.emulator is not None else None
            if role == "control" and token is not None:
                kwargs["auth_token"] = token  # fault injection needs it (I2)
            self.resources[role] = resource
            plan.append((role, klass, resource, kwargs))
        retry_s = EMULATED_PROBE_RETRY_S if self.emulated else 0.0
        for role, klass, resource, kwargs in plan:
            self._probes[role] = _Probe(role, klass, resource, kwargs, retry_s)
        self._collect_probes()
        if self.spec.kmes:
            from . import keys  # the key plane: imported only by benches that have KMEs

            emulated_kme = self.emulator.kme if self.emulator is not None else None
            self.kme_info = keys.resolve(self.spec, self.path, emulated_kme)
            self.kmes, failed = keys.open_clients(self.kme_info)
            for role, cause in failed.items():
                self.resources[role] = self.kme_info[role]["base_url"]
                self.unreachable[role] = cause
            plan += [(role, None, None, None) for role in self.kme_info]
        if self.unreachable:
            n, m = len(self.unreachable), len(plan)
            lines = [f"{self.path}: {n} of {m} instruments unreachable"]
            lines += [
                f"  {role} ({self.resources[role]}): {cause}"
                for role, cause in self.unreachable.items()
            ]
            raise BenchError("\n".join(lines), dict(self.unreachable))
        if measure_latency:  # only on a bench that answered: a timing of failures means nothing
            for role, inst in self.instruments.items():
                self.latency_s[role] = inst.round_trip_s(100)

    def _collect_probes(self) -> None:
        """Wait for every probe (each within its bound; the wait ends at once on Ctrl-C) and
        sort the instruments into answered and unreachable, in bench-file order."""
        late = {}
        for role, probe in self._probes.items():
            left = probe.bound_s - (time.monotonic() - probe.started)
            if not wait_event(probe.done, max(left, 0.0)):
                probe.cancel()
                late[role] = f"did not answer its identification query within {probe.bound_s:g} s"
        for role, probe in self._probes.items():
            if role not in late and probe.answered and probe.inst is not None:
                self.instruments[role] = probe.inst
                self.idn[role] = probe.idn
            else:
                probe.cancel()
                self.unreachable[role] = late.get(role) or probe.cause or "no answer"
        self._probes = {}

    def _record_action(self, instrument: str, command: str) -> None:
        self.actions.append((time.time(), instrument, command))

    # -- access --------------------------------------------------------------------------------
    def __getattr__(self, role: str) -> Any:
        hidden = ("instruments", "broken", "spec", "unreachable", "kmes", "kme_info")
        if role.startswith("_") or role in hidden:
            raise AttributeError(role)
        try:
            return self.get(role)
        except KeyError:
            raise AttributeError(role) from None

    def has(self, role: str) -> bool:
        return role in self.instruments or role in self.kmes

    def get(self, role: str) -> Instrument:
        if role in self.broken:
            raise BenchError(f"{role} is broken: {self.broken[role]}")
        if role in self.kmes:
            return self.kmes[role]
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
        for role, info in self.kme_info.items():  # URL, IDs and file paths: no key material
            snap.setdefault("kmes", {})[role] = {
                k: info[k] for k in ("base_url", "kme_id", "sae_id", "peer_sae_id", "id_field")
            }
        return snap

    # -- closing -------------------------------------------------------------------------------
    def safe_state(self, budget_s: float | None = None) -> list[str]:
        """Source output off, attenuator at maximum; returns what could not be applied, one line
        per instrument (``role (resource): cause``), and logs each. Never raises but on a
        second Ctrl-C.

        Bounded: an instrument whose connection is known lost, or that did not answer when the
        bench was opened, is not waited for again; the others act at once, each in a thread of
        its own, within its timeout or ``budget_s``, whichever is shorter."""
        problems: dict[str, str] = {}
        jobs: dict[str, dict] = {}
        for role in SAFE_STATE_ROLES:
            if role not in self.spec.instruments:
                continue
            inst = self.instruments.get(role)
            why = self.unreachable.get(role) if inst is None else inst.unreachable
            if inst is None and why is None:
                why = "not connected (the bench did not finish opening)"
            if why is not None:
                problems[role] = f"not applied: {why}"
                continue
            budget = inst.timeout_s or 5.0
            if budget_s is not None:
                budget = min(budget, budget_s)
            box: dict = {"budget": budget, "done": threading.Event()}
            thread = threading.Thread(
                target=_apply_safe_state, args=(inst, budget, box), name=f"safe {role}", daemon=True
            )
            thread.start()
            jobs[role] = box
        try:
            for role, box in jobs.items():
                # the deadline inside ends the job; the margin covers the CPU work around it
                if not wait_event(box["done"], box["budget"] + 1.0):
                    problems[role] = f"not applied: did not finish within {box['budget']:g} s"
                elif box.get("error"):
                    problems[role] = f"not applied: {box['error']}"
        except KeyboardInterrupt:
            for role in jobs:
                if role not in problems and not jobs[role]["done"].is_set():
                    problems[role] = "not applied: interrupted again"
            self._log_safe_state(jobs, problems)
            raise
        return self._log_safe_state(jobs, problems)

    def _log_safe_state(self, jobs: dict, problems: dict[str, str]) -> list[str]:
        lines = []
        for role in SAFE_STATE_ROLES:
            resource = self.resources.get(role) or getattr(
                self.spec.instruments.get(role), "resource", "?"
            )
            if role in problems:
                line = f"{role} ({resource}): safe state {problems[role]}"
                log.warning("%s", line)
                lines.append(line)
            elif role in jobs:
                log.info("%s (%s): safe state applied", role, resource)
        return lines

    def close(self, *, interrupted: bool = False) -> None:
        """Safe state (when the bench file asks for it), then close every connection and stop
        the emulator. ``interrupted`` (also set when a Ctrl-C came after the bench was opened):
        the safe state gets at most INTERRUPTED_SAFE_STATE_S per instrument."""
        interrupted = interrupted or _sigint_since(self._opened_at)
        for role, probe in self._probes.items():  # Ctrl-C while opening: stop the probes
            if probe.answered and probe.inst is not None:
                self.instruments[role] = probe.inst  # it answered: it gets its safe state
            else:
                probe.cancel()
                self.unreachable.setdefault(
                    role, "interrupted before it answered its identification query"
                )
        self._probes = {}
        try:
            if self.spec.safe_state:
                self.safe_state(INTERRUPTED_SAFE_STATE_S if interrupted else None)
        finally:
            for inst in self.instruments.values():
                inst.close()
            for client in self.kmes.values():
                client.close()
            if self.emulator is not None:
                self.emulator.stop(timeout_s=2.0 if interrupted else 10.0)
            _unwatch_sigint()

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


def _apply_safe_state(inst: Instrument, budget_s: float, box: dict) -> None:
    try:
        with inst.deadline(budget_s):
            inst.safe_state()
    except Exception as exc:  # noqa: BLE001 - reported, one line per instrument
        box["error"] = getattr(exc, "cause", None) or f"{type(exc).__name__}: {exc}"
    finally:
        box["done"].set()


# -- Ctrl-C --------------------------------------------------------------------------------------
# pytest leaves SIGINT to Python's default handler (KeyboardInterrupt). While a bench is open the
# handler also notes the time, so that the bench's close (run by pytest's teardown, which does not
# say why it runs) knows a Ctrl-C came and keeps the safe state short. The KeyboardInterrupt is
# raised as before.
_sigint_lock = threading.Lock()
_sigint_at: float | None = None
_sigint_users = 0


def _on_sigint(signum, frame):
    global _sigint_at
    _sigint_at = time.monotonic()
    signal.default_int_handler(signum, frame)


def _watch_sigint() -> None:
    global _sigint_users
    if threading.current_thread() is not threading.main_thread():
        return
    with _sigint_lock:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)
        if signal.getsignal(signal.SIGINT) is _on_sigint:
            _sigint_users += 1


def _unwatch_sigint() -> None:
    global _sigint_users
    if threading.current_thread() is not threading.main_thread():
        return
    with _sigint_lock:
        if signal.getsignal(signal.SIGINT) is _on_sigint and _sigint_users > 0:
            _sigint_users -= 1
            if _sigint_users == 0:
                signal.signal(signal.SIGINT, signal.default_int_handler)


def _sigint_since(t: float) -> bool:
    return _sigint_at is not None and _sigint_at >= t
