"""Key delivery round trips on the emulated KME pair: enc_keys on kme_a then dec_keys on kme_b
(one 256-bit key each), through the project's client and, in the same run, through plain
``requests`` sessions (keep-alive, the ready file's certificates, verify= per request).

The pair runs in its own process (``python -m hil.emulator.kme``), as the emulator does on a
bench, so client and server do not share one interpreter lock. Each row prints round trips per
second and the p50/p99 latency of a round trip (both requests). The two clients alternate in
blocks so that a load change on the machine hits both.

Run: python benchmarks/bench_kme.py [--round-trips 3000] [--blocks 3]
Target (issue 15): >= 500 round trips/s of 256-bit keys on 2 cores, p99 < 10 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from hil.instruments.kme import KMEClient

READY_DEADLINE_S = 30.0


def _driver_round_trips(info: dict, n: int) -> list[float]:
    m, s = info["saes"]["master"], info["saes"]["slave"]
    ka, kb = info["kmes"]["kme_a"], info["kmes"]["kme_b"]
    a = KMEClient(ka["url"], ka["kme_id"], m["sae_id"], m["cert"], m["key"], info["ca_cert"])
    b = KMEClient(kb["url"], kb["kme_id"], s["sae_id"], s["cert"], s["key"], info["ca_cert"])
    out = []
    with a, b:
        for _ in range(n):
            t0 = time.perf_counter()
            keys = a.enc_keys(s["sae_id"], number=1, size=256)
            got = b.dec_keys(m["sae_id"], [keys[0].key_ID])
            out.append(time.perf_counter() - t0)
            if got != keys:
                raise SystemExit("the two KMEs delivered different keys")
    return out


def _requests_round_trips(info: dict, n: int) -> list[float]:
    m, s = info["saes"]["master"], info["saes"]["slave"]
    ca = info["ca_cert"]
    enc = f"{info['kmes']['kme_a']['url']}/api/v1/keys/{s['sae_id']}/enc_keys"
    dec = f"{info['kmes']['kme_b']['url']}/api/v1/keys/{m['sae_id']}/dec_keys"
    out = []
    with requests.Session() as sa, requests.Session() as sb:
        sa.cert, sb.cert = (m["cert"], m["key"]), (s["cert"], s["key"])
        for _ in range(n):
            t0 = time.perf_counter()
            r = sa.post(enc, json={"number": 1, "size": 256}, verify=ca, timeout=10)
            key = r.json()["keys"][0]
            r2 = sb.post(dec, json={"key_IDs": [{"key_ID": key["key_ID"]}]}, verify=ca, timeout=10)
            out.append(time.perf_counter() - t0)
            if r2.json()["keys"][0] != key:
                raise SystemExit("the two KMEs delivered different keys")
    return out


def _row(name: str, lat: list[float]) -> str:
    lat = sorted(lat)
    rate = len(lat) / sum(lat)
    p50 = 1e3 * statistics.median(lat)
    p99 = 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return f"{name:<22} {len(lat):>7} {rate:>10.0f} {p50:>9.2f} {p99:>9.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--round-trips", type=int, default=3000, help="per client, over all blocks")
    p.add_argument("--blocks", type=int, default=3)
    args = p.parse_args()
    per_block = max(1, args.round_trips // args.blocks)
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        # stock for every round trip of both clients, and a supply that keeps up
        stock = 2 * per_block * args.blocks + 100
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hil.emulator.kme",
                "--ready-file",
                str(ready),
                "--initial-keys",
                str(stock),
                "--rate-bps",
                "1e6",
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + READY_DEADLINE_S
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the KME pair did not start")
                time.sleep(0.05)
            info = json.loads(ready.read_text())
            _driver_round_trips(info, 50)  # warm: connections, imports
            _requests_round_trips(info, 50)
            lat_d: list[float] = []
            lat_r: list[float] = []
            for _ in range(args.blocks):
                lat_d += _driver_round_trips(info, per_block)
                lat_r += _requests_round_trips(info, per_block)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"{'client':<22} {'trips':>7} {'trips/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
    print(_row("hil.instruments.kme", lat_d))
    print(_row("requests (baseline)", lat_r))
    print("one round trip = enc_keys on kme_a + dec_keys on kme_b, one 256-bit key")


if __name__ == "__main__":
    main()
