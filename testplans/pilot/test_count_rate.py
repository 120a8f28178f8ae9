"""Pilot: the receiver's detectors see light at the pilot's nominal loss."""

import math

from hil.capture import acquire
from hil.fixtures.procedures import link_up
from hil.roles import detector_channel


def detector_inputs(names) -> list[int]:
    """Tagger inputs of detectors named H, V, D, A (inputs 1..4, DESIGN.md Conventions), from a
    list or a comma-separated string (the criteria schema has checked the names)."""
    items = names if isinstance(names, list) else str(names).split(",")
    return [detector_channel(str(n).strip()) for n in items]


def test_detector_count_rate(bench, pilot_source, attenuator, tagger, run, conditions, judge_value):
    cond = conditions("PIL-RATE-001")
    inputs = detector_inputs(cond["channels"])
    link_up(bench, cond["attenuation_db"])
    cap = acquire(bench, run.path("count_rate.h5"), cond["duration_s"])
    n = sum(int(cap.counts[c]) for c in inputs)
    t = cap.duration_s
    # Poisson counting statistics: N counts in T give the rate N/T with standard uncertainty
    # sqrt(N)/T (dead time makes the count slightly sub-Poissonian: this is the larger value)
    judge_value("PIL-RATE-001", n / t, uncertainty=math.sqrt(n) / t, evidence=[cap.path])
