"""Fault behaviour: each failure detected by the link monitor within its criterion, no key
from a dead or attacked link, service restored within its criterion.

Actions are issued at the link time the criterion states: on the emulated bench the tagger
holds its clock there while the action runs (hil.capture.acquire), so results do not depend on
the machine's load. Latencies run from the action's issue time to the transition: when the
count rate stepped (a cut, the laser off, a loss step, the sync lost or back) the transition is
dated inside the monitor window by the change point of the count stream, with its standard
uncertainty (hil.monitor.rate_change_point); a change seen only in the QBER (an attack, a
drift) is dated at the close of the window that first shows it, with one window as its
uncertainty. Each verdict carries that uncertainty.
"""

import numpy as np
import pytest

from hil.analysis.timing import recover_clock
from hil.fixtures.procedures import (
    action_time_s,
    assert_no_key_between,
    latency,
    link_up,
    monitor_capture,
    outage,
)
from hil.monitor import LinkState, Thresholds
from hil.store import open_capture

pytestmark = pytest.mark.needs("source", "attenuator", "tagger")


@pytest.fixture
def link(bench, pilot_source):
    """The pilot's source settings; every fault cleared afterwards."""
    yield
    if bench.has("switch"):
        bench.switch.restore()
    if bench.has("control") and "control" not in bench.broken:
        c = bench.control
        c.extra_loss(0.0)
        c.misalignment(0.005)
        c.eavesdropper(0.0)
        c.sync_loss(False)
        c.clock_drift(0.0)
        c.laser_off(False)


def test_fiber_cut(bench, link, switch, run, conditions, judge_value):
    cond = conditions("FLT-CUT-001")
    link_up(bench, cond["attenuation_db"])
    o = outage(
        bench,
        run,
        "fault_fiber_cut",
        fail=switch.cut,
        restore=switch.restore,
        fail_at_s=cond["cut_at_s"],
        restore_at_s=cond["restore_at_s"],
        window_s=cond["window_s"],
    )
    w = o.monitor.windows
    run.add_series(
        "fiber cut: count rate per monitor window",
        [x.t_stop_s - w[0].t_start_s for x in w],
        [x.detector_rate_hz / 1e3 for x in w],
        x_label="time (s)",
        y_label="count rate, four detectors (kHz)",
        style="points",
    )
    for cid, lat in (("FLT-CUT-001", o.detection), ("FLT-CUT-002", o.recovery)):
        judge_value(
            cid,
            lat.value_s,
            evidence=[o.capture.path],
            conditions=lat.evidence(),
            uncertainty=lat.uncertainty_s,
        )


@pytest.mark.emulator_only
def test_loss_step(bench, link, control, run, conditions, judge_value):
    cond = conditions("FLT-LOSS-001")
    link_up(bench, cond["attenuation_db"])
    th = Thresholds(key_rate_floor_bps=cond["key_rate_floor_kbps"] * 1e3)
    mon, cap = monitor_capture(
        bench,
        run,
        "fault_loss_step",
        cond["step_at_s"] + 1.0,
        [(cond["step_at_s"], lambda: control.extra_loss(cond["step_db"]), "loss step")],
        window_s=cond["window_s"],
        thresholds=th,
    )
    t_step = action_time_s(cap, "loss step")
    before = [w for w in mon.windows if w.t_stop_s <= t_step]
    assert before and all(w.state is LinkState.UP for w in before), "link not UP before"
    seen = latency(mon, (LinkState.DEGRADED, LinkState.DOWN), t_step, "loss step")
    judge_value(
        "FLT-LOSS-001",
        seen.value_s,
        evidence=[cap.path],
        conditions=seen.evidence(),
        uncertainty=seen.uncertainty_s,
    )


@pytest.mark.emulator_only
def test_polarization_drift(bench, link, control, run, conditions, judge_value):
    cond = conditions("FLT-POL-001")
    link_up(bench, cond["attenuation_db"])
    duration = cond["drift_at_s"] + cond["e_mis_final"] / cond["e_mis_rate_per_s"] + 0.3
    mon, cap = monitor_capture(
        bench,
        run,
        "fault_polarization_drift",
        duration,
        [
            (
                cond["drift_at_s"],
                lambda: control.misalignment(cond["e_mis_final"], cond["e_mis_rate_per_s"]),
                "polarization drift",
            )
        ],
        window_s=cond["window_s"],
    )
    t0 = action_time_s(cap, "polarization drift")
    degraded = latency(mon, LinkState.DEGRADED, t0, "polarization drift")
    aborted = latency(mon, LinkState.ABORTED, t0, "polarization drift")
    assert degraded.value_s < aborted.value_s, "the link should degrade before it aborts"
    assert_no_key_between(mon, t0 + aborted.reported_s, duration + t0)
    # QBER ~ e_mis + baseline: the abort must come before e_mis alone reaches 15 %
    judge_value(
        "FLT-POL-001",
        degraded.value_s,
        evidence=[cap.path],
        conditions=degraded.evidence(),
        uncertainty=degraded.uncertainty_s,
    )
    judge_value(
        "FLT-POL-002",
        aborted.value_s,
        evidence=[cap.path],
        conditions={
            "e_mis_at_abort": aborted.value_s * cond["e_mis_rate_per_s"],
            **aborted.evidence(),
        },
        uncertainty=aborted.uncertainty_s,
    )


@pytest.mark.emulator_only
def test_detector_temperature_runaway(
    bench, link, control, detectors, run, conditions, judge_value
):
    cond = conditions("FLT-TEMP-001")
    link_up(bench, cond["attenuation_db"])
    setpoints = [ch.temperature_setpoint_c for ch in detectors.channels]
    alarms = []

    def poll():
        if alarms:
            return
        temps = [ch.temperature_c for ch in detectors.channels]
        if any(abs(t - s) > 2.0 for t, s in zip(temps, setpoints, strict=True)):
            alarms.append(bench.tagger.link_time_s())

    polls = [
        (cond["runaway_at_s"] + i * cond["poll_s"], poll, "temperature poll")
        for i in range(int(0.8 / cond["poll_s"]))
    ]
    try:
        mon, cap = monitor_capture(
            bench,
            run,
            "fault_temperature_runaway",
            cond["runaway_at_s"] + 1.2,
            [
                (
                    cond["runaway_at_s"],
                    lambda: [
                        control.temperature_runaway(d, cond["target_c"], cond["rate_c_per_s"])
                        for d in (1, 2, 3, 4)
                    ],
                    "temperature runaway",
                ),
                *polls,
            ],
            window_s=0.1,
        )
    finally:
        for ch, s in zip(detectors.channels, setpoints, strict=True):
            ch.temperature_setpoint_c = s
    t0 = action_time_s(cap, "temperature runaway")
    assert alarms, "the runaway never raised the temperature alarm"
    with open_capture(cap.path) as f:
        ts, ch = f.tags()
    # dark counts grow with temperature: the off-gate (noise) rate after exceeds the one before
    # the alarm is dated by the poll that saw it: the crossing came within one poll before
    judge_value(
        "FLT-TEMP-001",
        alarms[0] - t0,
        evidence=[cap.path],
        conditions={"final_temperature_c": [c.temperature_c for c in detectors.channels]},
        uncertainty=cond["poll_s"],
    )


@pytest.mark.emulator_only
def test_intercept_resend(bench, link, control, run, conditions, judge_value):
    cond = conditions("FLT-EVE-001")
    link_up(bench, cond["attenuation_db"])
    mon, cap = monitor_capture(
        bench,
        run,
        "fault_intercept_resend",
        cond["attack_at_s"] + 1.0,
        [(cond["attack_at_s"], lambda: control.eavesdropper(cond["fraction"]), "intercept-resend")],
        window_s=cond["window_s"],
    )
    t0 = action_time_s(cap, "intercept-resend")
    delay = latency(mon, LinkState.ABORTED, t0, "intercept-resend")
    attacked = [w for w in mon.windows if w.t_start_s >= t0]
    assert attacked and all(w.state is LinkState.ABORTED for w in attacked[1:]), [
        w.line() for w in attacked
    ]
    qber = np.nanmean([w.qber_z for w in attacked[1:]])
    # intercept-resend on every pulse: QBER 25 % (plus the link's own errors)
    assert 0.2 < qber < 0.32, qber
    assert_no_key_between(mon, t0, np.inf)
    judge_value(
        "FLT-EVE-001",
        delay.value_s,
        evidence=[cap.path],
        conditions={"qber_z_under_attack": float(qber), **delay.evidence()},
        uncertainty=delay.uncertainty_s,
    )


@pytest.mark.emulator_only
def test_sync_loss(bench, link, control, run, conditions, judge_value):
    cond = conditions("FLT-SYNC-001")
    link_up(bench, cond["attenuation_db"])
    o = outage(
        bench,
        run,
        "fault_sync_loss",
        fail=lambda: control.sync_loss(True),
        restore=lambda: control.sync_loss(False),
        fail_at_s=cond["lost_at_s"],
        restore_at_s=cond["back_at_s"],
        window_s=cond["window_s"],
    )
    for cid, lat in (("FLT-SYNC-001", o.detection), ("FLT-SYNC-002", o.recovery)):
        judge_value(
            cid,
            lat.value_s,
            evidence=[o.capture.path],
            conditions=lat.evidence(),
            uncertainty=lat.uncertainty_s,
        )


@pytest.mark.emulator_only
def test_clock_drift_change(bench, link, control, source, run, conditions, judge_value):
    cond = conditions("FLT-DRIFT-001")
    link_up(bench, cond["attenuation_db"])
    mon, cap = monitor_capture(
        bench,
        run,
        "fault_clock_drift",
        cond["duration_s"],
        [(cond["step_at_s"], lambda: control.clock_drift(cond["drift_ppm"]), "drift step")],
        window_s=0.1,
    )
    t0 = action_time_s(cap, "drift step")
    assert not [w for w in mon.windows if w.state is LinkState.DOWN], mon.states()
    with open_capture(cap.path) as f:
        ts, ch = f.tags()
    clock = recover_clock(ts, ch, source.sync_divider, source.clock_hz)
    starts, drift = clock.local_drift_ppm(window_syncs=200)
    after = drift[starts * 1e-12 > t0 + 0.05]
    before = drift[starts * 1e-12 < t0 - 0.05]
    assert len(after) and len(before)
    assert abs(np.median(before)) < 1.0
    judge_value(
        "FLT-DRIFT-001",
        float(np.median(after)) - cond["drift_ppm"],
        evidence=[cap.path],
        conditions={"recovered_drift_ppm": float(np.median(after))},
    )


def test_laser_off(bench, link, source, run, conditions, judge_value):
    cond = conditions("FLT-LASER-001")
    link_up(bench, cond["attenuation_db"])
    mon, cap = monitor_capture(
        bench,
        run,
        "fault_laser_off",
        cond["off_at_s"] + 0.8,
        [(cond["off_at_s"], lambda: setattr(source, "output_enabled", False), "laser off")],
        window_s=cond["window_s"],
    )
    t0 = action_time_s(cap, "laser off")
    delay = latency(mon, LinkState.DOWN, t0, "laser off")
    assert_no_key_between(mon, t0 + delay.reported_s, np.inf)
    judge_value(
        "FLT-LASER-001",
        delay.value_s,
        evidence=[cap.path],
        conditions=delay.evidence(),
        uncertainty=delay.uncertainty_s,
    )
