"""Throughput of the emulator's link physics (hil.emulator.physics) on one core.

Prints detection events generated per wall second and the link-time/wall-time ratio for a
default acquisition (metro pilot defaults, 10 dB attenuator, 3 s of link time generated in the
chunks a link clock would ask for: 10 ms unpaced, 1 ms paced or while a ramp runs), plus the
same at 0 dB (the highest count rate), and a baseline measured in the same run: drawing the
same number of uniform random timestamps with numpy and sorting them (the cost of the most
trivial tag generator). Target (issue 4): >= 2e7 detection events per wall second.

    /work/venv/bin/python benchmarks/bench_emulator.py [--seconds 3] [--chunk-s 0.1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from hil.emulator.link import DEFAULT_CHUNK_PS, LONG_CHUNK_PS  # noqa: E402
from hil.emulator.physics import LinkGenerator, LinkParams  # noqa: E402

SECOND_PS = 10**12


def acquire(params: LinkParams, seconds: float, chunk_s: float) -> tuple[float, float, int]:
    """Generate `seconds` of link time in chunks; return (wall s, CPU s, detection events)."""
    gen = LinkGenerator(params)
    step = int(chunk_s * SECOND_PS)
    end = int(seconds * SECOND_PS)
    events = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for t0 in range(0, end, step):
        ts, ch = gen.generate(params, t0, min(t0 + step, end))
        events += int(np.count_nonzero(ch))
    return time.perf_counter() - start, time.process_time() - cpu_start, events


def baseline(n: int, seconds: float) -> tuple[float, float]:
    """Wall and CPU time to draw n uniform int64 timestamps over the span and sort them."""
    rng = np.random.default_rng(0)
    start, cpu_start = time.perf_counter(), time.process_time()
    ts = rng.integers(0, int(seconds * SECOND_PS), n)
    ts.sort()
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="link time per acquisition (s)")
    ap.add_argument("--chunk-s", type=float, default=0.1, help="link time per generate() call")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the best is printed")
    args = ap.parse_args()

    warm = LinkParams()
    LinkGenerator(warm).generate(warm, 0, 10**8)  # numba compile / cache load, not timed

    print(
        f"link physics benchmark: {args.seconds:g} s of link time, best of {args.repeat} runs "
        "(the machine is shared: the best run is the least disturbed one)"
    )
    print(
        f"machine load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
        "CPU-time figures are the process's own time (robust to other load)"
    )
    print(
        f"{'case':<30}{'events':>12}{'wall s':>8}{'ev/wall s':>11}{'link/wall':>10}"
        f"{'ev/CPU s':>10}{'link/CPU':>9}{'baseline ev/CPU s':>19}{'vs base':>8}"
    )
    long_s, short_s = LONG_CHUNK_PS / SECOND_PS, DEFAULT_CHUNK_PS / SECOND_PS
    cases = (
        (f"10 dB, {args.chunk_s:g} s chunks", 10.0, args.chunk_s),
        (f"0 dB (peak), {args.chunk_s:g} s chunks", 0.0, args.chunk_s),
        # the link clock's chunks: unpaced acquisition while nothing ramps, and paced / ramping
        (f"10 dB, {long_s * 1e3:g} ms chunks", 10.0, long_s),
        (f"0 dB (peak), {long_s * 1e3:g} ms chunks", 0.0, long_s),
        (f"10 dB, {short_s * 1e3:g} ms chunks", 10.0, short_s),
    )
    for label, att, chunk_s in cases:
        params = LinkParams(attenuation_db=att)
        runs = [acquire(params, args.seconds, chunk_s) for _ in range(max(args.repeat, 1))]
        wall = min(r[0] for r in runs)
        cpu = min(r[1] for r in runs)
        events = runs[0][2]
        base_cpu = min(baseline(events, args.seconds)[1] for _ in range(max(args.repeat, 1)))
        print(
            f"{label:<30}{events:>12,}{wall:>8.2f}{events / wall:>11.3g}"
            f"{args.seconds / wall:>10.2f}{events / cpu:>10.3g}{args.seconds / cpu:>9.2f}"
            f"{events / base_cpu:>19.3g}{base_cpu / cpu:>8.2f}"
        )


if __name__ == "__main__":
    main()
