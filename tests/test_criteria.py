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
        "    conditions: {soak_s: 60, attenuation_db: [4, 7], key_rate_floor_kbps: 20}\n"
    )
    spec, path = load_criteria(f)
    assert path == f
    assert spec.criteria["PIL-1"].conditions["attenuation_db"] == [4, 7]


# -- conditions: the schema accepts only what a measurement honours ------------------------------

_SKR = (
    "plan: pilot\ncriteria:\n  PIL-SKR-001:\n    title: t\n    quantity: secure_key_rate\n"
    "    unit: kbit/s\n    limits: {min: 10}\n    conditions: {attenuation_db: 10, %s}\n"
)


@pytest.mark.parametrize(
    "condition, message",
    [
        (
            "f_ecc: 1.2",
            "unknown condition 'f_ecc' for secure_key_rate (no measurement would honour it); "
            "accepted: attenuation_db, ",
        ),
        ("basis: Z", "unknown condition 'basis' for secure_key_rate"),  # a QBER condition
        ("f_ec: 0.9", "0.9 is outside [1, 10]"),  # better than the Shannon limit
        ("eps_sec: 0", "0 is outside (0, 1)"),
        ("eps_cor: '1e-15'", "must be a finite number"),  # a string, not a number
        ("duration_s: -3", "is outside (0, inf]"),
    ],
)
def test_a_condition_no_measurement_honours_is_refused_in_one_line(tmp_path, condition, message):
    f = tmp_path / "criteria.yaml"
    f.write_text(_SKR % condition)
    key = condition.split(":")[0]
    with pytest.raises(ConfigError) as info:
        load_criteria(f)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{f}:8: criteria.PIL-SKR-001.conditions.{key}: "), text
    assert message in text, text


def test_dark_counts_accept_only_the_conditions_the_procedure_applies(tmp_path):
    f = tmp_path / "criteria.yaml"
    f.write_text(
        "plan: p\ncriteria:\n  D:\n    title: t\n    quantity: dark_count_rate\n    unit: Hz\n"
        "    limits: {max: 10}\n    conditions: {integration_s: 1, source: 'on'}\n"
    )
    with pytest.raises(ConfigError, match=r":8: criteria\.D\.conditions\.source: 'on' is not"):
        load_criteria(f)


_ID = re.compile(r"^[A-Z]+(-[A-Z0-9]+)+$")  # a requirement id such as PIL-RATE-001


def _condition_reads(plan_dir: Path) -> dict[str, set[str]]:
    """criterion id -> the condition keys its test reads, from the plan's test modules.

    A test reads a criterion's conditions as ``cond = conditions("ID")`` (or
    ``conditions(criterion_id)`` with the ids in its parametrize list) followed by
    ``cond["key"]``; the ids a test judges with ``judge_value("ID", ...)`` are credited with the
    keys it read of another criterion only where both state the same value (checked by the
    caller): they share that measurement."""
    import ast

    reads: dict[str, set[str]] = {}
    for module in sorted(plan_dir.glob("test_*.py")):
        tree = ast.parse(module.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            ids_of_var: dict[str, list[str]] = {}
            param_ids = [
                c.value
                for d in fn.decorator_list
                for c in ast.walk(d)
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and "-" in c.value
            ]
            judged: set[str] = set()
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    args = node.args
                    if node.func.id == "judge_value" and args and isinstance(args[0], ast.Constant):
                        judged.add(args[0].value)
                    elif node.func.id == "judge_value":  # an id from a loop or parametrize
                        judged.update(param_ids)
                        judged.update(
                            c.value
                            for c in ast.walk(fn)
                            if isinstance(c, ast.Constant) and _ID.match(str(c.value))
                        )
            for node in ast.walk(fn):
                # cond = conditions("ID") / conditions(criterion_id)
                if (
                    isinstance(node, ast.Assign)
                    and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Name)
                    and node.value.func.id == "conditions"
                    and isinstance(node.targets[0], ast.Name)
                ):
                    arg = node.value.args[0]
                    ids = [arg.value] if isinstance(arg, ast.Constant) else param_ids
                    ids_of_var[node.targets[0].id] = ids
            keys_of: dict[str, set[str]] = {}
            for node in ast.walk(fn):
                # cond["key"], and conditions("ID")["key"] read directly
                if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                    target = node.value
                    ids = []
                    if isinstance(target, ast.Name) and target.id in ids_of_var:
                        ids = ids_of_var[target.id]
                    elif (
                        isinstance(target, ast.Call)
                        and isinstance(target.func, ast.Name)
                        and target.func.id == "conditions"
                    ):
                        a = target.args[0]
                        ids = [a.value] if isinstance(a, ast.Constant) else param_ids
                    for cid in ids:
                        keys_of.setdefault(cid, set()).add(node.slice.value)
                # KeyParameters.from_conditions(cond) reads eps_sec, eps_cor and f_ec
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_conditions"
                    and isinstance(node.args[0], ast.Name)
                ):
                    for cid in ids_of_var.get(node.args[0].id, []):
                        keys_of.setdefault(cid, set()).update({"eps_sec", "eps_cor", "f_ec"})
            for cid, keys in keys_of.items():
                reads.setdefault(cid, set()).update(keys)
            for cid in judged:
                reads.setdefault(f"judged:{cid}", set()).update(
                    f"{other}\0{k}" for other, ks in keys_of.items() for k in ks
                )
    return reads


@pytest.mark.parametrize("plan", ["pilot", "acceptance", "pilot/faults"])
def test_every_condition_of_a_plan_reaches_its_measurement(plan):
    """Each condition key of each criterion is read by the test that judges it (or, for a
    criterion judged on another's measurement, equals the value that test read)."""
    plan_dir = ROOT / "testplans" / plan
    spec, _ = load_criteria(plan_dir / "criteria.yaml")
    reads = _condition_reads(plan_dir)
    unread = []
    for cid, c in spec.criteria.items():
        own = reads.get(cid, set())
        shared = {
            k.split("\0")[1]
            for k in reads.get(f"judged:{cid}", set())
            if spec.criteria.get(k.split("\0")[0])
            and spec.criteria[k.split("\0")[0]].conditions.get(k.split("\0")[1])
            == c.conditions.get(k.split("\0")[1])
        }
        missing = set(c.conditions) - own - shared
        if missing:
            unread.append(f"{cid}: {sorted(missing)}")
    assert not unread, f"conditions no test of {plan} reads: {unread}"


def test_the_condition_check_finds_a_condition_no_test_reads(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "def test_a(conditions, judge_value):\n"
        '    cond = conditions("X-RATE-1")\n'
        '    judge_value("X-RATE-1", cond["duration_s"])\n'
        '    judge_value("X-RATE-2", 1.0)\n'
    )
    reads = _condition_reads(tmp_path)
    assert reads["X-RATE-1"] == {"duration_s"}  # attenuation_db, if stated, is not read
    # X-RATE-2 is judged on X-RATE-1's measurement: credited with what that test read of it
    assert reads["judged:X-RATE-2"] == {"X-RATE-1\0duration_s"}
