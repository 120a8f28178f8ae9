"""What serving metrics costs against what the link monitor costs, in CPU time.

Run: .venv/bin/python benchmarks/bench_telemetry.py [--duration 3] [--scrape-interval 0.5]

A capture of ``--duration`` s of link time is taken from the emulated bench (pilot operating
point, 10 dB), then the link monitor (0.1 s windows, sifting against the emulated source) runs
over its chunks twice: once alone, once with the metrics exporter observing every window. The
exporter's CPU time is counted where it is spent:

- observing windows: thread CPU time inside ``LinkTelemetry.observe_window`` (monitor thread);
- serving: this process's CPU time per OpenMetrics scrape made by a client in another process
  (as Prometheus is), times the scrapes Prometheus makes in ``--duration`` s at
  ``--scrape-interval`` (the real Prometheus test scrapes every 0.5 s; Prometheus's default is
  15 s);
- polling the bench: CPU time per poll (detector temperatures, set points, dark counts, SCPI
  round trips, KME status), times the polls in ``--duration`` s at ``--poll-interval``.

Target: the sum is under 2 % of the monitor's CPU time for the same link time. Exit status 1
when it is not.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hil import monitor as monitor_mod
from hil.bench import Bench
from hil.capture import acquire
from hil.fixtures.procedures import link_up
from hil.fixtures.settings import NominalSettings, apply_settings, read_calibration
from hil.monitor import LinkMonitor, follow_capture
from hil.postprocess import LinkSettings
from hil.telemetry.metrics import POLL_S, LinkTelemetry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3.0, help="link time captured (s)")
    ap.add_argument("--scrape-interval", type=float, default=0.5, help="Prometheus scrape (s)")
    ap.add_argument("--poll-interval", type=float, default=POLL_S, help="bench poll (s)")
    ap.add_argument("--scrapes", type=int, default=200, help="scrapes timed for the average")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d, Bench.open("emulated") as bench:
        apply_settings(bench, NominalSettings(), read_calibration(bench))
        link_up(bench, 10.0)
        cap = acquire(bench, Path(d) / "bench.h5", args.duration, progress=False)
        bench.source.output_enabled = False
        chunks = [(ts.copy(), ch.copy()) for ts, ch in follow_capture(cap.path)]
        link = LinkSettings.from_source(bench.source)
        LinkMonitor.warm(link)

        def run_monitor(observer=None) -> tuple[float, int]:
            mon = LinkMonitor(link, bench.source.sift, window_s=0.1)
            if observer is not None:
                monitor_mod.WINDOW_OBSERVERS.append(observer)
            try:
                t0 = time.process_time()
                for ts, ch in chunks:
                    mon.feed(ts, ch)
                mon.flush(cap.t_stop_ps * 1e-12)
                return time.process_time() - t0, len(mon.windows)
            finally:
                if observer is not None:
                    monitor_mod.WINDOW_OBSERVERS.remove(observer)

        run_monitor()  # first pass: caches of the source's answers and numba warm in both runs
        monitor_cpu, n_windows = run_monitor()

        tel = LinkTelemetry("bench")
        observed = [0.0]

        def observer(mon, w, ch) -> None:
            t0 = time.thread_time()
            tel.observe_window(mon, w, ch)
            observed[0] += time.thread_time() - t0

        with_cpu, _ = run_monitor(observer)

        port = tel.serve("127.0.0.1", 0)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        tel.poll_bench(bench)
        tel.poll_kmes(bench)  # every family present before timing the scrapes
        # the scrapes come from another process (as Prometheus's do): this process's CPU time
        # over them is the server's
        client = (
            "import sys, urllib.request as u\n"
            "req = u.Request(sys.argv[1], headers={'Accept': "
            "'application/openmetrics-text; version=1.0.0'})\n"
            "u.urlopen(req, timeout=5).read()\n"
            "print('ready', flush=True); sys.stdin.readline()\n"
            "for _ in range(int(sys.argv[2])):\n"
            "    n = len(u.urlopen(req, timeout=5).read())\n"
            "print(n)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", client, req.full_url, str(args.scrapes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.process_time()
        out, _ = proc.communicate("go\n", timeout=120)
        per_scrape = (time.process_time() - t0) / args.scrapes
        size = int(out.split()[-1])
        t0 = time.process_time()
        n_polls = 5
        for _ in range(n_polls):
            tel.poll_bench(bench)
            tel.poll_kmes(bench)
        per_poll = (time.process_time() - t0) / n_polls
        tel.close()

    scrapes = args.duration / args.scrape_interval
    polls = args.duration / args.poll_interval
    serving = observed[0] + per_scrape * scrapes + per_poll * polls
    share = serving / monitor_cpu
    print(
        f"link time {args.duration:g} s, {n_windows} monitor windows of 0.1 s, {len(chunks)} chunks"
    )
    print(f"monitor CPU time                      {monitor_cpu * 1e3:9.1f} ms")
    print(f"monitor CPU time with the exporter    {with_cpu * 1e3:9.1f} ms (A/B, noisy)")
    print(f"exporter: observing windows           {observed[0] * 1e3:9.2f} ms")
    print(
        f"exporter: {scrapes:g} scrapes of {size} B at {args.scrape_interval:g} s "
        f"{per_scrape * scrapes * 1e3:9.2f} ms ({per_scrape * 1e3:.2f} ms each)"
    )
    print(
        f"exporter: {polls:g} bench polls at {args.poll_interval:g} s         "
        f"{per_poll * polls * 1e3:9.2f} ms ({per_poll * 1e3:.2f} ms each)"
    )
    print(f"serving metrics CPU time              {serving * 1e3:9.2f} ms")
    print(f"serving metrics / monitor CPU time    {share * 100:9.2f} %  (target < 2 %)")
    return 0 if share < 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
