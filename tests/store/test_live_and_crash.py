"""A second process reads a capture while it grows (SWMR); a writer killed with SIGKILL leaves a
file that opens, says it is incomplete, and holds every tag flushed before the kill."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from store_child import expected_tags

from hil.cli import main as hil_main
from hil.store import CaptureWriter, open_capture

CHILD = Path(__file__).with_name("store_child.py")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and SWMR on POSIX")


def start_child(path, chunk, period_s, mode):
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(chunk), str(period_s), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"writer child did not start: {line!r}")
    return proc


def test_reader_sees_capture_grow_while_written(tmp_path):
    path = tmp_path / "live.h5"
    proc = start_child(path, 10_000, 0.05, "close")
    try:
        seen = []
        with open_capture(path) as cap:  # opened while the writer is running
            deadline = time.monotonic() + 20
            while len(set(seen)) < 5 and time.monotonic() < deadline:
                n = cap.n_tags
                seen.append(n)
                assert not cap.complete
                if n:  # what is visible is exactly what the writer wrote
                    ts, ch = cap.tags()
                    exp_ts, exp_ch = expected_tags(0, len(ts))
                    np.testing.assert_array_equal(ts, exp_ts)
                    np.testing.assert_array_equal(ch, exp_ch)
                time.sleep(0.03)
            assert seen == sorted(seen), "the tag count went backwards"
            assert len(set(seen)) >= 5, f"reader saw no growth: {seen}"
            proc.stdin.write("close\n")
            proc.stdin.flush()
            out = proc.stdout.read()
            assert proc.wait(20) == 0
            assert "closed" in out
            n_written = int(out.split()[-2])
            assert cap.complete  # the same open reader sees the final state
            assert cap.n_tags == n_written
    finally:
        proc.kill()
        proc.wait()


def inspect_text(path) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert hil_main(["inspect", str(path)]) == 0
    return buf.getvalue()


def fork_writer(path, chunk: int) -> tuple[int, int]:
    """Fork a process that streams tags into ``path`` until killed; it writes "ready" and then
    its flushed tag count after every flush to the returned pipe. Forking skips a fresh
    interpreter's imports (a second each on a busy 2-core CI machine)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: never returns into pytest
        try:
            os.close(r)
            out = os.fdopen(w, "w", buffering=1)
            write_until_killed(path, chunk, out)
        finally:
            os._exit(1)
    os.close(w)
    return pid, r


def write_until_killed(path, chunk: int, out) -> None:
    writer = CaptureWriter(path, snapshot={"bench_name": "crash"}, flush_every_s=3600)
    print("ready", file=out)
    n = 0
    while True:
        writer.append(*expected_tags(n, n + chunk))
        n += chunk
        writer.flush()
        print(writer.n_flushed, file=out)


def test_sigkill_at_random_moments_leaves_incomplete_readable_files(tmp_path):
    rng = random.Random(20261128)
    for k in range(10):
        path = tmp_path / f"killed-{k}.h5"
        pid, fd = fork_writer(path, rng.choice([1_000, 30_000, 200_000]))
        pipe = os.fdopen(fd, "r")
        assert pipe.readline().strip() == "ready"
        reports = []
        if k >= 2:  # the first two die before their first flush; the rest while streaming
            reports.append(int(pipe.readline()))  # the first flush is done
            time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)  # no handler, no atexit, no HDF5 close
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        reports += [int(x) for x in pipe.read().split() if x.isdigit()]
        pipe.close()
        flushed = reports[-1] if reports else 0
        assert k < 2 or flushed > 0
        with open_capture(path) as cap:
            assert not cap.complete, f"kill {k}: a killed capture reports complete"
            n = cap.n_tags
            assert n >= flushed, f"kill {k}: {n} tags readable, {flushed} were flushed"
            ts, ch = cap.tags()
            exp_ts, exp_ch = expected_tags(0, n)
            np.testing.assert_array_equal(ts, exp_ts)
            np.testing.assert_array_equal(ch, exp_ch)
            assert sum(cap.counts().values()) <= n
        text = inspect_text(path)
        assert "INCOMPLETE" in text.splitlines()[0], text
        assert f"{n} tags" in text
