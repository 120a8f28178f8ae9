"""The shipped alert rules: `promtool check rules` passes, the project's `promtool test rules`
cases pass, and each case fails when the threshold or hold time it pins is changed."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hil.telemetry.rules import RULES_FILE

HERE = Path(__file__).parent
TESTS = sorted(HERE.glob("*.test.yml"))


def test_rules_file_is_package_data():
    assert RULES_FILE.is_file(), f"{RULES_FILE} not shipped"
    text = RULES_FILE.read_text()
    for alert in (
        "QKDLinkDown",
        "QKDQBERAboveAbort",
        "QKDKeyRateLow",
        "QKDDetectorTemperatureOutOfBand",
        "QKDSyncLost",
        "QKDKeyStoreLow",
    ):
        assert f"alert: {alert}\n" in text


def test_promtool_check_rules(promtool):
    out = subprocess.run(
        [promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout


def test_promtool_test_rules(promtool):
    assert TESTS, "no promtool unit-test files in tests/telemetry"
    out = subprocess.run(
        [promtool, "test", "rules", *map(str, TESTS)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


# each mutation of the shipped rules must make the unit tests fail: they pin every threshold
MUTATIONS = [
    ("qkd_link_up == 0\n        for: 2s", "qkd_link_up == 0\n        for: 4s"),
    ("expr: qkd_qber_ratio > 0.11", "expr: qkd_qber_ratio > 0.125"),
    ("[1m]) < 100)", "[1m]) < 40)"),
    (
        "qkd_detector_temperature_setpoint_celsius) > 2",
        "qkd_detector_temperature_setpoint_celsius) > 1",
    ),
    ("qkd_sync_locked == 0\n        for: 2s", "qkd_sync_locked == 0\n        for: 5s"),
    ("expr: qkd_kme_stored_keys < 10", "expr: qkd_kme_stored_keys < 4"),
]


@pytest.mark.parametrize("old,new", MUTATIONS, ids=[m[1].split("\n")[0][:40] for m in MUTATIONS])
def test_unit_tests_catch_a_changed_threshold(promtool, tmp_path, old, new):
    text = RULES_FILE.read_text()
    assert text.count(old) == 1, old
    rules = tmp_path / "hil" / "telemetry" / "rules" / RULES_FILE.name
    rules.parent.mkdir(parents=True)
    rules.write_text(text.replace(old, new))
    tests = tmp_path / "tests" / "telemetry"
    tests.mkdir(parents=True)
    for t in TESTS:
        shutil.copy(t, tests / t.name)
    out = subprocess.run(
        [promtool, "test", "rules", *(str(tests / t.name) for t in TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0, f"mutation {new!r} went unnoticed:\n{out.stdout}"
    assert re.search(r"FAILED", out.stdout + out.stderr)
