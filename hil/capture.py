"""Acquisition: stream tags from the tagger into a capture file, with events and a snapshot.

Actions during an acquisition (a fault, a setting change) must land at the link time the plan
asks for, whatever the load of the machine running the plan:

- On an emulated bench the tagger stops its link clock at a hold point at each action's
  offset (``ACQ:HOLD``, see emulator/README.md, Tagger). Once every tag before the hold is
  drained, the actions run, a marker is placed and "action-issued" is recorded at exactly the
  held link time; then the clock runs on. Instrument commands sent while the clock stands take
  effect at that link time. The emulated link runs as fast as it can (no wall-clock pace).
- On a real bench link time runs with the wall clock: actions fire when the tagger's clock
  has passed their offset. One that could not be issued within ``action_tolerance_s`` of its
  asked time (or not before the acquisition ended) raises :class:`BenchTimingError`, a fault of
  the bench rather than a result about the link; the capture records it as an event.

A tagger that stops answering ends the capture with its error (never an unbounded wait: every
query has the instrument's timeout, and nothing is asked of a tagger found unreachable); the
file is closed holding the tags that arrived, marked incomplete.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .roles import MARKER_CHANNEL  # the channel map, defined in hil.roles
from .store import CaptureWriter, count_channels, count_descents
from .telemetry.events import emit

# How late an action may be issued on a real bench (s of link time after its asked time): a
# control-plane round trip is ~1 ms and a fetch of 1e6 tags ~10 ms, so 50 ms is only exceeded
# by a consumer that lags (a busy machine).
DEFAULT_ACTION_TOLERANCE_S = 0.05
# Wall-clock s an emulated hold waits for the capture to continue before the tagger ends the
# acquisition on its own (a capture that died must not hold the emulator forever).
HOLD_TIMEOUT_S = 30.0


class BenchTimingError(RuntimeError):
    """An action could not be issued at the link time asked for: an error of the bench (its
    control loop lagged), not a result about the link."""

    def __init__(self, what: str, asked_s: float, achieved_s: float | None, detail: str):
        self.what, self.asked_s, self.achieved_s = what, asked_s, achieved_s
        super().__init__(
            f"bench timing: action {what!r} asked {asked_s:g} s into the capture {detail}"
        )


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


def warm_kernels() -> None:
    """Compile (or load from numba's cache) the writer's kernels, for the array types a tag
    block gives, before an acquisition's clock starts: a cold compile takes seconds, and in
    the acquisition loop it would hold up the actions."""
    count_channels(np.zeros(2, np.uint8))
    count_descents(np.zeros(2, np.int64))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def acquire(
    bench,
    path: str | Path,
    duration_s: float,
    *,
    actions: list[tuple[float, Callable[[], None], str]] | None = None,
    pace: float | None = None,
    progress: bool = True,
    on_chunk=None,
    action_tolerance_s: float = DEFAULT_ACTION_TOLERANCE_S,
    hold_timeout_s: float = HOLD_TIMEOUT_S,
) -> Capture:
    """Acquire ``duration_s`` of link time from the bench's tagger into ``path``.

    ``actions``: (link time offset s, callable, description), each offset within
    [0, ``duration_s``). Each action is written into the capture twice: "action-issued" at the
    link time it was issued and "action" at its software marker in the tag stream. On an
    emulated bench the tagger holds its clock at each offset while the action runs, so both
    are the asked link time exactly, independent of load and compilation; on a real bench the
    action follows the tagger's clock, and one later than ``action_tolerance_s`` raises
    :class:`BenchTimingError` (see the module docstring).

    ``pace``: emulated link time per wall time (default 0: as fast as the emulator can).
    ``on_chunk(ts, ch)`` sees every chunk (the link monitor uses it).
    """
    tagger = bench.tagger
    pending = sorted(actions or [], key=lambda a: a[0])
    for offset, _, what in pending:
        if not 0 <= offset < duration_s:
            raise ValueError(
                f"action {what!r} at {offset:g} s lies outside the capture (0 to "
                f"{duration_s:g} s of link time)"
            )
    use_holds = bool(pending) and bench.emulated
    warm_kernels()
    writer = CaptureWriter(path, snapshot=bench.snapshot())
    labels: deque[tuple[str, str]] = deque()  # one per marker the tagger will return
    events: list[tuple[int, str, str]] = []
    progress_bar = _Progress(duration_s, progress)
    t_start = t_last = None
    ok = started = False
    error: BaseException | None = None
    # one hold per distinct offset, to the ps (offsets that differ by float noise are one)
    hold_offsets_ps = sorted({round(a[0] * 1e12) for a in pending})

    def issue(t_ps: int, fn: Callable[[], None], what: str) -> None:
        # the action takes effect between the link time read just before it (kept as
        # "action-issued") and its marker in the tag stream ("action"); with a hold both are
        # the held link time
        issued = (t_ps, "action-issued", what)
        emit("action", link_time_s=(t_ps - t_start) * 1e-12, what=what, capture=Path(path).name)
        fn()
        tagger.mark()
        labels.append(("action", what))
        events.append(issued)
        writer.add_event(*issued)

    last_held: list[int] = []

    def on_hold() -> None:
        # holds are reached in order, one per distinct offset: the k-th is hold_offsets_ps[k]
        t_held = tagger.held_time_ps()
        if last_held and t_held == last_held[-1]:
            return  # a status from before the last ACQ:CONT took effect: not a new hold
        last_held.append(t_held)
        offset_ps = hold_offsets_ps.pop(0)
        while pending and round(pending[0][0] * 1e12) <= offset_ps:
            _, fn, what = pending.pop(0)
            issue(t_held, fn, what)
        tagger.resume()

    try:
        t_start = tagger.link_time_ps()
        if use_holds:
            tagger.set_holds([t * 1e-12 for t in hold_offsets_ps], timeout_s=hold_timeout_s)
        tagger.start(duration_s, pace=(pace or 0.0) if bench.emulated else None)
        started = True
        for ts, ch in tagger.stream(on_hold=on_hold if use_holds else None):
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
            progress_bar.update((t_last - t_start) * 1e-12, writer.n_tags)
            if pending and not use_holds:
                # fire on the tagger's clock, not on the tags consumed so far (the consumer
                # may lag behind the acquisition)
                now_ps = tagger.link_time_ps()
                while pending and now_ps - t_start >= pending[0][0] * 1e12:
                    offset, fn, what = pending.pop(0)
                    late_s = (now_ps - t_start) * 1e-12 - offset
                    if tagger.status() != "RUNNING":
                        raise BenchTimingError(
                            what,
                            offset,
                            None,
                            f"could not be issued before the acquisition ended "
                            f"({duration_s:g} s): the bench's control loop lagged",
                        )
                    if late_s > action_tolerance_s:
                        raise BenchTimingError(
                            what,
                            offset,
                            offset + late_s,
                            f"could only be issued at {offset + late_s:g} s ({late_s * 1e3:.0f}"
                            f" ms late, tolerance {action_tolerance_s * 1e3:g} ms): the "
                            "bench's control loop lagged",
                        )
                    issue(now_ps, fn, what)
        if pending:
            offset, _, what = pending[0]
            if use_holds and tagger.hold_expired():
                detail = (
                    f"was not reached: the tagger ended its hold after {hold_timeout_s:g} s "
                    "without the capture continuing"
                )
            else:
                detail = f"could not be issued before the acquisition ended ({duration_s:g} s)"
            raise BenchTimingError(what, offset, None, detail)
        lost = tagger.data_lost()
        t_stop = tagger.link_time_ps()
        loss_counts = getattr(tagger, "loss_counts", None)  # optional in the tagger interface
        if lost and loss_counts is not None:  # what was lost, in the file's data-loss record
            detail = ", ".join(f"{k} {v}" for k, v in loss_counts().items())
            events.append((t_stop, "data-loss", detail))
            writer.add_event(*events[-1])
        ok = True
    except BaseException as exc:
        error = exc
        raise
    finally:
        progress_bar.done()
        if not ok:
            t_start = t_start or 0  # None: the tagger failed before its clock was read
            t_stop = t_last or t_start
            if error is not None:
                # recorded in the file: a reader sees why it is incomplete
                writer.add_event(t_stop, "capture-error", _one_line(error))
            # a tagger left running (or held) would refuse the next acquisition; one that
            # stopped answering is not asked again (each query would wait out its timeout)
            dead = getattr(error, "unreachable", False) and (
                getattr(error, "instrument", None) == getattr(tagger, "name", None)
            )
            if started and not dead:
                try:
                    tagger.stop()
                except Exception:  # noqa: BLE001 - the capture's own error is the one to report
                    pass
        writer.close(complete=ok, duration_s=(t_stop - t_start) * 1e-12)
        emit(
            "capture",
            link_time_s=(t_stop - t_start) * 1e-12,
            capture=Path(path).name,
            complete=ok,
            n_tags=writer.n_tags,
            data_lost=bool(lost) if ok else None,
            error=_one_line(error) if error is not None else None,
        )
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
