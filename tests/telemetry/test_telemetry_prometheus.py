"""A real Prometheus server scrapes the exporter while a fiber cut is injected on the emulated
bench, and reports the shipped QKDLinkDown alert firing, then resolved after the restore.

The emulated link runs at wall-clock pace (acquire(..., pace=1.0)) so that Prometheus, which
lives in wall time, sees the outage last as long as the link does.
"""

from __future__ import annotations

import json
import math
import queue
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
import yaml

from hil import monitor as monitor_mod
from hil.bench import Bench
from hil.capture import acquire
from hil.fixtures.procedures import link_up
from hil.fixtures.settings import NominalSettings, apply_settings, read_calibration
from hil.monitor import LinkMonitor
from hil.postprocess import LinkSettings
from hil.telemetry.metrics import LinkTelemetry
from hil.telemetry.rules import RULES_FILE

SCRAPE_S = 0.5
EVAL_S = 0.02  # Prometheus fires only at a rule evaluation: part of the bound below
WINDOW_S = 0.1  # link monitor window (link time = wall time at pace 1)
POLL_S = 0.02  # how often this test asks Prometheus
# 20 dB: ~0.2 MHz of detections, so the emulator keeps its pace and the monitor its windows on
# a loaded 2-core machine (at 10 dB, 1.9 MHz, both lag behind the wall clock)
ATTENUATION_DB = 20.0
CUT_AT_S, RESTORE_AT_S, DURATION_S = 3.0, 7.0, 9.0


def _for_s(alert: str) -> float:
    rules = yaml.safe_load(RULES_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                return float(rule["for"].rstrip("s"))
    raise LookupError(alert)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.load(r)


@pytest.fixture
def prometheus(prometheus_bin, tmp_path):
    """Start Prometheus on a temporary config; yields (base URL, set_target)."""
    tel = LinkTelemetry("emulated")
    port = tel.serve("127.0.0.1", 0)
    web = _free_port()
    config = {
        "global": {"scrape_interval": f"{int(SCRAPE_S * 1000)}ms",
                   "evaluation_interval": f"{int(EVAL_S * 1000)}ms"},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {"job_name": "qkd-hil", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        ],
    }  # fmt: skip
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(base + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"prometheus did not become ready in 20 s (exit {proc.poll()}): "
                    f"{(tmp_path / 'prometheus.log').read_text()[-500:]}"
                )
            time.sleep(0.1)
        # Prometheus applies new scrape targets at most every 5 s: wait for the first scrape
        deadline = time.monotonic() + 20
        while not any(
            t["health"] == "up" for t in _get(base + "/api/v1/targets")["data"]["activeTargets"]
        ):
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus did not scrape 127.0.0.1:{port} within 20 s")
            time.sleep(0.1)
        monitor_mod.WINDOW_OBSERVERS.append(tel.observe_window)
        yield base, tel
    finally:
        if tel.observe_window in monitor_mod.WINDOW_OBSERVERS:
            monitor_mod.WINDOW_OBSERVERS.remove(tel.observe_window)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        tel.close()


def _link_down_alerts(base: str) -> list[dict]:
    data = _get(base + "/api/v1/alerts")["data"]["alerts"]
    return [a for a in data if a["labels"].get("alertname") == "QKDLinkDown"]


def test_prometheus_fires_link_down_on_fiber_cut_and_resolves(prometheus, tmp_path):
    base, tel = prometheus
    for_s = _for_s("QKDLinkDown")
    # the bound (scrape interval + for + one window), plus what it leaves implicit:
    # Prometheus changes an alert's state only at a rule evaluation, and this test sees it only
    # when it asks
    bound_s = SCRAPE_S + EVAL_S + for_s + WINDOW_S + POLL_S
    with Bench.open("emulated") as bench:
        apply_settings(bench, NominalSettings(), read_calibration(bench))
        link_up(bench, ATTENUATION_DB)
        link = LinkSettings.from_source(bench.source)
        LinkMonitor.warm(link)
        wall: dict[str, float] = {}

        def note_down(monitor, w, ch):  # when the exporter's gauge first read DOWN (wall time)
            if w.state.value == "DOWN" and "cut" in wall:
                wall.setdefault("gauge_down", time.monotonic())

        mon = LinkMonitor(link, bench.source.sift, window_s=WINDOW_S, on_window=None)
        monitor_mod.WINDOW_OBSERVERS.append(note_down)

        def cut():
            bench.switch.cut()
            wall["cut"] = time.monotonic()

        def restore():
            bench.switch.restore()
            wall["restore"] = time.monotonic()

        chunks: queue.Queue = queue.Queue()

        def follow():
            while (item := chunks.get()) is not None:
                mon.feed(*item)

        worker = threading.Thread(target=follow, daemon=True)
        worker.start()
        failure: list[BaseException] = []

        def capture():
            try:
                acquire(
                    bench,
                    tmp_path / "cut.h5",
                    DURATION_S,
                    actions=[(CUT_AT_S, cut, "fiber cut"), (RESTORE_AT_S, restore, "restore")],
                    pace=1.0,
                    progress=False,
                    on_chunk=lambda ts, ch: chunks.put((ts, ch)),
                )
            except BaseException as exc:  # noqa: BLE001 - reported below
                failure.append(exc)
            finally:
                chunks.put(None)

        runner = threading.Thread(target=capture, daemon=True)
        runner.start()
        fired = resolved = active_at = None
        up_seen = False
        deadline = time.monotonic() + DURATION_S + 15
        while time.monotonic() < deadline and not failure:
            now = time.monotonic()
            alerts = _link_down_alerts(base)
            if "cut" not in wall:
                assert not alerts, f"link-down alert before the cut: {alerts}"
                q = _get(base + "/api/v1/query?query=qkd_link_up")["data"]["result"]
                up_seen = up_seen or any(float(r["value"][1]) == 1.0 for r in q)
            elif fired is None:
                if any(a["state"] == "firing" for a in alerts):
                    fired = now
                    active_at = alerts[0]["activeAt"]  # Prometheus's first evaluation saw it
            elif "restore" in wall and not alerts:
                resolved = now
                break
            time.sleep(POLL_S)
        runner.join(DURATION_S + 30)
        worker.join(30)
        monitor_mod.WINDOW_OBSERVERS.remove(note_down)
        if failure:
            raise failure[0]
    assert up_seen, "Prometheus never saw the link up before the cut"
    assert fired is not None, "QKDLinkDown never fired after the fiber cut"
    latency = fired - wall["cut"]
    gauge_s = wall.get("gauge_down", math.nan) - wall["cut"]
    detail = (
        f"monitor window DOWN {gauge_s:.2f} s after the cut, pending since {active_at}, "
        f"firing seen {latency:.2f} s after the cut (bound {bound_s:.2f} s)"
    )
    print(detail)
    assert latency <= bound_s, (
        f"QKDLinkDown fired {latency:.2f} s after the cut, later than scrape {SCRAPE_S} + "
        f"evaluation {EVAL_S} + for {for_s} + window {WINDOW_S} + poll {POLL_S} s ({detail})"
    )
    assert fired < wall["restore"], "the alert fired only after the restore"
    assert resolved is not None, "QKDLinkDown still active after the restore"
    back = resolved - wall["restore"]
    print(f"resolved {back:.2f} s after the restore")
    assert back <= SCRAPE_S + EVAL_S + WINDOW_S + POLL_S
    states = [w.state.value for w in mon.windows]
    assert "DOWN" in states and states[-1] == "UP", states
