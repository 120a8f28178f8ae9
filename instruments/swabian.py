"""Swabian Instruments Time Tagger 20 / Ultra / X adapter (tagger role) over the vendor's Python
API: ``pip install 'qkd-hil[swabian]'`` installs ``swabian-timetagger`` (proprietary; never
bundled with qkd-hil). The API is imported as ``Swabian.TimeTagger`` or, on older installs,
``TimeTagger``.

Resource: ``swabian:<serial>`` (USB; ``swabian:`` alone opens the first tagger found) or
``swabian:<host>:<port>`` (a network tagger's hardware server, port 41101 by default).

Tags come from a ``TimeTagStream`` on the mapped channels (``INPUTS``: channel 1 the source's
sync, 2..5 detectors H, V, D, A; rising edges). Event types other than time tags go into the
capture's data-loss record: 1 error, 2/3 overflow begin/end, 4 missed events (their counts,
``getMissedEvents``). Software markers are inserted by the adapter. The on-board test signal is
the self-test. Hold points do not exist on hardware; the link clock is the latest tag.

What was tested, plainly: nothing can create a Swabian tagger without the hardware (the virtual
tagger needs a licence fetched while a real one is attached), so this adapter is tested against
a stand-in module written from the documented API (tests/instruments/swabian_standin.py), and,
where the real package installs, opening with no hardware is checked to give one clear line.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from hil.roles import MARKER_CHANNEL

from .base import InstrumentError, InstrumentTimeout, InstrumentUnreachable, strict_range

_RESOURCE = re.compile(
    r"^swabian:(?:(?P<serial>[A-Za-z0-9]*)|(?P<host>[A-Za-z0-9_.\-]+):(?P<port>\d{1,5}))$"
)
MAX_EVENTS = 4_000_000  # TimeTagStream buffer: bounded memory on the vendor side too
TAG, ERROR, OVERFLOW_BEGIN, OVERFLOW_END, MISSED = 0, 1, 2, 3, 4
INSTALL_HINT = "pip install 'qkd-hil[swabian]' (swabian-timetagger, proprietary)"


def import_api(names: tuple[str, ...] = ("Swabian.TimeTagger", "TimeTagger")) -> Any:
    """The vendor's module, or InstrumentUnreachable naming how to install it."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    cause = f"the Swabian Time Tagger API is not installed: {INSTALL_HINT}"
    raise InstrumentUnreachable("tagger", "import TimeTagger", cause, cause)


class SwabianTimeTagger:
    """Swabian Time Tagger as the tagger role (see the module docstring)."""

    roles = ("tagger",)
    name: str
    resource_name: str
    INPUTS: dict[int, int] = {0: 1, 1: 2, 2: 3, 3: 4, 4: 5}  # hil.roles channel -> input
    api_names = ("Swabian.TimeTagger", "TimeTagger")

    def __init__(self, resource: str, name: str | None = None, *, timeout_s: float = 5.0, **kw):
        self.name = name or "tagger"
        self.resource_name = resource
        self._timeout_s = float(timeout_s)
        self._local = threading.local()
        m = _RESOURCE.match(resource or "")
        if not m:
            raise ValueError(f"{resource!r} is not swabian:<serial> or swabian:<host>:<port>")
        self.tt = import_api(self.api_names)
        try:
            if m["host"]:
                self.tagger = self.tt.createTimeTaggerNetwork(f"{m['host']}:{m['port']}")
            else:
                self.tagger = self.tt.createTimeTagger(m["serial"] or "")
        except Exception as exc:  # noqa: BLE001 - the vendor raises RuntimeError and others
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            cause = f"no Swabian Time Tagger opened ({resource}): {text}"
            raise InstrumentUnreachable(self.name, "createTimeTagger", cause, cause) from None
        self._lost: str | None = None
        self._enabled = set(self.INPUTS)
        self._inverse = {v: k for k, v in self.INPUTS.items()}
        self._stream = None
        self._marks: list[int] = []
        self._last_ps = 0
        self._end_by = 0.0
        self.overflows = self.missed_events = self.errors = 0

    # -- Driver ----------------------------------------------------------------------------
    @property
    def idn(self) -> str:
        return f"Swabian Instruments,{self.tagger.getModel()},{self.tagger.getSerial()}"

    @property
    def unreachable(self) -> str | None:
        return self._lost

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        old = getattr(self._local, "deadline", None)
        self._local.deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.deadline = old

    def round_trip_s(self, n: int = 100) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.tagger.getSerial()
            times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]

    def settings(self) -> dict:
        return {"inputs": {str(c): self.input_settings(c) for c in self.INPUTS}}

    def safe_state(self) -> None:
        self.stop()

    def close(self) -> None:
        self.stop()
        if self._lost is None:
            self._lost = "the connection was closed by this program"
            with contextlib.suppress(Exception):
                self.tt.freeTimeTagger(self.tagger)

    # -- inputs ----------------------------------------------------------------------------
    def _input(self, channel: int) -> int:
        if channel not in self.INPUTS:
            raise ValueError(f"channel {channel} has no Time Tagger input (INPUTS)")
        return self.INPUTS[channel]

    def set_input(
        self,
        channel: int,
        *,
        enabled: bool | None = None,
        threshold_v: float | None = None,
        delay_s: float | None = None,
    ) -> None:
        n = self._input(channel)
        if enabled is not None:
            (self._enabled.add if enabled else self._enabled.discard)(channel)
        if threshold_v is not None:
            strict_range(threshold_v, (-2.5, 2.5))
            self.tagger.setTriggerLevel(n, float(threshold_v))
        if delay_s is not None:
            strict_range(delay_s, (-1e-6, 1e-6))
            self.tagger.setInputDelay(n, round(delay_s * 1e12))

    def input_settings(self, channel: int) -> dict:
        n = self._input(channel)
        return {
            "enabled": channel in self._enabled,
            "threshold_v": float(self.tagger.getTriggerLevel(n)),
            "delay_s": self.tagger.getInputDelay(n) * 1e-12,
        }

    # -- acquisition -----------------------------------------------------------------------
    def link_time_ps(self) -> int:
        return self._last_ps

    def link_time_s(self) -> float:
        return self._last_ps * 1e-12

    def start(self, duration_s: float, pace: float | None = None) -> None:
        strict_range(duration_s, (1e-6, 86400.0))
        channels = [self.INPUTS[c] for c in sorted(self._enabled)]
        self._stream = self.tt.TimeTagStream(self.tagger, MAX_EVENTS, channels)
        self._marks, self.overflows, self.missed_events, self.errors = [], 0, 0, 0
        self._end_by = time.monotonic() + duration_s + self._timeout_s
        self._stream.startFor(round(duration_s * 1e12))

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()

    def status(self) -> str:
        return "RUNNING" if self._stream is not None and self._stream.isRunning() else "DONE"

    def mark(self) -> None:
        self._marks.append(self._last_ps)

    def data_lost(self) -> bool:
        return bool(self.overflows or self.missed_events or self.errors)

    def loss_counts(self) -> dict[str, int]:
        return {
            "overflows": self.overflows,
            "missed_events": self.missed_events,
            "errors": self.errors,
        }

    def _block(self, buf) -> tuple[np.ndarray, np.ndarray]:
        ts = np.asarray(buf.getTimestamps(), dtype=np.int64)
        ch = np.asarray(buf.getChannels())
        et = np.asarray(buf.getEventTypes())
        if len(et) and np.any(et != TAG):
            self.errors += int(np.count_nonzero(et == ERROR))
            self.overflows += int(np.count_nonzero(et == OVERFLOW_BEGIN))
            missed = np.asarray(buf.getMissedEvents())
            self.missed_events += int(missed[et == MISSED].sum())
            keep = et == TAG
            ts, ch = ts[keep], ch[keep]
        lut = np.full(256, 255, np.uint8)  # input -> channel map; unmapped inputs dropped
        for n, c in self._inverse.items():
            lut[n] = c
        mapped = lut[np.clip(ch, 0, 255)]  # falling edges (negative) are not mapped
        keep = (mapped != 255) & (ch > 0)
        return ts[keep], mapped[keep]

    def stream(
        self,
        poll_s: float = 0.002,
        max_poll_s: float = 0.016,
        on_hold: Callable[[], None] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (timestamps ps, channels) blocks until the stream has ended and is drained."""
        if self._stream is None:
            raise InstrumentError(self.name, "stream", "no acquisition started")
        wait = poll_s
        while True:
            running = self._stream.isRunning()
            ts, ch = self._block(self._stream.getData())
            if self._marks:
                t = np.asarray(self._marks, np.int64)
                self._marks = []
                at = np.searchsorted(ts, t, side="right")
                ts = np.insert(ts, at, t)
                ch = np.insert(ch, at, np.uint8(MARKER_CHANNEL))
            if len(ts):
                self._last_ps = int(ts[-1])
                wait = poll_s
                yield ts, ch
                continue
            if not running:
                return  # empty after it stopped: drained
            if time.monotonic() > self._end_by:
                cause = "the TimeTagStream ran past its duration plus the timeout"
                raise InstrumentTimeout(self.name, "TimeTagStream", cause, cause)
            time.sleep(wait)
            wait = min(2 * wait, max_poll_s)

    # -- self-test -------------------------------------------------------------------------
    def self_test(self, duration_s: float = 0.01) -> dict:
        """The on-board test signal on the sync input: tags at a steady period come back."""
        n = self.INPUTS[0]
        self.tagger.setTestSignal([n], True)
        try:
            self.start(duration_s)
            ts = np.concatenate([t[c == 0] for t, c in self.stream()] or [np.empty(0, np.int64)])
        finally:
            self.tagger.setTestSignal([n], False)
        d = np.diff(ts)
        ok = len(d) > 10 and float(np.std(d)) < 0.01 * float(np.mean(d))
        return {"ok": ok, "pulses": int(len(ts)), "period_ps": float(np.mean(d)) if len(d) else 0}
