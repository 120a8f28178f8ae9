"""acquire() streams a tagger into a valid capture: a stand-in tagger (no emulator) with a
known stream, a marker per action, an action issued too late on a real bench's clock, and a
tagger that dies halfway. (The emulated tagger's hold points: tests/test_fault_timing.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from phvalidate import validate

from hil.capture import MARKER_CHANNEL, BenchTimingError, acquire
from hil.store import open_capture


class FakeTagger:
    """Serves a fixed stream in chunks; a mark() puts a marker tag into the next chunk."""

    def __init__(self, n_chunks=6, chunk=10_000, fail_after=None):
        self.n_chunks, self.chunk, self.fail_after = n_chunks, chunk, fail_after
        self.now_ps = 0
        self.marks = 0
        self.stopped = False

    def link_time_s(self):
        return self.now_ps * 1e-12

    def link_time_ps(self):
        return self.now_ps

    def start(self, duration_s, pace=None):
        self.duration_ps = int(duration_s * 1e12)

    def mark(self):
        self.marks += 1

    def data_lost(self):
        return False

    def status(self):
        return "RUNNING" if self.now_ps < self.duration_ps else "DONE"

    def stop(self):
        self.stopped = True

    def stream(self, on_hold=None):
        step = self.duration_ps // (self.n_chunks * self.chunk)
        for k in range(self.n_chunks):
            if self.fail_after is not None and k == self.fail_after:
                raise ConnectionError("tagger connection lost")
            i = np.arange(k * self.chunk, (k + 1) * self.chunk, dtype=np.int64)
            ts, ch = i * step, (i % 5).astype(np.uint8)
            if self.marks:
                ch[-self.marks :] = MARKER_CHANNEL
                self.marks = 0
            self.now_ps = int(ts[-1]) + step
            yield ts, ch


class FakeBench:
    """A real bench's view (no hold points): actions follow the tagger's clock."""

    emulated = False

    def __init__(self, tagger):
        self.tagger = tagger

    def snapshot(self):
        return {
            "bench_name": "fake",
            "instruments": {"source": {"idn": "FAKE", "settings": {"clock_hz": 1e9}}},
        }


def test_acquire_writes_a_valid_complete_capture(tmp_path):
    path = tmp_path / "cap.h5"
    seen = []
    actions = [(0.2, lambda: None, "attenuation 20 dB"), (0.6, lambda: None, "fiber cut")]
    cap = acquire(
        FakeBench(FakeTagger()),
        path,
        1.0,
        actions=actions,
        progress=False,
        on_chunk=lambda ts, ch: seen.append(len(ts)),
        action_tolerance_s=0.2,  # this tagger's clock moves in steps of 1/6 s
    )
    assert cap.n_tags == 60_000 == sum(seen)
    # each action: its issue time (tagger clock read before it) and its marker in the stream
    issued = {d: t for t, k, d in cap.events if k == "action-issued"}
    marked = {d: t for t, k, d in cap.events if k == "action"}
    assert list(issued) == list(marked) == ["attenuation 20 dB", "fiber cut"]
    assert all(issued[d] <= marked[d] for d in issued)
    with open_capture(path) as f:
        assert f.complete
        assert f.n_tags == cap.n_tags
        assert f.events() == cap.events
        assert f.counts() == {int(c): int(n) for c, n in enumerate(cap.counts) if n}
        assert f.duration_s == pytest.approx(cap.duration_s)
    validate([path])


def test_acquire_interrupted_leaves_incomplete_capture(tmp_path):
    path = tmp_path / "cap.h5"
    with pytest.raises(ConnectionError):
        acquire(FakeBench(FakeTagger(fail_after=3)), path, 1.0, progress=False)
    with open_capture(path) as f:
        assert not f.complete
        assert f.n_tags == 30_000  # the three chunks received before the failure


def test_late_action_is_a_bench_timing_error_recorded_in_the_capture(tmp_path):
    """The fake tagger's clock moves in steps of 1/6 s: an action asked at 0.2 s is issued
    at 0.333 s at the earliest, beyond a 50 ms tolerance: a bench error naming both times,
    not a result; the file says why it stopped."""
    path = tmp_path / "cap.h5"
    tagger = FakeTagger()
    with pytest.raises(BenchTimingError) as err:
        acquire(
            FakeBench(tagger),
            path,
            1.0,
            actions=[(0.2, lambda: pytest.fail("a late action must not run"), "fiber cut")],
            progress=False,
            action_tolerance_s=0.05,
        )
    msg = str(err.value)
    assert "\n" not in msg
    assert "'fiber cut' asked 0.2 s into the capture" in msg and "at 0.333333 s" in msg, msg
    assert err.value.asked_s == 0.2 and err.value.achieved_s == pytest.approx(1 / 3)
    assert tagger.stopped  # not left running for the next acquisition
    with open_capture(path) as f:
        assert not f.complete
        kinds = [(k, d) for _, k, d in f.events()]
        assert ("capture-error", f"BenchTimingError: {msg}"[:200]) in kinds, kinds


def test_action_outside_the_capture_is_refused_before_it_starts(tmp_path):
    with pytest.raises(ValueError, match=r"'restore' at 2\.5 s lies outside the capture"):
        acquire(
            FakeBench(FakeTagger()),
            tmp_path / "cap.h5",
            2.0,
            actions=[(2.5, lambda: None, "restore")],
            progress=False,
        )
    assert not (tmp_path / "cap.h5").exists()
