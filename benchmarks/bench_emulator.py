"""Throughput of the emulator's link physics (hil.emulator.physics) on one core.

Prints detection events generated per wall second and the link-time/wall-time ratio for a
default acquisition (metro pilot defaults, 10 dB attenuator, 3 s of link time generated in the
chunks a link clock would ask for: 10 ms unpaced, 1 ms paced or while a ramp runs), plus the
same at 0 dB (the highest count rate), and a baseline measured in the same run: drawing the
same number of uniform random timestamps with numpy and sorting them (the cost of the most
trivial tag generator). Target (issue 4): >= 2e7 detection events per wall second. Then the
CPU time per event of each stage of LinkGenerator.generate (signal sampling, dark counts,
sorting, dead time and afterpulsing, sync, final merge) in the 0.1 s-chunk cases.

    /work/venv/bin/python benchmarks/bench_emulator.py [--seconds 3] [--chunk-s 0.1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from hil.emulator import _physics_kernels as kernels  # noqa: E402
from hil.emulator import physics  # noqa: E402
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


# The stages of LinkGenerator.generate, as (module, function name, label).
STAGES = (
    (physics, "_signal_clicks", "signal sampling"),
    (physics, "_dark_clicks", "dark counts"),
    (kernels, "sort_nearly_sorted", "sorting"),
    (physics, "_hold", "heap (held clicks)"),
    (physics, "_register", "dead time + afterpulsing"),
    (kernels, "sync_tags", "sync"),
    (kernels, "finalize_tags", "final merge + split"),
)


def stage_breakdown(params: LinkParams, seconds: float, chunk_s: float) -> dict[str, float]:
    """CPU ns per detection event spent in each stage of generate() over one acquisition (each
    stage function timed around its calls; "other" is the rest: Python glue between them)."""
    spent = {label: 0.0 for _, _, label in STAGES}
    originals = [(mod, name, getattr(mod, name)) for mod, name, _ in STAGES]

    def timed(func, label):
        def wrapper(*args, **kwargs):
            start = time.process_time()
            try:
                return func(*args, **kwargs)
            finally:
                spent[label] += time.process_time() - start

        return wrapper

    for (mod, name, func), (_, _, label) in zip(originals, STAGES, strict=True):
        setattr(mod, name, timed(func, label))
    try:
        _, cpu, events = acquire(params, seconds, chunk_s)
    finally:
        for mod, name, func in originals:
            setattr(mod, name, func)
    out = {label: t / events * 1e9 for label, t in spent.items()}
    out["other"] = cpu / events * 1e9 - sum(out.values())
    out["total"] = cpu / events * 1e9
    return out


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
    # Repeats round-robin over the cases (and the baseline beside each), so that a burst of
    # load from other users of the machine spoils one run of several cases rather than every
    # run of one case.
    reps = max(args.repeat, 1)
    runs: list[list] = [[] for _ in cases]
    base_runs: list[list] = [[] for _ in cases]
    for _ in range(reps):
        for m, (_, att, chunk_s) in enumerate(cases):
            runs[m].append(acquire(LinkParams(attenuation_db=att), args.seconds, chunk_s))
            base_runs[m].append(baseline(runs[m][-1][2], args.seconds)[1])
    for (label, _, _), case_runs, base in zip(cases, runs, base_runs, strict=True):
        wall = min(r[0] for r in case_runs)
        cpu = min(r[1] for r in case_runs)
        events = case_runs[0][2]
        base_cpu = min(base)
        print(
            f"{label:<30}{events:>12,}{wall:>8.2f}{events / wall:>11.3g}"
            f"{args.seconds / wall:>10.2f}{events / cpu:>10.3g}{args.seconds / cpu:>9.2f}"
            f"{events / base_cpu:>19.3g}{base_cpu / cpu:>8.2f}"
        )
    print(
        f"CPU ns per event by stage ({args.chunk_s:g} s chunks, best total of {args.repeat} runs)"
    )
    stage_runs: dict[float, list] = {10.0: [], 0.0: []}
    for _ in range(reps):
        for att, att_runs in stage_runs.items():
            att_runs.append(
                stage_breakdown(LinkParams(attenuation_db=att), args.seconds, args.chunk_s)
            )
    for att, att_runs in stage_runs.items():
        best = min(att_runs, key=lambda r: r["total"])
        print(f"  {att:g} dB: " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()))


if __name__ == "__main__":
    main()
