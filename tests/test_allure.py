"""Allure output of a run: a step per instrument write, verdict table and plots as attachments,
epic/feature labels and requirement links, environment.properties with every *IDN?; and the
allure command-line tool turns those results into a report that shows all of it.

The bench here is one generic SCPI instrument served by a small TCP server in this process, so
the test needs neither the emulator nor hardware but goes through the real bench fixture,
driver and VISA stack.
"""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import subprocess
import textwrap
import threading

import pytest

pytest_plugins = ["pytester"]

IDN = "ACME Photonics,PM-1,SN0042,2.1"


class _ScpiHandler(socketserver.StreamRequestHandler):
    """Answers every query (a line ending in '?'); remembers the writes."""

    def handle(self):
        for raw in self.rfile:
            line = raw.decode().strip()
            if line.endswith("?"):
                answer = {"*IDN?": IDN, "*OPC?": "1", "SYST:ERR?": '0,"No error"'}.get(line, "0")
                self.wfile.write(answer.encode() + b"\n")
            else:
                self.server.writes.append(line)


@pytest.fixture
def scpi_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _ScpiHandler)
    server.daemon_threads = True
    server.writes = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


CRITERIA = """\
plan: pilot
criteria:
  PIL-PWR-001:
    title: Launch power
    quantity: key_rate_ratio
    unit: "1"
    limits: {min: 0.5}
    marginal: {min: 0.8}
"""

PLAN = """
import pytest

@pytest.fixture(scope="session")
def parked(powermeter):
    yield
    powermeter.write("SYST:LOC")  # an action in a session fixture's teardown

def test_power(powermeter, judge_value, run, parked):
    powermeter.write("SENS:CORR:WAV 1550")
    powermeter.write("CONF:POW")
    run.add_series("ratio", [0, 1, 2], [0.9, 0.7, 0.6], x_label="time (s)", y_label="ratio",
                   criterion_id="PIL-PWR-001")
    judge_value("PIL-PWR-001", 0.6)
"""


def _allure() -> str:
    path = shutil.which("allure")
    java = shutil.which("java")
    if path and java:
        return path
    missing = "allure" if not path else "java"
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{missing} is not installed (CI: apt-get install -y openjdk-17-jre-headless; "
            "npm install -g allure-commandline)"
        )
    pytest.skip(f"{missing} is not installed (npm install -g allure-commandline; Java 17)")


def test_allure_results_and_generated_report(pytester, scpi_server, tmp_path):
    allure = _allure()
    port = scpi_server.server_address[1]
    (pytester.path / "tiny.yaml").write_text(
        textwrap.dedent(
            f"""
            name: tiny
            instruments:
              powermeter:
                resource: "TCPIP::127.0.0.1::{port}::SOCKET"
                driver: Instrument
            """
        )
    )
    plan = pytester.mkdir("plan")
    (plan / "criteria.yaml").write_text(CRITERIA)
    (plan / "test_power.py").write_text(textwrap.dedent(PLAN))
    result = pytester.runpytest_subprocess(
        "plan", "--bench", "tiny.yaml", "--results", "res", "--alluredir", "allure-results"
    )
    result.assert_outcomes(passed=1)
    assert scpi_server.writes[-3:] == ["SENS:CORR:WAV 1550", "CONF:POW", "SYST:LOC"]

    results = pytester.path / "allure-results"
    env = (results / "environment.properties").read_text()
    assert "bench=tiny\n" in env
    # ',' needs no escape in a .properties value; the IDN is written as the instrument sent it
    assert f"powermeter.idn={IDN}\n" in env

    (case,) = [json.loads(p.read_text()) for p in results.glob("*-result.json")]
    steps = [s["name"] for s in case["steps"]]
    assert steps == ["powermeter: SENS:CORR:WAV 1550", "powermeter: CONF:POW"]
    labels = {(x["name"], x["value"]) for x in case["labels"]}
    assert {("epic", "pilot"), ("feature", "PIL-PWR-001")} <= labels
    assert {"type": "requirement", "url": "PIL-PWR-001", "name": "PIL-PWR-001"} in case["links"]
    # the teardown action is a step of the fixture's "after" in a container
    afters = [
        a
        for p in results.glob("*-container.json")
        for a in json.loads(p.read_text()).get("afters", [])
        if a["name"].startswith("parked::")
    ]
    assert [s["name"] for a in afters for s in a.get("steps", [])] == ["powermeter: SYST:LOC"]
    kinds = {a["name"]: a["type"] for a in case["attachments"]}
    assert kinds == {"verdicts": "text/html", "ratio": "image/png"}
    table = (results / case["attachments"][0]["source"]).read_text()
    assert "PIL-PWR-001" in table and 'class="MARGINAL"' in table

    # the allure command-line tool: the generated report shows the test, steps and attachments
    report = tmp_path / "report"
    proc = subprocess.run(
        [allure, "generate", str(results), "-o", str(report), "--clean"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (generated,) = [json.loads(p.read_text()) for p in (report / "data/test-cases").glob("*.json")]
    assert generated["name"] == "test_power"
    body = generated["testStage"]
    assert [s["name"] for s in body["steps"]] == steps
    assert {a["name"] for a in body["attachments"]} == {"verdicts", "ratio"}
    for a in body["attachments"]:
        assert (report / "data/attachments" / a["source"]).stat().st_size > 0
    assert {"name": "PIL-PWR-001", "url": "PIL-PWR-001", "type": "requirement"} in generated[
        "links"
    ]
    widget = json.loads((report / "widgets/environment.json").read_text())
    assert {"name": "powermeter.idn", "values": [IDN]} in widget
