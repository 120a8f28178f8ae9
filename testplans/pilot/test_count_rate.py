"""Pilot: the receiver's detectors see light at the pilot's nominal loss."""

import numpy as np

from hil.analysis.timing import count_rates
from hil.capture import acquire
from hil.store import open_capture

DETECTOR_CHANNELS = [1, 2, 3, 4]


def test_detector_count_rate(bench, source, attenuator, tagger, run, conditions, judge_value):
    cond = conditions("PIL-RATE-001")
    attenuator.output_enabled = True
    attenuator.set_attenuation_and_wait(cond["attenuation_db"])
    source.output_enabled = True
    cap = acquire(bench, run.path("count_rate.h5"), cond["duration_s"])
    with open_capture(cap.path) as f:
        ts, ch = f.tags()
    rates = count_rates(ts, ch, n_channels=9, duration_ps=int(cap.duration_s * 1e12))
    judge_value("PIL-RATE-001", float(np.sum(rates[DETECTOR_CHANNELS])), evidence=[cap.path])
