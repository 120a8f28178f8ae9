"""`hil monitor FILE --follow --metrics HOST:PORT --events FILE --syslog udp://...` over a capture
the emulated bench is still writing: the endpoint serves the link's families while it grows,
the transitions go to a chained event log and to a syslog receiver, and bad options are one
line each."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from hil.bench import Bench
from hil.capture import acquire
from hil.fixtures.procedures import link_up
from hil.fixtures.settings import NominalSettings, apply_settings, read_calibration
from hil.telemetry import events


def _hil(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "hil.cli", *args], capture_output=True, text=True, timeout=timeout
    )


OPTION_CASES = [
    (["--metrics", "nowhere"], "--metrics nowhere: metrics address 'nowhere': expected HOST:PORT"),
    (["--syslog", "udp://127.0.0.1:9"], "--syslog needs --events FILE"),
    (["--events", "E", "--syslog", "smtp://h:1"], "syslog target"),
]


def test_monitor_follow_serves_metrics_and_logs_transitions(tmp_path):
    cap_path = tmp_path / "live.h5"
    log = tmp_path / "monitor-events.jsonl"
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.2)
    datagrams: list[bytes] = []
    with Bench.open("emulated") as bench:
        apply_settings(bench, NominalSettings(), read_calibration(bench))
        link_up(bench, 20.0)
        failure: list[BaseException] = []

        def capture():
            try:
                acquire(
                    bench, cap_path, 4.0, pace=1.0, progress=False,
                    actions=[(2.0, bench.switch.cut, "fiber cut")],
                )  # fmt: skip
            except BaseException as exc:  # noqa: BLE001 - reported below
                failure.append(exc)

        runner = threading.Thread(target=capture, daemon=True)
        runner.start()
        deadline = time.monotonic() + 20
        while not cap_path.exists():
            assert time.monotonic() < deadline and not failure, failure or "no capture file"
            time.sleep(0.05)
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "hil.cli", "monitor", str(cap_path), "--follow",
                "--window", "0.1", "--metrics", "127.0.0.1:0", "--link", "pilot-a",
                "--events", str(log), "--syslog", f"udp://127.0.0.1:{rx.getsockname()[1]}",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            url = None
            deadline = time.monotonic() + 30
            while url is None and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if line.startswith("metrics: "):
                    url = line.split()[1]
            assert url, "hil monitor did not say where it serves"
            up_values = set()
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    req = urllib.request.Request(
                        url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
                    )
                    with urllib.request.urlopen(req, timeout=2) as r:
                        text = r.read().decode()
                except OSError:
                    break  # the monitor ended with the capture
                for fam in text_string_to_metric_families(text):
                    if fam.name == "qkd_link_up":
                        up_values |= {(s.labels["link"], s.value) for s in fam.samples}
                try:
                    datagrams.append(rx.recv(65536))
                except TimeoutError:
                    pass
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        runner.join(30)
        if failure:
            raise failure[0]
    while True:
        try:
            datagrams.append(rx.recv(65536))
        except (TimeoutError, OSError):
            break
    rx.close()
    assert proc.returncode == 0, err
    assert ("pilot-a", 1.0) in up_values and ("pilot-a", 0.0) in up_values, up_values
    ok, text = events.verify(log)
    assert ok, text
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["new"] for r in recs if r["kind"] == "state"][:2] == ["UP", "DOWN"]
    assert len(datagrams) == len(recs)
    for datagram, line in zip(datagrams, log.read_text().splitlines(), strict=True):
        assert datagram.decode().endswith("\ufeff" + line)  # RFC 5424 MSG: BOM, then the record

    # bad telemetry options: exit 2, one line each
    for option, text in OPTION_CASES:
        option = [str(tmp_path / "e.jsonl") if a == "E" else a for a in option]
        res = _hil("monitor", str(cap_path), *option)
        assert res.returncode == 2, (option, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (option, res.stderr)
