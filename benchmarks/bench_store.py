"""Throughput of the capture store: tags per second and bytes per tag.

1. Store alone: arrays shaped like the emulated bench's tag stream written through
   CaptureWriter to a closed file, for each compression; baseline in the same run: the same
   bytes written with numpy ``tofile`` (what the disk / page cache takes without HDF5).
2. Whole capture on the emulated bench (source on, attenuator at low loss, pace 0 = as fast as
   the emulator generates): acquire() into a file, and the same acquisition with the tags
   fetched and dropped (no store), which separates the store's cost from generation+transfer;
   then the reference measured in the same run: the emulator's link physics alone, in process.
   Each capture row gives the CPU time per tag of this process and of the emulator process,
   the latter split into its acquisition thread (generation and buffering) and its other
   threads: those that serve the connections (command parsing, the tag blocks' packing and
   socket sends) and the worker that samples half of each span's signal clicks.
   On 2 cores generation must overlap everything else, so these CPU figures, not the
   wall-clock rates (noisy on a shared machine), say what a faster generator could reach.

Run: /work/venv/bin/python benchmarks/bench_store.py [--tags 2**25] [--no-bench] [--seconds 2]
Targets (issue 5): store alone >= 100 Mtags/s; whole capture >= 20 Mtags/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from hil.store import CHUNK_TAGS, CaptureWriter

RATES_HZ = {0: 100e3, 1: 0.7e6, 2: 0.7e6, 3: 0.08e6, 4: 0.08e6}  # emulated bench at ~10 dB


def realistic_tags(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` tags: a 100 kHz sync (exact period) and four Poisson detector streams, 1 ps
    resolution, merged and sorted, as the emulated tagger returns them."""
    rng = np.random.default_rng(seed)
    total = sum(RATES_HZ.values())
    dur_ps = n / total * 1e12
    ts_parts, ch_parts = [], []
    for c, r in RATES_HZ.items():
        k = int(round(n * r / total))
        if c == 0:
            t = np.arange(k, dtype=np.int64) * int(1e12 / r) + 1234
        else:
            t = np.sort(rng.integers(0, int(dur_ps), k))
        ts_parts.append(t)
        ch_parts.append(np.full(k, c, np.uint8))
    ts = np.concatenate(ts_parts)
    order = np.argsort(ts, kind="stable")
    return ts[order][:n], np.concatenate(ch_parts)[order][:n]


def write_store(path: Path, ts, ch, compression: str | None, piece: int = CHUNK_TAGS) -> float:
    t0 = time.perf_counter()
    w = CaptureWriter(path, compression=compression)
    for i in range(0, len(ts), piece):
        w.append(ts[i : i + piece], ch[i : i + piece])
    w.close()
    return time.perf_counter() - t0


def write_raw_h5py(path: Path, ts, ch, **filters) -> float:
    """Plain h5py with a filter the store does not offer (LZF: unreadable by PyTables)."""
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        kw = {"maxshape": (None,), "chunks": (CHUNK_TAGS,), **filters}
        d1 = f.create_dataset("t", shape=(0,), dtype="<i8", **kw)
        d2 = f.create_dataset("c", shape=(0,), dtype="u1", **kw)
        for i in range(0, len(ts), CHUNK_TAGS):
            j = min(i + CHUNK_TAGS, len(ts))
            d1.resize((j,))
            d1[i:j] = ts[i:j]
            d2.resize((j,))
            d2[i:j] = ch[i:j]
    return time.perf_counter() - t0


def bench_store_alone(n: int, tmp: Path) -> None:
    ts, ch = realistic_tags(n)
    print(f"store alone: {n} tags shaped like the emulated bench (2-core VM, page cache)")
    t0 = time.perf_counter()
    with open(tmp / "raw.bin", "wb") as fh:
        ts.tofile(fh)
        ch.tofile(fh)
    base = n / (time.perf_counter() - t0)
    print(f"  {'baseline numpy tofile':28s} {base / 1e6:8.1f} Mtags/s  9.00 bytes/tag")
    os.unlink(tmp / "raw.bin")
    rows = [("none", None), ("gzip-1", "gzip-1"), ("shuffle+gzip-1", "shuffle+gzip-1")]
    rows += [("shuffle+gzip-4", "shuffle+gzip-4")]
    for label, comp in rows:
        m = n if comp is None else min(n, 1 << 23)  # compressed runs on fewer tags (slow)
        p = tmp / f"s-{label}.h5"
        best = min(write_store(p, ts[:m], ch[:m], comp) for _ in range(2 if comp is None else 1))
        size = p.stat().st_size
        print(
            f"  {'CaptureWriter ' + label:28s} {m / best / 1e6:8.1f} Mtags/s  "
            f"{size / m:5.2f} bytes/tag  ({m / best / base:.2f} x baseline)"
        )
        p.unlink()
    # appends of the size a capture makes (a fetch: one 10 ms chunk of the emulated bench at
    # 0 dB), not aligned with the HDF5 chunks
    p = tmp / "s-pieces.h5"
    best = min(write_store(p, ts, ch, None, piece=150_000) for _ in range(2))
    print(
        f"  {'CaptureWriter none, 150k/app':28s} {n / best / 1e6:8.1f} Mtags/s  "
        f"{p.stat().st_size / n:5.2f} bytes/tag  ({n / best / base:.2f} x baseline)"
    )
    p.unlink()
    m = min(n, 1 << 23)
    lzf = {"compression": "lzf"}
    for label, kw in (("lzf", lzf), ("shuffle+lzf", {**lzf, "shuffle": True})):
        p = tmp / f"r-{label}.h5"
        dt = write_raw_h5py(p, ts[:m], ch[:m], **kw)
        print(
            f"  {'h5py ' + label + ' (not offered)':28s} {m / dt / 1e6:8.1f} Mtags/s  "
            f"{p.stat().st_size / m:5.2f} bytes/tag"
        )
        p.unlink()
    # durability, not just the page cache: the same write followed by fsync
    p = tmp / "fsync.h5"
    t0 = time.perf_counter()
    write_store(p, ts, ch, None)
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    print(
        f"  {'CaptureWriter none + fsync':28s} {n / (time.perf_counter() - t0) / 1e6:8.1f} Mtags/s"
    )
    p.unlink()


def bench_capture(seconds: float, tmp: Path) -> None:
    from hil.bench import Bench
    from hil.capture import acquire

    print(f"whole capture on the emulated bench ({seconds:g} s of link time, pace 0)")
    t0 = time.perf_counter()
    with Bench.open("emulated", measure_latency=False) as bench:
        print(f"  bench open: {time.perf_counter() - t0:.1f} s")
        bench.attenuator.output_enabled = True
        bench.attenuator.attenuation_db = 0.0
        bench.source.output_enabled = True
        tagger = bench.tagger
        emu_pid = bench.emulator.pid if bench.emulator else None
        # untimed warm-up: starts the emulator's sampling worker thread (so that it counts
        # among the threads that live through each timed acquisition) and the store's code
        acquire(bench, tmp / "warm.h5", 0.05, pace=0, progress=False)
        for label in ("acquire() into the store", "fetch only, tags dropped"):
            threads0 = _thread_cpu_s(emu_pid)
            t0, c0, e0 = time.perf_counter(), time.process_time(), _cpu_s(emu_pid)
            if label.startswith("acquire"):
                cap = acquire(bench, tmp / "cap.h5", seconds, pace=0, progress=False)
                n = cap.n_tags
                size = (tmp / "cap.h5").stat().st_size
            else:
                n = 0
                tagger.start(seconds, pace=0)
                for ts, _ in tagger.stream():
                    n += len(ts)
                size = 0
            dt = time.perf_counter() - t0
            cpu, emu = time.process_time() - c0, _cpu_s(emu_pid) - e0
            threads1 = _thread_cpu_s(emu_pid)
            # the emulator's threads that lived through the acquisition (its connection
            # handlers: fetch, pack, send; and the worker sampling half of each span's signal
            # clicks, see hil.emulator.physics) against the acquisition thread, which ended
            # with it and whose time the process total keeps: the rest of the generation,
            # plus buffering
            serve = sum(threads1[t] - threads0[t] for t in threads1.keys() & threads0.keys())
            per_tag = f"{size / n:5.2f} bytes/tag" if size and n else ""
            print(f"  {label:28s} {n / dt / 1e6:8.2f} Mtags/s  {n} tags in {dt:.2f} s  {per_tag}")
            print(
                f"  {'':28s} CPU: this process {cpu:.2f} s, emulator process {emu:.2f} s "
                f"({emu / dt:.0%} of wall time)"
            )
            if n:
                print(
                    f"  {'':28s} CPU ns/tag: this process {cpu / n * 1e9:.1f}; emulator "
                    f"{emu / n * 1e9:.1f} = acquisition thread {(emu - serve) / n * 1e9:.1f} "
                    f"+ other threads {serve / n * 1e9:.1f} (serving; sampling worker)"
                )
        # the same acquisition without overlap: generated into the emulator's buffer first
        # (nothing fetched), then fetched: the emulator's generation and its send path, and
        # the client's receive path, each measured alone
        # (at most 2 s of link time: ~3e7 tags, within the emulated tagger's 5e7-tag buffer;
        # a full buffer holds generation back until fetched)
        e0 = _cpu_s(emu_pid)
        tagger.start(min(seconds, 2.0), pace=0)
        deadline = time.monotonic() + 120
        while tagger.status() == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.02)
        e1, c0, t0, n = _cpu_s(emu_pid), time.process_time(), time.perf_counter(), 0
        for ts, _ in tagger.stream():
            n += len(ts)
        dt, cpu, e2 = time.perf_counter() - t0, time.process_time() - c0, _cpu_s(emu_pid)
        label = "buffered, then fetched"
        print(f"  {label:28s} {n / dt / 1e6:8.2f} Mtags/s  {n} tags in {dt:.2f} s (fetch)")
        if n:
            print(
                f"  {'':28s} CPU ns/tag: emulator generating {(e1 - e0) / n * 1e9:.1f}; "
                f"then fetch: this process {cpu / n * 1e9:.1f}, emulator {(e2 - e1) / n * 1e9:.1f}"
            )
    # reference in the same run: the link physics alone, in this process, on the same settings
    # and in the chunks of an unpaced acquisition (no SCPI, no transfer, no store). A capture
    # cannot outrun the emulator's generation; it can come near it, since the emulator fetches
    # and sends on another thread while it generates (its kernels release the GIL).
    from hil.emulator.link import LONG_CHUNK_PS
    from hil.emulator.physics import LinkGenerator, LinkParams

    params = LinkParams(attenuation_db=0.0)
    end = int(seconds * 1e12)
    for threads in (1, 2):
        # two threads: the worker samples ahead, as in the emulator server on 2 cores or more
        gen = LinkGenerator(params, sampling_threads=threads)
        n = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for a in range(0, end, LONG_CHUNK_PS):
            n += len(gen.generate(params, a, min(a + LONG_CHUNK_PS, end))[0])
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        label = f"generation alone, {threads} thread{'s' if threads > 1 else ''}"
        print(
            f"  {label:28s} {n / dt / 1e6:8.2f} Mtags/s  {n} tags in {dt:.2f} s  "
            f"({n / cpu / 1e6:.2f} Mtags per CPU s, {cpu / dt:.2f} cores)"
        )


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 when unknown."""
    return (_stat_cpu_s(f"/proc/{pid}/stat") if pid is not None else None) or 0.0


def _thread_cpu_s(pid: int | None) -> dict[int, float]:
    """User + system CPU seconds of each live thread of a process (Linux /proc), by thread id."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (OSError, TypeError):
        return {}
    out = {int(tid): _stat_cpu_s(f"/proc/{pid}/task/{tid}/stat") for tid in tids}
    return {tid: s for tid, s in out.items() if s is not None}  # None: ended meanwhile


def _stat_cpu_s(stat_path: str) -> float | None:
    """User + system CPU seconds from a /proc stat file, None when it cannot be read."""
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=lambda s: int(eval(s, {})), default=1 << 25)  # noqa: S307
    ap.add_argument("--seconds", type=float, default=1.0, help="link time of the capture")
    ap.add_argument("--no-bench", action="store_true", help="skip the emulated-bench capture")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as d:
        bench_store_alone(args.tags, Path(d))
        if not args.no_bench:
            bench_capture(args.seconds, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
