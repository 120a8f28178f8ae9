"""Reader API: chunks, time windows (checked against numpy.searchsorted on the whole array),
snapshot, events, results; writer input checks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hil.store import (
    CaptureWriter,
    Layout,
    _sync_file_range,
    _WriteBehind,
    count_channels,
    count_descents,
    open_capture,
    store_result,
)


@pytest.mark.parametrize(
    "channels",
    [
        np.zeros(0, np.uint8),
        np.array([255], np.uint8),
        np.array([0, 0, 0, 255, 255, 7], np.uint8),
        np.array([3, 3, 3], np.uint8),  # shorter than one round of the four tables
        np.array([9, 0, 9, 1, 9, 2, 9], np.uint8),  # one round and a tail of three
        np.arange(256, dtype=np.uint8).repeat(3),
        np.random.default_rng(5).integers(0, 256, 100_000).astype(np.uint8),
        np.random.default_rng(6).choice(np.array([0, 1, 2, 3, 4, 8], np.uint8), 50_000),
    ],
)
def test_count_channels_matches_bincount(channels):
    """The numba counting kernel against numpy's bincount (the reference)."""
    np.testing.assert_array_equal(count_channels(channels), np.bincount(channels, minlength=256))


def write(path, ts, ch, chunk_tags=64, pieces=7):
    with CaptureWriter(path, snapshot={"bench_name": "t"}, chunk_tags=chunk_tags) as w:
        for part_ts, part_ch in zip(
            np.array_split(ts, pieces), np.array_split(ch, pieces), strict=True
        ):
            w.append(part_ts, part_ch)


@pytest.fixture
def dup_capture(tmp_path):
    """Many duplicate timestamps, runs of equal values that straddle HDF5 chunk boundaries."""
    rng = np.random.default_rng(7)
    ts = np.sort(rng.integers(0, 400, 1000)).astype(np.int64) * 1000
    ch = rng.integers(0, 5, 1000).astype(np.uint8)
    write(tmp_path / "dup.h5", ts, ch)
    return tmp_path / "dup.h5", ts, ch


def test_index_at_matches_searchsorted(dup_capture):
    path, ts, _ = dup_capture
    rng = np.random.default_rng(3)
    probes = np.concatenate(
        [
            rng.integers(-5000, 410_000, 300),  # random, including before and after all tags
            ts[rng.integers(0, len(ts), 100)],  # exact hits (left-most of a run expected)
            ts[::64],  # first tag of every HDF5 chunk
            [ts[0], ts[-1], ts[-1] + 1, np.iinfo(np.int64).min, np.iinfo(np.int64).max],
        ]
    )
    with open_capture(path) as cap:
        assert cap.chunk_tags == 64
        for t in probes:
            assert cap.index_at(int(t)) == np.searchsorted(ts, t, side="left"), t


def test_window(dup_capture):
    path, ts, ch = dup_capture
    rng = np.random.default_rng(4)
    with open_capture(path) as cap:
        for _ in range(100):
            t0, t1 = sorted(rng.integers(-1000, 410_000, 2))
            sel = (ts >= t0) & (ts < t1)
            wts, wch = cap.window(int(t0), int(t1))
            np.testing.assert_array_equal(wts, ts[sel])
            np.testing.assert_array_equal(wch, ch[sel])
        assert len(cap.window(10, 10)[0]) == 0
        assert len(cap.window(500, 100)[0]) == 0  # reversed bounds: empty, not an error


def test_iter_chunks_reassembles(dup_capture):
    path, ts, ch = dup_capture
    with open_capture(path) as cap:
        for n in (1, 64, 100, 5000):
            parts = list(cap.iter_chunks(n))
            assert all(len(p[0]) <= n for p in parts)
            np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), ts)
            np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), ch)
        part = list(cap.iter_chunks(50, start=10, stop=130))
        np.testing.assert_array_equal(np.concatenate([p[0] for p in part]), ts[10:130])
        assert cap.n_tags == len(ts)
        assert cap.complete


def test_empty_capture(tmp_path):
    CaptureWriter(tmp_path / "e.h5").close(duration_s=0.5)
    with open_capture(tmp_path / "e.h5") as cap:
        assert cap.n_tags == 0 and cap.complete and cap.duration_s == 0.5
        assert cap.index_at(123) == 0
        assert len(cap.window(0, 10)[0]) == 0
        assert list(cap.iter_chunks()) == []


def test_events_results_snapshot(tmp_path):
    snap = {"bench_name": "b", "instruments": {"source": {"idn": "X", "settings": {"a": 1}}}}
    with CaptureWriter(tmp_path / "c.h5", snapshot=snap) as w:
        w.append(np.array([1, 2, 3]), np.array([0, 1, 2], "u1"))
        w.add_event(2, "action", "attenuation 20 dB")
        w.add_event(3, "marker")
        w.set_result("rates_hz", np.array([1.0, 2.0]))
        w.set_result("verdict", {"qber": 0.02, "ok": True})
    with open_capture(tmp_path / "c.h5") as cap:
        assert cap.events() == [(2, "action", "attenuation 20 dB"), (3, "marker", "")]
        np.testing.assert_array_equal(cap.result("rates_hz"), [1.0, 2.0])
        assert cap.result("verdict") == {"qber": 0.02, "ok": True}
        assert cap.snapshot() == snap
        assert cap.counts() == {0: 1, 1: 1, 2: 1}
        assert cap.channel_labels()[1] == "H"


def test_store_result_after_close(tmp_path):
    with CaptureWriter(tmp_path / "r.h5") as w:
        w.append(np.array([1]), np.array([1], "u1"))
        w.set_result("a", [1, 2])
    store_result(tmp_path / "r.h5", "a", {"replaced": True})
    store_result(tmp_path / "r.h5", "b", np.arange(4))
    with open_capture(tmp_path / "r.h5") as cap:
        assert cap.result("a") == {"replaced": True}
        np.testing.assert_array_equal(cap.result("b"), np.arange(4))
        assert cap.complete


def test_duration_from_tags_when_not_given(tmp_path):
    with CaptureWriter(tmp_path / "d.h5") as w:
        w.append(np.array([1_000, 2_000]), np.array([1, 1], "u1"))
        w.append(np.array([3_000_001_000]), np.array([2], "u1"))
    with open_capture(tmp_path / "d.h5") as cap:
        assert cap.duration_s == pytest.approx(3e-3)


def test_channel_outside_layout_is_added(tmp_path):
    with CaptureWriter(tmp_path / "x.h5") as w:
        w.append(np.array([1, 2, 3]), np.array([1, 7, 7], "u1"))
    with open_capture(tmp_path / "x.h5") as cap:
        assert cap.counts() == {1: 1, 7: 2}
        assert cap.channel_labels()[7] == "input 7"


def test_writer_rejects_bad_input(tmp_path):
    with CaptureWriter(tmp_path / "w.h5") as w:
        w.append(np.array([10, 20]), np.array([1, 2], "u1"))
        with pytest.raises(ValueError, match="before the end of the previous"):
            w.append(np.array([5]), np.array([1], "u1"))
        with pytest.raises(ValueError, match="differ in length"):
            w.append(np.array([30, 40]), np.array([1], "u1"))
        with pytest.raises(ValueError, match="nanotimes"):
            w.append(np.array([30]), np.array([1], "u1"), np.array([3], "u2"))
    with pytest.raises(ValueError, match="compression 'lzf' unknown"):
        CaptureWriter(tmp_path / "z.h5", compression="lzf")


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000])
def test_count_descents_matches_numpy(n):
    rng = np.random.default_rng(n)
    for ts in (np.sort(rng.integers(0, 50, n)), rng.integers(0, 50, n), -np.arange(n)):
        ts = ts.astype(np.int64)
        assert count_descents(ts) == int(np.count_nonzero(np.diff(ts) < 0))


def test_chunk_out_of_order_inside_is_sorted_and_reported(tmp_path):
    """A chunk with tags out of time order inside: the file holds it sorted (stably: equal
    times keep their order), with its channels and TCSPC times, and one event says so."""
    ts = np.array([100, 90, 95, 95, 130, 120], np.int64)
    ch = np.array([1, 2, 3, 4, 1, 2], "u1")
    nt = np.array([11, 12, 13, 14, 15, 16], "u2")
    layout = Layout(tcspc_unit_s=1e-12, tcspc_num_bins=4096)
    with CaptureWriter(tmp_path / "o.h5", layout=layout) as w:
        w.append(np.array([10, 20]), np.array([0, 0], "u1"), np.array([1, 2], "u2"))
        w.append(ts, ch, nt)
        w.append(np.array([140]), np.array([1], "u1"), np.array([17], "u2"))
    with open_capture(tmp_path / "o.h5") as cap:
        got_ts, got_ch = cap.window(0, 10**6)
        np.testing.assert_array_equal(got_ts, [10, 20, 90, 95, 95, 100, 120, 130, 140])
        np.testing.assert_array_equal(got_ch, [0, 0, 2, 3, 4, 1, 2, 1, 1])
        np.testing.assert_array_equal(
            cap.f["photon_data/nanotimes"][:], [1, 2, 12, 13, 14, 11, 16, 15, 17]
        )
        assert cap.events() == [
            (
                90,
                "tags reordered",
                "2 of 6 tags in a chunk came before the tag ahead of them; the chunk was "
                "sorted by time",
            )
        ]
        assert cap.complete


def test_exception_inside_with_leaves_incomplete(tmp_path):
    with pytest.raises(RuntimeError), CaptureWriter(tmp_path / "i.h5") as w:
        w.append(np.array([1]), np.array([1], "u1"))
        raise RuntimeError("tagger died")
    with open_capture(tmp_path / "i.h5") as cap:
        assert not cap.complete
        assert cap.n_tags == 1


def test_open_capture_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such capture file"):
        open_capture(tmp_path / "missing.h5")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(OSError, match="not a qkd-hil capture"):
        open_capture(tmp_path / "other.h5")


@pytest.mark.parametrize("compression", [None, "gzip-1"])
def test_pieces_across_chunks_with_flushes_read_back_exactly(tmp_path, compression):
    """Pieces of every size (empty, within a chunk, exactly a chunk, spanning several) with
    flushes at arbitrary points: what a reader sees after each flush, and the closed file, are
    exactly the tags appended, and the per-append counts are those of the piece. Uncompressed
    files take the whole-chunk write path with a partial chunk rewritten at each flush; gzip
    takes h5py's own path: both must agree with the input."""
    rng = np.random.default_rng(11)
    chunk = 50
    # 50 at a boundary and 250 from one (whole chunks written from the input itself)
    sizes = [0, 1, 49, 50, 3, 120, 0, 77, 50, 250, 2]
    n = sum(sizes)
    ts = np.cumsum(rng.integers(0, 5, n)).astype(np.int64)
    ch = rng.choice(np.array([0, 1, 2, 3, 4, 8], np.uint8), n)
    path = tmp_path / "pieces.h5"
    w = CaptureWriter(path, chunk_tags=chunk, compression=compression, flush_every_s=3600)
    i = 0
    for k, size in enumerate(sizes):
        counts = w.append(ts[i : i + size], ch[i : i + size])
        np.testing.assert_array_equal(counts, np.bincount(ch[i : i + size], minlength=256))
        i += size
        if k % 3 == 2:
            w.flush()
            with open_capture(path) as cap:  # SWMR: sees the state of the last flush
                got_ts, got_ch = cap.tags()
                np.testing.assert_array_equal(got_ts, ts[:i])
                np.testing.assert_array_equal(got_ch, ch[:i])
                assert cap.counts() == {int(c): int(v) for c, v in enumerate(
                    np.bincount(ch[:i], minlength=256)) if v}  # fmt: skip
    w.close()
    with open_capture(path) as cap:
        assert cap.complete and cap.n_tags == n
        got_ts, got_ch = cap.tags()
        np.testing.assert_array_equal(got_ts, ts)
        np.testing.assert_array_equal(got_ch, ch)


def _resident_pages(path) -> np.ndarray:
    """Which pages of ``path`` are in the page cache (Linux mincore on a private mapping)."""
    import ctypes
    import ctypes.util
    import mmap

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY)
    try:
        anchor = ctypes.c_char.from_buffer(mm)
        vec = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
        rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec)
        assert rc == 0, os.strerror(ctypes.get_errno())
        del anchor
        return np.frombuffer(vec, np.uint8) & 1
    finally:
        mm.close()


@pytest.mark.skipif(_sync_file_range is None, reason="sync_file_range is Linux-only")
def test_write_behind_drops_all_but_the_newest_bytes_and_keeps_the_content(tmp_path):
    path = tmp_path / "grow.bin"
    step, keep = 64 * 1024, 128 * 1024
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, 40 * step, dtype=np.uint8).tobytes()
    wb = _WriteBehind(path.with_name("absent.bin"))  # cannot open: does nothing, no error
    wb()
    assert wb.fd < 0
    with open(path, "wb") as fh:
        wb = _WriteBehind(path, step_bytes=step, keep_bytes=keep)
        for i in range(0, len(data), step // 4):
            fh.write(data[i : i + step // 4])
            fh.flush()
            os.fsync(fh.fileno())  # writeback done: what write-behind drops is deterministic
            wb()
        wb.close()
    assert wb.started > len(data) - step  # writeback was started up to the last step
    resident = _resident_pages(path)
    page = os.sysconf("SC_PAGE_SIZE")
    dropped = (len(data) - keep - step) // page  # all but the newest keep bytes (+ one step)
    assert not resident[:dropped].any(), "pages older than the kept bytes are still cached"
    assert resident[-1], "the newest page should still be cached (mincore reads residency)"
    assert path.read_bytes() == data
