"""Pilot: synchronisation status from the sync channel, and control-plane latency."""

import pytest

from hil.analysis.timing import recover_clock
from hil.capture import acquire
from hil.fixtures.procedures import link_up
from hil.store import open_capture


def test_synchronisation(bench, pilot_source, run, conditions, judge_value):
    cond = conditions("PIL-SYNC-001")
    # PIL-SYNC-002 is judged on the same capture: its conditions must be the ones measured
    other = conditions("PIL-SYNC-002")
    differ = [k for k in ("attenuation_db", "duration_s") if other[k] != cond[k]]
    assert not differ, f"PIL-SYNC-002 and PIL-SYNC-001 share one capture; they differ in {differ}"
    link_up(bench, cond["attenuation_db"])
    cap = acquire(bench, run.path("sync.h5"), cond["duration_s"])
    with open_capture(cap.path) as f:
        ts, ch = f.tags()
    clock = recover_clock(ts, ch, pilot_source.sync_divider, pilot_source.clock_hz)
    assert clock.status.in_sync, f"sync lost: {clock.status}"
    judge_value("PIL-SYNC-001", clock.drift_ppm, evidence=[cap.path])
    judge_value("PIL-SYNC-002", clock.status.max_residual_ps * 1e-12, evidence=[cap.path])


@pytest.mark.parametrize(
    "role", ["source", "attenuator", "switch", "detectors", "tagger", "powermeter"]
)
def test_control_plane_latency(bench, conditions, judge_value, role):
    if not bench.has(role):
        pytest.skip(f"the bench has no {role}")
    n = int(conditions("PIL-LAT-001")["queries"])
    judge_value(
        "PIL-LAT-001",
        bench.get(role).round_trip_s(n),  # median of n round trips
        conditions={"instrument": role, "idn": bench.idn[role]},
    )
