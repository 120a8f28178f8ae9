"""Tests of hil.analysis.pipeline.count_classes (the fused kernel _kernels.fused_chain_counts):
identical counts to the numpy reference chain (reference.py: sync numbering, pulse assignment,
sifting) and to the numba three-stage chain, on random captures and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from test_timing import CLOCK_HZ, DIVIDER, PERIOD_PS, make_capture

from hil.analysis import pipeline, sifting, timing

SEED = 99
SMALL_DELAYS = (0, 130, -220, 310, 45)  # spread < a period: in-gate clicks come in pulse order


@pytest.fixture
def rng():
    return np.random.default_rng(20261128)


def random_answers(rng, n_pulses):
    """The source's answers for every pulse 0 .. n_pulses - 1 (a superset of the detected)."""
    pulse = np.arange(n_pulses, dtype=np.int64)
    basis = rng.integers(0, 2, n_pulses).astype(np.uint8)
    cls = rng.choice(np.array([0, 1, 2], np.uint8), n_pulses, p=[0.6, 0.3, 0.1])
    bit = rng.integers(0, 2, n_pulses).astype(np.uint8)
    bit[(basis == 0) & (rng.random(n_pulses) < 0.7)] = 255
    return pulse, basis, cls, bit


def reference_chain(ts, ch, answers, delays, gate_ps, seed=SEED):
    """recover_clock + assign_pulses + sift written with the numpy references of every kernel
    (reference.py) and recover_clock's table assembly spelled out."""
    nominal = DIVIDER * PERIOD_PS
    sync = ts[ch == 0]
    period0 = timing._initial_sync_period(sync[:1025], nominal)
    table_ps, count, n_seen, _, gap_rows, gap_unc = ref.build_sync_table(
        ts, ch, 0, period0, 1 / 16, 0.25
    )
    first_sync = int(np.floor(table_ps[0] / period0 + 0.5))
    table_pulse = (count + first_sync) * DIVIDER
    e = min(1024, len(table_ps) - 1)
    head = (table_ps[e] - table_ps[0]) / float(table_pulse[e] - table_pulse[0])
    tail = (table_ps[-1] - table_ps[-1 - e]) / float(table_pulse[-1] - table_pulse[-1 - e])
    v = 2**32
    rows_ps = np.concatenate(
        [[table_ps[0] - int(round(v * head))], table_ps, [table_ps[-1] + int(round(v * tail))]]
    )
    rows_pulse = np.concatenate([[table_pulse[0] - v], table_pulse, [table_pulse[-1] + v]])
    period = ref.interval_periods(rows_ps, rows_pulse)
    delays = np.asarray(delays, dtype=np.int64)
    search = int((delays[1:].min() + delays[1:].max()) // 2)
    pulse, det_ch, n_outside, n_outside_table = ref.assign_pulses_gated(
        ts,
        ch,
        0,
        delays,
        search,
        rows_ps,
        rows_pulse,
        period,
        table_ps[0],
        table_ps[-1],
        gate_ps / 2,
    )
    ans_pulse, basis, cls, bit = answers
    pos = np.clip(np.searchsorted(ans_pulse, pulse), 0, len(ans_pulse) - 1)
    assert np.all(ans_pulse[pos][pulse >= 0] == pulse[pulse >= 0])  # every detection answered
    n, d, m, stats = ref.sift_counts(pulse, det_ch, basis[pos], cls[pos], bit[pos], seed)
    return {
        "n": n,
        "d": d,
        "m": m,
        "stats": stats.tolist(),
        "n_outside": n_outside.tolist(),
        "n_outside_table": n_outside_table,
        "sync": [len(table_ps), n_seen - len(table_ps), len(gap_rows), int(gap_unc.sum())],
    }


def as_dict(res: pipeline.ChainCounts):
    s = res.sift
    return {
        "n": s.n,
        "d": s.d,
        "m": s.m,
        "stats": [
            s.n_unassigned,
            s.n_multi_click,
            s.n_cross_basis,
            s.n_conflicting,
            s.n_basis_mismatch,
        ],
        "n_outside": res.n_outside.tolist(),
        "n_outside_table": res.n_outside_table,
        "sync": [res.n_syncs, res.n_rejected, res.n_gaps, res.n_gaps_uncertain],
    }


def assert_same(got, exp):
    assert got.keys() == exp.keys()
    for key in got:
        np.testing.assert_array_equal(got[key], exp[key], err_msg=key)


def check(ts, ch, answers, delays=SMALL_DELAYS, gate_ps=500.0, expect_fused=True):
    """count_classes against the numpy reference chain and the numba three-stage chain."""
    got = pipeline.count_classes(ts, ch, DIVIDER, CLOCK_HZ, *answers, delays, gate_ps, seed=SEED)
    assert got.fused is expect_fused
    exp = reference_chain(ts, ch, answers, delays, gate_ps if gate_ps else PERIOD_PS)
    assert_same(as_dict(got), exp)
    staged = pipeline._three_stage(
        ts,
        ch,
        DIVIDER,
        CLOCK_HZ,
        answers[0],
        answers[1:],
        np.asarray(delays),
        gate_ps or PERIOD_PS,
        SEED,
        0,
        1 / 16,
        0.25,
    )
    assert_same(as_dict(staged), exp)
    return got


def add_multi_clicks(rng, ts, ch, fraction=0.05):
    """Second clicks on another detector for a fraction of the detections, at the same pulse
    (same pulse time up to 30 ps, through that detector's delay): multi-clicks within and
    across bases."""
    det = np.flatnonzero(ch != 0)
    pick = det[rng.random(len(det)) < fraction]
    extra_ch = ((ch[pick] - 1 + rng.integers(1, 4, len(pick))) % 4 + 1).astype(np.uint8)
    delays = np.asarray(SMALL_DELAYS)
    extra_t = ts[pick] - delays[ch[pick]] + delays[extra_ch] + rng.integers(-30, 31, len(pick))
    ts2 = np.concatenate([ts, extra_t])
    ch2 = np.concatenate([ch, extra_ch])
    order = np.argsort(ts2, kind="stable")
    return ts2[order], ch2[order]


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"drift_ppm": (-80.0, 120.0), "drift_change_pulse": 190_000},
        {"gap_pulses": (150_000, 230_050)},
        {"gap_pulses": (0, 20_000)},  # sync starts late: head extrapolated
        {"noise_per_channel": 40, "drift_ppm": (30.0, 30.0)},
        {"n_pulses": 700_000},  # more sync rows than the kernel's ring holds
        {"n_pulses": 30_000},  # fewer rows than the edge average (1024 intervals)
    ],
)
@pytest.mark.parametrize("gate_ps", [300.0, None])
def test_same_counts_as_reference_chain(rng, kw, gate_ps):
    kw = {"detect_prob": 0.05, **kw}
    ts, ch, _, _ = make_capture(rng, delays_ps=SMALL_DELAYS, **kw)
    ts, ch = add_multi_clicks(rng, ts, ch)
    got = check(ts, ch, random_answers(rng, kw.get("n_pulses", 400_000)), gate_ps=gate_ps)
    assert got.sift.n_multi_click > 0 and got.sift.n_cross_basis > 0
    assert got.sift.n.sum() > 0


def test_glitches_and_markers(rng):
    ts, ch, _, _ = make_capture(rng, delays_ps=SMALL_DELAYS, noise_per_channel=20)
    sync = ts[ch == 0]
    glitches = sync[[5, 1500, 3000]] + 37_000  # off the sync grid: rejected
    ts2 = np.concatenate([ts, glitches, ts[::50] + 3])
    ch2 = np.concatenate([ch, np.zeros(3, np.uint8), np.full(len(ts[::50]), 9, np.uint8)])
    order = np.argsort(ts2, kind="stable")
    got = check(ts2[order], ch2[order], random_answers(rng, 400_000))
    assert got.n_rejected == 3


def test_gate_edges_exact(rng):
    # zero drift and an integer period make the arithmetic exact: tags on the window edges
    # fall on the half-open side as in test_timing.test_gate_edges_exact
    sync = np.arange(0, 40 * DIVIDER * 1000, DIVIDER * 1000, dtype=np.int64)
    det = np.array([5000 - 200, 5000 + 199, 5000 + 200, 7000 - 201, 9000 - 200, 9000 + 199])
    ts = np.concatenate([sync, det, det + 1_000_000])
    ch = np.concatenate([np.zeros(len(sync), np.uint8), np.array([1, 3, 2, 1, 4, 2] * 2, np.uint8)])
    order = np.argsort(ts, kind="stable")
    ts, ch = ts[order], ch[order]
    answers = random_answers(rng, 40 * DIVIDER)
    zero = (0, 0, 0, 0, 0)
    got = check(ts, ch, answers, delays=zero, gate_ps=400.0)
    # per copy: 4800 and 5199 are pulse 5 (a multi-click), 8800 and 9199 pulse 9 (multi-click)
    assert got.sift.n_multi_click == 4 and got.sift.n_unassigned == 4
    check(ts, ch, answers, delays=zero, gate_ps=None)  # full period: 5200 belongs to pulse 5


def test_one_detector_channel_and_sync_only(rng):
    ts, ch, _, _ = make_capture(rng, delays_ps=SMALL_DELAYS, channels_used=(3,))
    answers = random_answers(rng, 400_000)
    got = check(ts, ch, answers)
    assert got.sift.n_z.sum() == 0 and got.sift.n_x.sum() > 0
    sync_only = ch == 0
    got = check(ts[sync_only], ch[sync_only], answers)
    assert got.sift.n.sum() == 0 and got.n_outside.sum() == 0


def test_long_fibre_delay_falls_back_with_the_same_counts(rng):
    # channel 3 lags by 3.1 periods: its clicks arrive after later pulses' clicks on the other
    # channels, so the one-pass grouping cannot be used; the result must still be identical
    delays = (0, 130, -220, 3100, 45)
    ts, ch, _, _ = make_capture(rng, delays_ps=delays, detect_prob=0.05)
    check(ts, ch, random_answers(rng, 400_000), delays=delays, expect_fused=False)


def test_errors(rng):
    e64, e8 = np.empty(0, np.int64), np.empty(0, np.uint8)
    answers = random_answers(rng, 400_000)
    with pytest.raises(ValueError, match="at least 2 sync tags"):
        pipeline.count_classes(e64, e8, DIVIDER, CLOCK_HZ, *answers)
    ts, ch, truth, _ = make_capture(rng, delays_ps=SMALL_DELAYS)
    with pytest.raises(ValueError, match="at least 2 sync tags"):  # detections only
        pipeline.count_classes(ts[ch != 0], ch[ch != 0], DIVIDER, CLOCK_HZ, *answers)
    # an answer missing for a detected pulse: named in the error
    missing = int(truth[truth >= 0][100])
    keep = answers[0] != missing
    with pytest.raises(ValueError, match=f"no answer for detected pulse {missing}"):
        pipeline.count_classes(
            ts, ch, DIVIDER, CLOCK_HZ, *(a[keep] for a in answers), SMALL_DELAYS, 500.0
        )
    # an invalid answer: the same error as sifting.sift's
    bad = [a.copy() for a in answers]
    bad[1][truth[truth >= 0][7]] = 7
    with pytest.raises(ValueError, match="basis 7 0..1"):
        pipeline.count_classes(ts, ch, DIVIDER, CLOCK_HZ, *bad, SMALL_DELAYS, 500.0)
    clock = timing.recover_clock(ts, ch, DIVIDER, CLOCK_HZ)
    pulses = timing.assign_pulses(ts, ch, clock, SMALL_DELAYS, 500.0)
    looked_up = [a[np.maximum(pulses.pulse_index, 0)] for a in bad[1:]]
    with pytest.raises(ValueError, match="basis 7 0..1"):
        sifting.sift(pulses.pulse_index, pulses.channels, *looked_up)
    with pytest.raises(ValueError, match="equal length"):
        pipeline.count_classes(ts, ch, DIVIDER, CLOCK_HZ, answers[0][:5], *answers[1:])
