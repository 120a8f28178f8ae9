"""`pytest testplans/pilot --metrics HOST:PORT`: the endpoint parses with prometheus_client's own
parsers (OpenMetrics and text 0.0.4) and carries every family of the issue while the plan runs;
the run folder holds the event log of actions, commands, monitor states and verdicts, which
`hil audit verify` passes and the manifest covers, and --syslog sends each record to a local
UDP collector."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from hil.telemetry import events

ROOT = Path(__file__).resolve().parents[2]
# the families the issue names (OpenMetrics family names: counters without _total)
FAMILIES = {
    "qkd_link_state": "link state",
    "qkd_link_up": "link state (up/down)",
    "qkd_secret_key_rate_estimate_bits_per_second": "key rate estimate",
    "qkd_qber_ratio": "QBER per basis",
    "qkd_detector_count_rate_hertz": "count rate per detector",
    "qkd_detector_temperature_celsius": "temperature per detector",
    "qkd_detector_dark_count_rate_hertz": "dark counts",
    "qkd_sync_residual_seconds": "sync residual",
    "qkd_sync_locked": "sync status",
    "qkd_scpi_round_trip_seconds": "SCPI round trip per instrument",
    "qkd_capture_data_lost": "data loss",
    "qkd_verdicts": "verdict counters",
    "qkd_kme_stored_keys": "stored keys (key plane)",
    "qkd_delivered_key_bits": "delivered key (key plane)",
    "qkd_delivered_key_rate_bits_per_second": "delivered key rate (key plane)",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pilot_serves_every_family_and_logs_its_events(tmp_path):
    port = _free_port()
    results = tmp_path / "results"
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the syslog collector
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.2)
    datagrams: list[bytes] = []
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "pytest", "testplans/pilot", "-q", "-p", "no:cacheprovider",
            "-k", "fiber_cut or dark_count_rate or control_plane_latency",
            "--metrics", f"127.0.0.1:{port}", "--results", str(results),
            "--syslog", f"udp://127.0.0.1:{rx.getsockname()[1]}",
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen: dict[str, set] = {}  # family -> label sets seen
    verdict_samples: list[dict] = []
    stop = threading.Event()
    errors: list[str] = []

    def scrape() -> None:
        url = f"http://127.0.0.1:{port}/metrics"
        while not stop.is_set():
            try:
                req = urllib.request.Request(
                    url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
                )
                with urllib.request.urlopen(req, timeout=2) as r:
                    om = r.read().decode()
                    ctype = r.headers["Content-Type"]
                with urllib.request.urlopen(url, timeout=2) as r:
                    plain = r.read().decode()
            except OSError:
                stop.wait(0.1)  # not serving yet, or already gone
                continue
            try:
                assert ctype.startswith("application/openmetrics-text"), ctype
                for fam in parse_openmetrics(om):
                    for s in fam.samples:
                        seen.setdefault(fam.name, set()).add(tuple(sorted(s.labels)))
                    if fam.name == "qkd_verdicts":
                        verdict_samples[:] = [
                            {**s.labels, "value": s.value}
                            for s in fam.samples
                            if s.name == "qkd_verdicts_total"
                        ]
                list(parse_text(plain))  # the 0.0.4 text format parses too
            except Exception as exc:  # noqa: BLE001 - reported by the test
                errors.append(f"{type(exc).__name__}: {exc}")
            stop.wait(0.2)

    def collect() -> None:
        while not stop.is_set():
            try:
                datagrams.append(rx.recv(65536))
            except TimeoutError:
                pass

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        time.sleep(0.5)  # the last datagrams
        stop.set()
        scraper.join(10)
        collector.join(10)
        rx.close()
    assert proc.returncode == 0, out[-3000:]
    assert not errors, errors[:3]
    missing = {f: what for f, what in FAMILIES.items() if f not in seen}
    assert not missing, f"families never served: {missing}; seen {sorted(seen)}"
    assert ("basis", "link") in seen["qkd_qber_ratio"]
    assert ("detector", "link") in seen["qkd_detector_count_rate_hertz"]
    assert ("instrument", "link") in seen["qkd_scpi_round_trip_seconds"]
    assert ("kme", "link") in seen["qkd_kme_stored_keys"]
    passed = [s for s in verdict_samples if s["outcome"] == "PASS"]
    assert passed and passed[0]["value"] >= 3, verdict_samples  # cut, restore, dark, latency

    (run,) = results.iterdir()
    log = run / "events.jsonl"
    ok, text = events.verify(log)
    assert ok, text
    kinds = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        kinds.setdefault(rec["kind"], []).append(rec)
    for kind in ("bench_open", "command", "action", "state", "verdict", "capture"):
        assert kind in kinds, f"no {kind!r} event in {sorted(kinds)}"
    assert {a["what"] for a in kinds["action"]} >= {"break", "restore"}
    down = [s for s in kinds["state"] if s["new"] == "DOWN"]
    assert down and all(s["link_time_s"] is not None for s in down)
    assert not any("SYST:AUTH" in c["command"] for c in kinds["command"])
    lines = log.read_text().splitlines()
    assert len(datagrams) == len(lines)  # every record also went to the syslog collector
    for datagram, line in zip(datagrams, lines, strict=True):
        assert datagram.startswith(b"<1") and datagram.decode().endswith("\ufeff" + line)
    digest = hashlib.sha256(log.read_bytes()).hexdigest()
    assert f"{digest}  events.jsonl" in (run / "manifest.sha256").read_text().splitlines()
    rc = subprocess.run(
        [sys.executable, "-m", "hil.cli", "audit", "verify", str(log)],
        capture_output=True, text=True, timeout=60,
    ).returncode  # fmt: skip
    assert rc == 0
