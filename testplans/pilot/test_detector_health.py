"""Pilot: detector health — dark counts and detection efficiency."""

import numpy as np

from hil.fixtures.procedures import dark_counts, receiver_efficiency


def test_dark_count_rate(bench, pilot_source, detectors, conditions, judge_value):
    cond = conditions("PIL-DET-001")
    t = cond["integration_s"]
    rates = dark_counts(bench, t, source=cond["source"], shutter=cond["shutter"])
    worst = int(rates.argmax())
    judge_value(
        "PIL-DET-001",
        float(rates.max()),
        # Poisson: N = rate * T counts give the rate with standard uncertainty sqrt(N) / T
        uncertainty=float(np.sqrt(rates.max() * t) / t),
        conditions={"worst_detector": "HVDA"[worst], "rates_hz": rates.tolist()},
    )


def test_receiver_efficiency(bench, pilot_source, powermeter, run, conditions, judge_value):
    cond = conditions("PIL-DET-002")
    eta, evidence = receiver_efficiency(
        bench,
        run,
        cond["attenuation_db"],
        cond["channel_loss_db"],
        cond["duration_s"],
        "efficiency_calibration",
    )
    judge_value("PIL-DET-002", eta, evidence=[evidence])
