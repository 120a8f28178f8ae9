"""Throughput of the emulator's link physics (hil.emulator.physics) on one core.

Prints detection events generated per wall second and the link-time/wall-time ratio for a
default acquisition (metro pilot defaults, 10 dB attenuator, 3 s of link time generated in the
chunks a link clock would ask for), plus the same at 0 dB (the highest count rate), and a
baseline measured in the same run: drawing the same number of uniform random timestamps with
numpy and sorting them (the cost of the most trivial tag generator).

    /work/venv/bin/python benchmarks/bench_emulator.py [--seconds 3] [--chunk-s 0.1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from hil.emulator.physics import LinkGenerator, LinkParams  # noqa: E402

SECOND_PS = 10**12


def acquire(params: LinkParams, seconds: float, chunk_s: float) -> tuple[float, int, int]:
    """Generate `seconds` of link time in chunks; return (wall s, detection events, all tags)."""
    gen = LinkGenerator(params)
    step = int(chunk_s * SECOND_PS)
    end = int(seconds * SECOND_PS)
    events = tags = 0
    start = time.perf_counter()
    for t0 in range(0, end, step):
        ts, ch = gen.generate(params, t0, min(t0 + step, end))
        tags += len(ts)
        events += int(np.count_nonzero(ch))
    return time.perf_counter() - start, events, tags


def baseline(n: int, seconds: float) -> float:
    """Wall time to draw n uniform int64 timestamps over the span and sort them."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    ts = rng.integers(0, int(seconds * SECOND_PS), n)
    ts.sort()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="link time per acquisition (s)")
    ap.add_argument("--chunk-s", type=float, default=0.1, help="link time per generate() call")
    args = ap.parse_args()

    warm = LinkParams()
    LinkGenerator(warm).generate(warm, 0, 10**8)  # numba compile / cache load, not timed

    print(f"link physics benchmark: {args.seconds:g} s of link time in {args.chunk_s:g} s chunks")
    print(
        f"{'case':<28}{'events':>12}{'wall s':>9}{'events/s':>12}{'link/wall':>10}"
        f"{'baseline ev/s':>15}{'vs baseline':>12}"
    )
    for label, att in (("default, 10 dB", 10.0), ("default, 0 dB (peak rate)", 0.0)):
        params = LinkParams(attenuation_db=att)
        wall, events, tags = acquire(params, args.seconds, args.chunk_s)
        base_wall = baseline(events, args.seconds)
        rate = events / wall
        base_rate = events / base_wall
        print(
            f"{label:<28}{events:>12,}{wall:>9.3f}{rate:>12.3g}{args.seconds / wall:>10.2f}"
            f"{base_rate:>15.3g}{rate / base_rate:>12.2f}"
        )


if __name__ == "__main__":
    main()
