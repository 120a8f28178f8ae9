"""The emulated bench's shared link state and link clock.

Every emulated instrument changes fields of one :class:`~hil.emulator.physics.LinkParams`; the
tagger advances the link clock in chunks and asks the physics model for the tags of each chunk.
Parameters are constant within a chunk: ramps (attenuator transitions, injected drifts) are
evaluated at chunk boundaries, and scheduled actions split chunks so that they take effect at
exactly their link time. Chunks are 1 ms while a ramp runs; a caller with nothing to resolve
finely (an unpaced acquisition) may ask for longer ones when no ramp runs.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .physics import LinkGenerator, LinkParams

PS = 1_000_000_000_000  # picoseconds per second
DEFAULT_CHUNK_PS = PS // 1000  # 1 ms of link time: the time resolution of ramps and actions
# An unpaced acquisition's chunk while no ramp runs: each generate() call costs ~40 us besides
# its tags (1.5e3 tags per ms at 10 dB), and 10 ms keeps a chunk's arrays small (~1.5e5 tags
# at 0 dB) and commands' effect within 10 ms of link time of their arrival.
LONG_CHUNK_PS = PS // 100


@dataclass
class Ramp:
    """A field moving linearly from ``start`` at ``t0_ps`` towards ``end`` at ``rate`` per s."""

    t0_ps: int
    start: float
    end: float
    rate_per_s: float

    @property
    def t_end_ps(self) -> int:
        if self.rate_per_s <= 0:
            return self.t0_ps
        return self.t0_ps + int(abs(self.end - self.start) / self.rate_per_s * PS)

    def value(self, t_ps: int) -> float:
        if t_ps >= self.t_end_ps:
            return self.end
        frac = (t_ps - self.t0_ps) / max(self.t_end_ps - self.t0_ps, 1)
        return self.start + (self.end - self.start) * max(frac, 0.0)


class Link:
    """Link clock, parameters, ramps and scheduled actions of one emulated bench."""

    def __init__(
        self,
        params: LinkParams | None = None,
        chunk_ps: int = DEFAULT_CHUNK_PS,
        sampling_threads: int = 1,
    ):
        self.params = params or LinkParams()
        self.lock = threading.RLock()
        self.now_ps = 0
        self.chunk_ps = chunk_ps
        self.generator = LinkGenerator(self.params, sampling_threads=sampling_threads)
        self._ramps: dict[tuple[str, int | None], Ramp] = {}
        self._schedule: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    # -- parameters ------------------------------------------------------------------------
    def get(self, name: str, index: int | None = None):
        with self.lock:
            value = getattr(self.params, name)
            return value if index is None else value[index]

    def set(self, name: str, value, index: int | None = None) -> None:
        """Set a parameter now (cancels a ramp on it)."""
        with self.lock:
            self._ramps.pop((name, index), None)
            self._assign(name, value, index)

    def _assign(self, name: str, value, index: int | None) -> None:
        if index is not None:
            seq = list(getattr(self.params, name))
            seq[index] = value
            value = tuple(seq)
        self.params = dataclasses.replace(self.params, **{name: value})

    def ramp(self, name: str, end: float, rate_per_s: float, index: int | None = None) -> int:
        """Move a parameter linearly to ``end`` at ``rate_per_s``; returns the end link time."""
        with self.lock:
            start = float(self.get(name, index))
            r = Ramp(self.now_ps, start, float(end), abs(float(rate_per_s)))
            if r.t_end_ps <= self.now_ps:
                self.set(name, end, index)
                return self.now_ps
            self._ramps[(name, index)] = r
            return r.t_end_ps

    def ramp_end_ps(self, name: str, index: int | None = None) -> int:
        with self.lock:
            r = self._ramps.get((name, index))
            return r.t_end_ps if r else self.now_ps

    def at(self, t_ps: int, action: Callable[[], None]) -> None:
        """Run ``action`` (under the link lock) when the link clock reaches ``t_ps``."""
        with self.lock:
            if t_ps <= self.now_ps:
                action()
            else:
                heapq.heappush(self._schedule, (int(t_ps), next(self._seq), action))

    def _apply_ramps(self, t_ps: int) -> None:
        for (name, index), r in list(self._ramps.items()):
            self._assign(name, r.value(t_ps), index)
            if t_ps >= r.t_end_ps:
                del self._ramps[(name, index)]

    def _run_due(self) -> None:
        while self._schedule and self._schedule[0][0] <= self.now_ps:
            _, _, action = heapq.heappop(self._schedule)
            action()

    def _next_boundary(self, t_stop_ps: int, chunk_ps: int | None) -> int:
        if chunk_ps is None or self._ramps:
            chunk_ps = self.chunk_ps  # ramps stay smooth: evaluated every chunk_ps
        t = min(self.now_ps + chunk_ps, t_stop_ps)
        if self._schedule:
            t = min(t, self._schedule[0][0])
        return max(t, self.now_ps + 1)

    # -- the clock -------------------------------------------------------------------------
    def step(self, t_stop_ps: int, generate: bool = True, long_chunk_ps: int | None = None):
        """Advance the clock by one chunk towards ``t_stop_ps``; returns that chunk's tags.

        ``long_chunk_ps``: the chunk length to use while no ramp runs (default: ``chunk_ps``
        always); scheduled actions split chunks either way."""
        with self.lock:
            self._run_due()
            t0 = self.now_ps
            t1 = self._next_boundary(t_stop_ps, long_chunk_ps)
            # ramps are evaluated at the chunk's middle so a ramp's mean loss is right
            self._apply_ramps((t0 + t1) // 2)
            params = self.params
        if generate:
            ts, ch = self.generator.generate(params, t0, t1)
        else:
            ts, ch = np.empty(0, np.int64), np.empty(0, np.uint8)
        with self.lock:
            self.now_ps = t1
            if not generate:
                self._apply_ramps(t1)
            self._run_due()
        return ts, ch

    def idle_until(self, t_stop_ps: int) -> None:
        """Let link time pass with nobody recording (e.g. ``*OPC?`` waiting for a transition)."""
        while self.now_ps < t_stop_ps:
            with self.lock:
                # jump straight to the next event: nothing is generated while idle
                t = t_stop_ps
                if self._schedule:
                    t = min(t, self._schedule[0][0])
                self.now_ps = max(t, self.now_ps)
                self._apply_ramps(self.now_ps)
                self._run_due()
