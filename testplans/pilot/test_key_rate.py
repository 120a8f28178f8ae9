"""Pilot: secure key rate and QBER at the nominal loss, and key rate against loss."""

import json

import pytest

from hil.fixtures.procedures import measure_key

BASES = {"Z": 0, "X": 1}
CLASSES = {"signal": 0, "decoy": 1, "vacuum": 2}


@pytest.fixture(scope="module")
def nominal(bench, pilot_source, run, conditions):
    cond = conditions("PIL-SKR-001")
    return measure_key(bench, run, cond["attenuation_db"], cond["duration_s"], "nominal_loss")


def test_secure_key_rate_at_nominal_loss(nominal, judge_value):
    total = nominal.analysis.total
    assert total.key.key_length > 0, f"no key: {total.key.abort_reason}"
    judge_value("PIL-SKR-001", nominal.secure_key_rate_bps, evidence=[nominal.evidence])


@pytest.mark.parametrize(
    "criterion_id", ["PIL-QBER-001", "PIL-QBER-002", "PIL-QBER-003", "PIL-QBER-004"]
)
def test_qber_per_basis_and_intensity(nominal, conditions, judge_value, criterion_id):
    cond = conditions(criterion_id)
    counts = nominal.analysis.total.counts
    b, k = BASES[cond["basis"]], CLASSES[cond["intensity"]]
    assert counts.d[b, k] > 0, "no disclosed bits in this basis and intensity"
    judge_value(criterion_id, counts.m[b, k] / counts.d[b, k], evidence=[nominal.evidence])


def test_key_rate_against_loss(bench, pilot_source, run, conditions, judge_value):
    cond = conditions("PIL-SKR-002")
    points = []
    for att in cond["attenuation_db"]:
        m = measure_key(bench, run, att, cond["duration_s"], f"sweep_{att:g}dB")
        t = m.analysis.total
        points.append(
            {
                "attenuation_db": att,
                "secure_key_rate_bps": m.secure_key_rate_bps,
                "qber_z": t.qber_z,
                "qber_x": t.qber_x,
                "evidence": m.evidence.name,
                "abort_reason": t.key.abort_reason,
            }
        )
    table = run.path("key_rate_vs_loss.json")
    table.write_text(json.dumps(points, indent=2))
    run.add_series(
        "secure key rate against loss",
        [p["attenuation_db"] for p in points],
        [p["secure_key_rate_bps"] / 1e3 for p in points],
        x_label="attenuation (dB)",
        y_label="secure key rate (kbit/s)",
        criterion_id="PIL-SKR-002",
        log_y=True,
    )
    worst = min(points, key=lambda p: p["secure_key_rate_bps"])
    judge_value(
        "PIL-SKR-002",
        worst["secure_key_rate_bps"],
        evidence=[table],
        conditions={"worst_at_attenuation_db": worst["attenuation_db"]},
    )
