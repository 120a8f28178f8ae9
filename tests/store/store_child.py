"""A writing process for the live-reading and crash tests: appends deterministic tags to a
capture and reports on stdout, one line per flush, how many tags it has flushed.

Usage: python store_child.py PATH CHUNK_TAGS PERIOD_S {crash|close}
- crash: append forever (until killed);
- close: append until a line arrives on stdin, then close the capture normally.
"""

from __future__ import annotations

import select
import sys
import time

import numpy as np

from hil.store import CaptureWriter

TAG_SPACING_PS = 1000


def expected_tags(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Tags ``start..stop`` of the deterministic stream this child writes."""
    i = np.arange(start, stop, dtype=np.int64)
    return i * TAG_SPACING_PS + (i % 7), (i % 5).astype(np.uint8)


def main() -> None:
    path, chunk, period_s, mode = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    w = CaptureWriter(path, snapshot={"bench_name": "store-child"}, flush_every_s=3600)
    print("ready", flush=True)
    n = 0
    while True:
        ts, ch = expected_tags(n, n + chunk)
        w.append(ts, ch)
        n += chunk
        w.flush()
        print(w.n_flushed, flush=True)
        if mode == "close" and select.select([sys.stdin], [], [], 0)[0]:
            w.close(complete=True)
            print("closed", flush=True)
            return
        time.sleep(period_s)


if __name__ == "__main__":
    main()
