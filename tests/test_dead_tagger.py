"""A tagger that dies mid-capture: the emulator process is SIGKILLed at 10 random moments of a
capture (while tags stream, while the clock stands at a hold point for an action). Each time
acquire() ends within the tagger's timeout with one line naming the tagger, its resource and
the cause, and the capture file is closed: it opens with plain h5py, holds every tag that
arrived and says it is incomplete."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import h5py
import pytest

from hil.bench import Bench
from hil.capture import acquire
from hil.fixtures.procedures import link_up
from hil.instruments.base import InstrumentError
from hil.store import open_capture

TAGGER_TIMEOUT_S = 3.0
BENCH = f"""\
name: emulated-short-timeouts
emulator:
  seed: 1
instruments:
  source: {{resource: emulator, timeout_s: 2}}
  attenuator: {{resource: emulator, timeout_s: 2}}
  switch: {{resource: emulator, timeout_s: 2}}
  tagger: {{resource: emulator, timeout_s: {TAGGER_TIMEOUT_S}}}
"""
CAPTURE_S = 0.8  # of link time, at wall-clock pace: the kills spread over the whole capture


def _capture_and_kill(bench_file, path, kill_after_s: float | None) -> int:
    """One capture with the emulator SIGKILLed ``kill_after_s`` wall s after the first tags
    arrived (None: by the action, while the tagger holds its clock for it); checks how it
    ended and returns the number of tags that arrived."""
    bench = Bench.open(bench_file, measure_latency=False)
    try:
        link_up(bench, 10)
        resource = bench.tagger.resource_name
        arrived = [0]
        killed_at: list[float] = []

        def kill(pid=bench.emulator.pid):
            os.kill(pid, signal.SIGKILL)
            killed_at.append(time.monotonic())

        timer = threading.Timer(kill_after_s or 0.0, kill)

        def count(ts, ch):
            if not arrived[0] and kill_after_s is not None:
                timer.start()
            arrived[0] += len(ts)

        try:
            with pytest.raises(InstrumentError) as err:
                acquire(
                    bench,
                    path,
                    CAPTURE_S,
                    actions=[(0.4, kill if kill_after_s is None else lambda: None, "action")],
                    pace=1.0,
                    progress=False,
                    on_chunk=count,
                )
            ended = time.monotonic()
        finally:
            timer.cancel()
        assert killed_at, "the capture ended before the kill"
        assert ended - killed_at[0] <= TAGGER_TIMEOUT_S
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("tagger:") and resource in msg, msg
        assert err.value.unreachable, msg  # the cause: the connection, not an error it sent
    finally:
        bench.close()
    return arrived[0]


def test_killed_emulator_ends_the_capture_within_the_tagger_timeout(tmp_path):
    bench_file = tmp_path / "bench.yaml"
    bench_file.write_text(BENCH)
    rng = random.Random(14)
    for trial in range(10):
        # moments over the streaming, two while the clock stands for the action at 0.4 s
        kill_after_s = None if trial in (3, 7) else rng.uniform(0.0, CAPTURE_S)
        path = tmp_path / f"capture{trial}.h5"
        arrived = _capture_and_kill(bench_file, path, kill_after_s)
        with h5py.File(path, "r") as f:  # closed properly: plain h5py opens it
            assert len(f["photon_data/timestamps"]) == arrived, trial
        with open_capture(path) as f:
            assert not f.complete, trial
            assert f.n_tags == arrived, trial
            errors = [d for _, k, d in f.events() if k == "capture-error"]
            assert errors and "tagger" in errors[0], (trial, f.events())
