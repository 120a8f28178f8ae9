"""Acquisition: stream tags from the tagger into a capture file, with events and a snapshot."""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .store import CaptureWriter

MARKER_CHANNEL = 8


@dataclass
class Capture:
    """What one acquisition produced (the tags themselves stay in the file)."""

    path: Path
    duration_s: float
    n_tags: int
    counts: np.ndarray  # per tagger channel
    t_start_ps: int
    t_stop_ps: int
    data_lost: bool
    events: list[tuple[int, str, str]] = field(default_factory=list)

    def rate_hz(self, channel: int) -> float:
        return float(self.counts[channel]) / self.duration_s


class _Progress:
    """A one-line progress display on a terminal, for acquisitions longer than a few s."""

    def __init__(self, duration_s: float, enabled: bool):
        self.on = enabled and duration_s >= 3 and sys.stderr.isatty()
        self.duration_s = duration_s
        self._last = 0.0

    def update(self, link_s: float, n_tags: int) -> None:
        if self.on and time.monotonic() - self._last > 0.25:
            self._last = time.monotonic()
            frac = min(link_s / self.duration_s, 1.0)
            bar = "#" * int(30 * frac)
            sys.stderr.write(
                f"\r  capture [{bar:<30}] {link_s:7.2f}/{self.duration_s:g} s "
                f"{n_tags / 1e6:8.2f} Mtags"
            )
            sys.stderr.flush()

    def done(self) -> None:
        if self.on:
            sys.stderr.write("\n")


def acquire(
    bench,
    path: str | Path,
    duration_s: float,
    *,
    actions: list[tuple[float, Callable[[], None], str]] | None = None,
    pace: float | None = None,
    progress: bool = True,
    on_chunk=None,
) -> Capture:
    """Acquire ``duration_s`` of link time from the bench's tagger into ``path``.

    ``actions``: (link time offset s, callable, description) run while acquiring once the
    tagger's link time passes the offset; each is written into the capture as an event, timed by
    a software marker in the tag stream itself. With actions, an emulated bench runs at
    wall-clock pace unless ``pace`` says otherwise. ``on_chunk(ts, ch)`` sees every chunk (the link
    monitor uses it).
    """
    tagger = bench.tagger
    writer = CaptureWriter(path, snapshot=bench.snapshot())
    pending = sorted(actions or [], key=lambda a: a[0])
    labels: deque[tuple[str, str]] = deque()  # one per marker the tagger will return
    events: list[tuple[int, str, str]] = []
    progress_bar = _Progress(duration_s, progress)
    t_start = int(tagger.link_time_s() * 1e12)
    t_last = None
    ok = False
    try:
        if pace is None:  # with actions, emulated link time at wall-clock pace: they land on time
            pace = 1.0 if pending else 0.0
        tagger.start(duration_s, pace=pace if bench.emulated else None)
        for ts, ch in tagger.stream():
            t_last = int(ts[-1])
            # the writer counts the chunk's channels anyway: look for markers only in a chunk
            # that has some (a pass over the chunk less per chunk)
            if writer.append(ts, ch)[MARKER_CHANNEL]:
                for i in np.flatnonzero(ch == MARKER_CHANNEL):
                    kind, what = labels.popleft() if labels else ("marker", "")
                    events.append((int(ts[i]), kind, what))
                    writer.add_event(*events[-1])
            if on_chunk is not None:
                on_chunk(ts, ch)
            link_s = (t_last - t_start) * 1e-12
            progress_bar.update(link_s, writer.n_tags)
            if pending:
                # fire on the tagger's clock, not on the tags consumed so far (the consumer
                # may lag behind the acquisition)
                now_s = tagger.link_time_s() - t_start * 1e-12
                while pending and now_s >= pending[0][0]:
                    offset, fn, what = pending.pop(0)
                    if tagger.status() != "RUNNING":
                        raise RuntimeError(
                            f"action {what!r} at {offset:g} s came after the acquisition "
                            f"ended ({duration_s:g} s): lengthen the capture"
                        )
                    # the action takes effect between the link time read just before it
                    # (kept as "action-issued") and its marker in the tag stream ("action")
                    issued = (int(round(now_s * 1e12)) + t_start, "action-issued", what)
                    fn()
                    tagger.mark()
                    labels.append(("action", what))
                    events.append(issued)
                    writer.add_event(*issued)
        lost = tagger.data_lost()
        ok = True
    finally:
        progress_bar.done()
        t_stop = int(tagger.link_time_s() * 1e12) if ok else (t_last or t_start)
        writer.close(complete=ok, duration_s=(t_stop - t_start) * 1e-12)
    return Capture(
        Path(path),
        (t_stop - t_start) * 1e-12,
        writer.n_tags,
        writer.counts,  # counted once, by the writer (it stores them in /setup/detectors)
        t_start,
        t_stop,
        lost,
        events,
    )
