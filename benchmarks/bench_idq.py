"""Whole-capture rate through the ID Quantique Time Controller path (SCPI over ZeroMQ, time stamps
on the DataLinkTargetService's per-input PAIR streams, merged by the driver) beside today's
SCPI-block path (``FETC:TAGS?`` over a raw socket), in the same run, on the same emulated link.

Each bench: source on, attenuator at 0 dB, pace 0 (as fast as the emulator generates); an
untimed warm-up, then acquire() into a capture file and the tagger's stream alone (tags
dropped), ``--rounds`` times, alternating the two paths so that a load change on the shared
machine hits both; the best round of each is printed (the least disturbed).

Run: python benchmarks/bench_idq.py [--seconds 2] [--rounds 2]
Target (issue 16): the ZeroMQ path reaches at least the SCPI path's whole-capture rate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hil.bench import Bench
from hil.capture import acquire

BENCHES = {"SCPI block (TimeTagger)": "emulated", "ZeroMQ (IDQTimeController)": "emulated-idq"}


def one_round(bench, tmp: Path, seconds: float) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    cap = acquire(bench, tmp / "cap.h5", seconds, pace=0, progress=False)
    capture_rate = cap.n_tags / (time.perf_counter() - t0)
    tagger, n = bench.tagger, 0
    t0 = time.perf_counter()
    tagger.start(seconds, pace=0)
    for ts, _ in tagger.stream():
        n += len(ts)
    return capture_rate, n / (time.perf_counter() - t0), cap.n_tags


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="link time per acquisition")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    best: dict[str, tuple[float, float, int]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        benches = {k: Bench.open(name, measure_latency=False) for k, name in BENCHES.items()}
        try:
            for bench in benches.values():
                bench.attenuator.output_enabled = True
                bench.attenuator.attenuation_db = 0.0
                bench.source.output_enabled = True
                acquire(bench, tmp / "warm.h5", 0.05, pace=0, progress=False)  # untimed
            for _ in range(args.rounds):
                for label, bench in benches.items():
                    r = one_round(bench, tmp, args.seconds)
                    if label not in best or r[0] > best[label][0]:
                        best[label] = r
        finally:
            for bench in benches.values():
                bench.close()
    print(f"whole capture, {args.seconds:g} s of link time at 0 dB, pace 0, best of {args.rounds}")
    for label, (cap, stream, n) in best.items():
        print(
            f"  {label:28s} acquire() {cap / 1e6:6.2f} Mtags/s   stream only "
            f"{stream / 1e6:6.2f} Mtags/s   ({n} tags)"
        )
    scpi, zmq = (best[k][0] for k in BENCHES)
    print(f"  ZeroMQ / SCPI whole-capture rate: {zmq / scpi:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
