"""A second process reads a capture while it grows (SWMR); a writer killed with SIGKILL leaves a
file that opens, says it is incomplete, and holds every tag flushed before the kill; after the
one documented step (``hil inspect --repair``) plain h5py and phconvert open it too."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import h5py
import numpy as np
import pytest
from phvalidate import validate
from store_child import expected_tags

from hil.cli import main as hil_main
from hil.store import CaptureWriter, lookup3, open_capture, writer_state

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


def hil(*argv) -> tuple[int, str, str]:
    """Run the hil command in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = hil_main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


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


def kill_writer(path, rng, moment: str) -> tuple[int, int]:
    """Fork a writer into ``path``, SIGKILL it at ``moment``: "start" (any time from the fork,
    perhaps before the file has its name), "ready" (file created, nothing appended) or
    "streaming" (a random time after the first flush). Returns (tags the writer reported
    flushed, chunk size)."""
    chunk = rng.choice([1_000, 30_000, 200_000])
    pid, fd = fork_writer(path, chunk)
    pipe = os.fdopen(fd, "r")
    reports = []
    if moment == "start":
        time.sleep(rng.uniform(0.0, 0.15))
    else:
        assert pipe.readline().strip() == "ready"
    if moment == "streaming":
        reports.append(int(pipe.readline()))  # the first flush is done
        time.sleep(rng.uniform(0.0, 0.3))
    os.kill(pid, signal.SIGKILL)  # no handler, no atexit, no HDF5 close
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    reports += [int(x) for x in pipe.read().split() if x.isdigit()]
    pipe.close()
    return (reports[-1] if reports else 0), chunk


def test_sigkill_at_20_random_moments_then_repair_opens_with_plain_h5py(tmp_path):
    rng = random.Random(20261128)
    moments = ["start"] * 3 + ["ready"] * 2 + ["streaming"] * 15
    repaired, not_created = [], 0
    for k, moment in enumerate(moments):
        path = tmp_path / f"killed-{k}.h5"
        flushed, chunk = kill_writer(path, rng, moment)
        assert moment != "streaming" or flushed > 0
        if not path.exists():  # killed before the rename: only a .partial is left
            assert moment == "start", f"kill {k} ({moment}): no file at the final path"
            not_created += 1
            continue
        # what the SWMR reader (hil's own) sees, before any repair
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
        lines = text.splitlines()
        assert "INCOMPLETE" in lines[0], text
        assert f"{n} tags" in text
        assert lines[1] == (
            f"  written by a process that died: run `hil inspect --repair {path}` "
            "to let other HDF5 tools open it"
        ), text
        assert writer_state(path) == "died"
        with pytest.raises(OSError, match="already open for write"):
            h5py.File(path, "r")  # the problem the repair solves

        rc, out, err = hil("inspect", "--repair", path)
        assert (rc, err) == (0, ""), err
        assert out.startswith(f"{path}: repaired (consistency flags cleared"), out
        assert out.endswith("): any HDF5 reader opens it now\n") and out.count("\n") == 1, out

        with h5py.File(path, "r") as f:  # what phconvert, HDFView and a user's script do
            assert f["user/qkd/complete"][()] == 0, f"kill {k}: the INCOMPLETE mark is gone"
            ts = f["photon_data/timestamps"][:]
            ch = f["photon_data/detectors"][:]
            assert len(ts) == len(ch) >= flushed, f"kill {k}: {len(ts)} tags, {flushed} flushed"
            exp_ts, exp_ch = expected_tags(0, len(ts))
            np.testing.assert_array_equal(ts, exp_ts)
            np.testing.assert_array_equal(ch, exp_ch)
            ids = f["setup/detectors/id"][:]
            counts = dict(zip(ids.tolist(), f["setup/detectors/counts"][:].tolist(), strict=True))
            assert counts == {i: int(np.count_nonzero(ch == i)) for i in ids.tolist()}
            assert f["user/bench/bench_name"][()] == b"crash"
        assert writer_state(path) == "closed"
        text = inspect_text(path)
        assert "INCOMPLETE" in text.splitlines()[0] and "--repair" not in text, text
        rc, out, _ = hil("inspect", "--repair", path)
        assert rc == 0 and out == f"{path}: nothing to repair (any HDF5 reader opens it)\n"
        repaired.append(path)
    assert len(repaired) >= 17 and not_created <= 3
    validate(repaired)  # phconvert's Photon-HDF5 validator (PyTables, plain HDF5 open)
    for p in tmp_path.iterdir():  # ~400 MB that pytest would keep for three runs
        p.unlink()


def test_repair_mends_the_counts_a_kill_left_behind(tmp_path):
    """The kill that phconvert minds: after the tags of a flush reached the file and before the
    counts describing them did. The tags after the first flush bring a channel (9) outside the
    layout, so the repair must add its id too."""
    path = tmp_path / "half-flushed.h5"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: never returns into pytest
        try:
            os.close(r)
            writer = CaptureWriter(path, snapshot={"bench_name": "crash"}, flush_every_s=3600)
            writer.append(*expected_tags(0, 5_000))
            writer.flush()
            ts, ch = expected_tags(5_000, 8_000)
            ch[::100] = 9
            writer.append(ts, ch)
            writer._write_chunk()  # the first half of CaptureWriter.flush: the tags only
            writer.f.flush()
            os.write(w, b"half\n")
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as pipe:
        assert pipe.readline() == "half\n"
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with open_capture(path) as cap:
        assert cap.n_tags == 8_000 and sum(cap.counts().values()) == 5_000  # the lag is there
    rc, out, err = hil("inspect", "--repair", path)
    assert (rc, err) == (0, "")
    assert out == (
        f"{path}: repaired (consistency flags cleared, detector counts recomputed from the "
        "8000 tags, duration recomputed): any HDF5 reader opens it now\n"
    )
    ts, ch = expected_tags(0, 8_000)
    ch[5_000::100] = 9
    with h5py.File(path, "r") as f:
        assert f["user/qkd/complete"][()] == 0
        np.testing.assert_array_equal(f["photon_data/timestamps"][:], ts)
        np.testing.assert_array_equal(f["photon_data/detectors"][:], ch)
        d = f["setup/detectors"]
        counts = dict(zip(d["id"][:].tolist(), d["counts"][:].tolist(), strict=True))
        assert {c: n for c, n in counts.items() if n} == {
            int(c): int(n) for c, n in enumerate(np.bincount(ch)) if n
        }
        assert d["label"][-1] == b"input 9"
        assert f["acquisition_duration"][()] == (ts[-1] - ts[0]) * 1e-12
        assert f["user/qkd/n_tags"][()] == 5_000  # the writer's own record stays
    validate([path])


def test_repair_gives_what_h5clear_gives(tmp_path):
    """``hil inspect --repair`` clears the same flags as hdf5-tools' ``h5clear -s``, whose
    superblock our checksum code then reads (the library wrote that checksum)."""
    if shutil.which("h5clear") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("h5clear is missing: install the Debian package hdf5-tools in CI")
        pytest.skip("h5clear not installed (apt-get install hdf5-tools); CI=true makes this fail")
    path, copy = tmp_path / "killed.h5", tmp_path / "h5clear.h5"
    flushed, _ = kill_writer(path, random.Random(7), "streaming")
    shutil.copyfile(path, copy)
    subprocess.run(["h5clear", "-s", str(copy)], check=True, timeout=60, capture_output=True)
    assert writer_state(copy) == "closed"
    assert hil("inspect", "--repair", path)[0] == 0
    mine, theirs = path.read_bytes()[:48], copy.read_bytes()[:48]
    assert mine[11] == theirs[11] == 0  # the consistency flags
    for p in (path, copy):
        with h5py.File(p, "r") as f:
            assert f["photon_data/timestamps"].shape[0] >= flushed > 0
            assert f["user/qkd/complete"][()] == 0


def test_repair_refuses_a_file_still_being_written(tmp_path):
    path = tmp_path / "live.h5"
    proc = start_child(path, 10_000, 0.05, "close")  # a real second process
    try:
        int(proc.stdout.readline())  # it has flushed once
        rc, out, err = hil("inspect", "--repair", path)
        assert rc == 2 and out == ""
        assert err == (
            f"hil inspect --repair: {path}: still being written by a running capture (it holds "
            "the file's lock); wait for it to end, or stop it, then repair\n"
        )
        assert writer_state(path) == "running"
        assert "INCOMPLETE (still being written)" in inspect_text(path).splitlines()[0]
        proc.stdin.write("close\n")
        proc.stdin.flush()
        out = proc.stdout.read()
        assert proc.wait(20) == 0 and "closed" in out
        n_written = int(out.split()[-2])
    finally:
        proc.kill()
        proc.wait()
    with h5py.File(path, "r") as f:  # the refusal left the writer's file alone
        assert f["user/qkd/complete"][()] == 1
        assert f["photon_data/timestamps"].shape[0] == n_written
    assert writer_state(path) == "closed"


def test_repair_of_a_complete_file_changes_nothing(tmp_path):
    path = tmp_path / "done.h5"
    with CaptureWriter(path, snapshot={"bench_name": "done"}) as w:
        w.append(*expected_tags(0, 5_000))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    rc, out, err = hil("inspect", "--repair", path)
    assert (rc, out, err) == (0, f"{path}: nothing to repair (any HDF5 reader opens it)\n", "")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert writer_state(path) == "closed"
    assert "--repair" not in inspect_text(path)


def test_repair_of_other_files_is_one_line(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not HDF5\n" * 100)
    rc, out, err = hil("inspect", "--repair", text)
    assert (rc, out) == (2, "")
    assert err == f"hil inspect --repair: {text}: not an HDF5 file (no HDF5 signature)\n"
    rc, out, err = hil("inspect", "--repair", tmp_path / "missing.h5")
    assert (rc, out) == (2, "")
    assert err == f"hil inspect --repair: {tmp_path / 'missing.h5'}: no such capture file\n"
    bad = tmp_path / "bad.h5"  # an HDF5 superblock whose checksum does not match
    with CaptureWriter(bad) as w:
        w.append(*expected_tags(0, 10))
    raw = bytearray(bad.read_bytes())
    raw[11] = 0x05  # flags set, checksum not updated
    bad.write_bytes(bytes(raw))
    rc, _, err = hil("inspect", "--repair", bad)
    assert rc == 2 and err.count("\n") == 1
    assert err.endswith("HDF5 superblock checksum does not match (the file is damaged)\n")


def test_lookup3_gives_the_reference_values():
    """The values lookup3.c gives in its own self-test (driver5) for hashlittle."""
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161
