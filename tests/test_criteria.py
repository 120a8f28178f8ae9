"""Criteria files: every malformed example gives one error line naming file, line and key;
verdicts PASS / MARGINAL / FAIL with value, limit and margin."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from hil.config import ConfigError
from hil.criteria import Criterion, judge, load_criteria

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((Path(__file__).parent / "data" / "criteria_bad").glob("*.yaml"))


def test_there_are_at_least_ten_malformed_examples():
    assert len(BAD) >= 10


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_malformed_file_gives_one_line_naming_file_line_and_key(path):
    # each example states its expected error on its first line: "# expect: LINE: KEY: MESSAGE"
    expect = re.match(r"# expect: (\d+): (.+?): (.+)$", path.read_text().splitlines()[0])
    assert expect, f"{path.name}: first line must be '# expect: LINE: KEY: MESSAGE'"
    line, key, message = expect.groups()
    with pytest.raises(ConfigError) as info:
        load_criteria(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}:{line}: {key}: "), text
    assert message in text, text


def test_missing_file_is_one_line():
    with pytest.raises(ConfigError, match=r"^nowhere/criteria.yaml: file not found$"):
        load_criteria("nowhere/criteria.yaml")


def test_plan_criteria_files_in_the_repository_are_valid():
    files = sorted((ROOT / "testplans").rglob("criteria.yaml"))
    assert files, "no criteria files under testplans/"
    for f in files:
        spec, _ = load_criteria(f)
        assert spec.criteria


def _criterion(**kw) -> Criterion:
    base = {"title": "t", "quantity": "count_rate", "unit": "kHz", "limits": {"min": 100}}
    base.update(kw)
    return Criterion.model_validate(base)


# min-side criterion: limit 100 kHz, marginal band 100..150 kHz. Values in Hz (SI); expected
# values and margins in kHz worked out by hand: value/1e3 - 100.
@pytest.mark.parametrize(
    "value_hz, outcome, margin_khz",
    [
        (200e3, "PASS", 100.0),
        (150e3, "PASS", 50.0),  # the band's edge belongs to PASS
        (120e3, "MARGINAL", 20.0),
        (100e3, "MARGINAL", 0.0),  # on the limit: still passes
        (90e3, "FAIL", -10.0),
    ],
)
def test_min_limit_with_marginal_band(value_hz, outcome, margin_khz):
    c = _criterion(marginal={"min": 150})
    v = judge("PIL-RATE-001", c, value_hz, test="tests/x.py::test_y")
    assert v.outcome == outcome
    assert v.value == pytest.approx(value_hz / 1e3, rel=1e-12)
    assert v.margin == pytest.approx(margin_khz, abs=1e-9)
    assert v.passed is (outcome != "FAIL")
    assert v.test == "tests/x.py::test_y"
    assert v.limits == {"min": 100.0, "max": None}


def test_max_limit_in_percent():
    # QBER limit 5 %, marginal from 4 %: 0.045 is 4.5 %, 0.5 % inside the limit
    c = _criterion(quantity="qber", unit="%", limits={"max": 5}, marginal={"max": 4})
    v = judge("PIL-QBER-001", c, 0.045)
    assert (v.outcome, v.unit) == ("MARGINAL", "%")
    assert v.value == pytest.approx(4.5, rel=1e-12)
    assert v.margin == pytest.approx(0.5, rel=1e-9)
    assert "MARGINAL" in v.line() and "<= 5 %" in v.line()
    assert judge("X", c, 0.06).margin == pytest.approx(-1.0, rel=1e-9)


def test_two_sided_margin_is_distance_to_the_nearest_limit():
    c = _criterion(
        quantity="clock_drift", unit="ppm", limits={"min": -10, "max": 10}, marginal={"max": 5}
    )
    assert judge("S", c, 7.0).margin == pytest.approx(3.0)
    assert judge("S", c, 7.0).outcome == "MARGINAL"
    assert judge("S", c, -8.0).margin == pytest.approx(2.0)
    assert judge("S", c, -8.0).outcome == "PASS"  # no marginal band on the min side
    assert judge("S", c, 11.0).outcome == "FAIL"


def test_nan_fails():
    v = judge("PIL-RATE-001", _criterion(), float("nan"))
    assert v.outcome == "FAIL" and math.isnan(v.margin)


def test_conditions_of_the_measurement_are_added_to_the_criterion_conditions():
    c = _criterion(conditions={"attenuation_db": 10, "duration_s": 1})
    v = judge("PIL-RATE-001", c, 2e5, conditions={"duration_s": 2, "temperature_c": -50})
    assert v.conditions == {"attenuation_db": 10, "duration_s": 2, "temperature_c": -50}


def test_integer_limits_and_flat_conditions_are_accepted(tmp_path):
    f = tmp_path / "criteria.yaml"
    f.write_text(
        "plan: pilot\ncriteria:\n  PIL-1:\n    title: t\n    quantity: uptime\n"
        '    unit: "%"\n    limits: {min: 95}\n    marginal: {min: 98.5}\n'
        "    conditions: {soak_s: 60, channels: [1, 2], emulated: true}\n"
    )
    spec, path = load_criteria(f)
    assert path == f
    assert spec.criteria["PIL-1"].conditions["channels"] == [1, 2]
