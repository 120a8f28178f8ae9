"""Tests of hil.analysis.timing: numba kernels against the numpy references, and clock
recovery / pulse assignment against synthetic captures with known offset, drift and delays."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from hil.analysis import _kernels as k
from hil.analysis import _simd, timing

needs_simd = pytest.mark.skipif(
    not _simd.AVAILABLE, reason="AVX-512 kernels off: a CPU without them, or HIL_NO_SIMD=1"
)
CLOCK_HZ = 1e9  # 1000 ps pulse period
PERIOD_PS = 1000.0
DIVIDER = 100
SEARCH_DELAY = 1440  # picks the sync interval; middle of make_capture's delays (-220 .. 3100)


def make_capture(
    rng,
    n_pulses=400_000,
    offset_ps=321,
    drift_ppm=(15.0, 15.0),
    drift_change_pulse=None,
    delays_ps=(0, 130, -220, 3100, 45),
    detect_prob=0.02,
    gap_pulses=None,
    sync_jitter_ps=10,
    det_jitter_ps=40,
    noise_per_channel=0,
    channels_used=(1, 2, 3, 4),
):
    """Synthetic tags: pulse i at tagger time offset + i T (1 + drift), drift switching at
    ``drift_change_pulse``; sync on channel 0 every DIVIDER pulses (none inside
    ``gap_pulses``); detections at the pulse time + channel delay + uniform jitter; noise
    tags 0.4 period after a pulse (outside a half-period gate). Jitter is uniform and bounded
    so that the correct pulse index of every detection is certain."""
    d1, d2 = (x * 1e-6 for x in drift_ppm)
    change = n_pulses if drift_change_pulse is None else drift_change_pulse
    t_change = offset_ps + change * PERIOD_PS * (1 + d1)

    def tagger_time(i):
        i = np.asarray(i, dtype=np.float64)
        before = offset_ps + i * PERIOD_PS * (1 + d1)
        after = t_change + (i - change) * PERIOD_PS * (1 + d2)
        return np.where(i < change, before, after)

    sync_idx = np.arange(0, n_pulses, DIVIDER)
    if gap_pulses is not None:
        sync_idx = sync_idx[(sync_idx < gap_pulses[0]) | (sync_idx >= gap_pulses[1])]
    sync_t = tagger_time(sync_idx) + rng.uniform(-sync_jitter_ps, sync_jitter_ps, len(sync_idx))
    det_idx = np.flatnonzero(rng.random(n_pulses) < detect_prob)
    det_ch = rng.choice(np.array(channels_used, dtype=np.uint8), len(det_idx))
    delays = np.asarray(delays_ps, dtype=np.int64)
    det_t = (
        tagger_time(det_idx)
        + delays[det_ch]
        + rng.uniform(-det_jitter_ps, det_jitter_ps, len(det_idx))
    )
    noise_idx = rng.integers(DIVIDER, n_pulses - DIVIDER, (5, noise_per_channel))
    noise_t = [tagger_time(noise_idx[c]) + delays[c] + 0.4 * PERIOD_PS for c in range(5)]
    ts = np.concatenate([sync_t, det_t] + [noise_t[c] for c in channels_used])
    ch = np.concatenate(
        [np.zeros(len(sync_t), np.uint8), det_ch]
        + [np.full(noise_per_channel, c, np.uint8) for c in channels_used]
    )
    noise_truth = [np.full(noise_per_channel, -1)] * len(channels_used)
    truth = np.concatenate([np.full(len(sync_t), -2), det_idx] + noise_truth)
    ts = np.round(ts).astype(np.int64)
    order = np.argsort(ts, kind="stable")
    return ts[order], ch[order], truth[order], delays


@pytest.fixture
def rng():
    return np.random.default_rng(20261128)


# --------------------------------------------------------------------------- kernels vs reference


def random_runs(rng, n_runs, max_len, t_max):
    return [np.sort(rng.integers(0, t_max, rng.integers(0, max_len + 1))) for _ in range(n_runs)]


@pytest.mark.parametrize("n_runs", [0, 1, 2, 5])
def test_merge_matches_reference_with_ties(rng, n_runs):
    for _ in range(20):
        runs = random_runs(rng, n_runs, 30, 20)  # small time range: many equal timestamps
        labels = list(rng.permutation(8)[:n_runs])
        got_ps, got_ch = timing.merge_channels(runs, labels)
        exp_ps, exp_ch = ref.merge_sorted_streams(runs, labels)
        np.testing.assert_array_equal(got_ps, exp_ps)
        np.testing.assert_array_equal(got_ch, exp_ch)


def test_merge_keeps_channel_order_on_equal_timestamps():
    ts, ch = timing.merge_channels([np.array([5, 7]), np.array([5]), np.array([5, 6])], [3, 1, 2])
    np.testing.assert_array_equal(ts, [5, 5, 5, 6, 7])
    np.testing.assert_array_equal(ch, [3, 1, 2, 2, 3])


def test_merge_rejects_unsorted_input():
    with pytest.raises(ValueError, match=r"per_channel_ps\[1\] must be a sorted"):
        timing.merge_channels([np.array([1, 2]), np.array([3, 1])])


def test_count_rates_keeps_its_behaviour(rng):
    ch = rng.integers(0, 7, 1000).astype(np.uint8)
    ts = np.sort(rng.integers(0, 10**9, 1000))
    rates = timing.count_rates(ts, ch, 5, 10**9)
    expected = [np.count_nonzero(ch == c) / 1e-3 for c in range(5)]  # channels >= 5 ignored
    np.testing.assert_allclose(rates, expected)
    assert timing.count_rates(ts[:0], ch[:0], 3, 1).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="duration_ps must be positive"):
        timing.count_rates(ts, ch, 5, 0)


def test_channels_out_of_uint8_range_are_refused():
    with pytest.raises(ValueError, match="channels must lie in 0..255"):
        timing.recover_clock(np.arange(3), np.array([0, -1, 0]), DIVIDER, CLOCK_HZ)


def test_rate_histogram_matches_reference(rng):
    for _ in range(20):
        n = int(rng.integers(0, 300))
        ts = np.sort(rng.integers(-50, 1000, n))
        ch = rng.integers(0, 5, n).astype(np.uint8)
        start, width, n_bins = int(rng.integers(-20, 50)), int(rng.integers(1, 60)), 12
        np.testing.assert_array_equal(
            k.rate_histogram(ts, ch, 4, start, width, n_bins),
            ref.rate_histogram(ts, ch, 4, start, width, n_bins),
        )


def test_rate_timeseries_bin_edges():
    # tags exactly on bin edges belong to the bin they open
    ts = np.array([0, 9, 10, 19, 20, 25])
    ch = np.array([1, 1, 2, 2, 1, 0], dtype=np.uint8)
    starts, counts = timing.rate_timeseries(ts, ch, 3, 10)
    np.testing.assert_array_equal(starts, [0, 10, 20])
    np.testing.assert_array_equal(counts, [[0, 2, 0], [0, 0, 2], [1, 1, 0]])
    starts, counts = timing.rate_timeseries(ts[:0], ch[:0], 3, 10)
    assert counts.shape == (0, 3)


def test_coincidences_match_reference(rng):
    for _ in range(30):
        a = np.sort(rng.integers(0, 2000, rng.integers(0, 100)))
        b = np.sort(rng.integers(0, 2000, rng.integers(0, 100)))
        w = int(rng.integers(0, 40))
        assert timing.coincidences(a, b, w) == ref.count_coincidences(a, b, w)
    # both window edges are included
    assert timing.coincidences(np.array([100]), np.array([90, 110, 111, 89]), 10) == 2


def test_correlation_matches_reference(rng):
    for _ in range(30):
        s = np.sort(rng.integers(0, 5000, rng.integers(0, 80)))
        c = np.sort(rng.integers(0, 5000, rng.integers(0, 80)))
        rng_ps, bw = 200, int(rng.choice([1, 7, 20, 50]))
        rng_ps -= rng_ps % bw
        n_bins = 2 * rng_ps // bw
        np.testing.assert_array_equal(
            k.correlation_histogram(s, c, rng_ps, bw, n_bins),
            ref.correlation_histogram(s, c, rng_ps, bw, n_bins),
        )


def test_correlation_range_edges():
    # differences of exactly -range fall in bin 0, +range is outside, a bin edge opens its bin
    corr = timing.cross_correlation(
        np.array([1000]), np.array([900, 1000, 1049, 1050, 1100]), 50, 100, duration_ps=10**6
    )
    np.testing.assert_array_equal(corr.lag_ps, [-100, -50, 0, 50])
    np.testing.assert_array_equal(corr.counts, [1, 0, 2, 1])


def test_correlation_normalisation_uncorrelated_is_one(rng):
    duration = 10**10
    s = np.sort(rng.integers(0, duration, 20_000))
    c = np.sort(rng.integers(0, duration, 20_000))
    corr = timing.cross_correlation(s, c, 1000, 500_000, duration_ps=duration)
    expected_total = len(corr.counts) * 1000 * len(s) * len(c) / duration
    # total count is Poisson: allow 5 sigma of it (edge loss ~ range/duration is negligible)
    assert abs(corr.counts.sum() - expected_total) < 5 * np.sqrt(expected_total)
    assert abs(corr.normalised.mean() - 1) < 5 / np.sqrt(expected_total)


def test_correlation_finds_known_delay(rng):
    s = np.sort(rng.integers(0, 10**9, 2000))
    c = np.sort(np.concatenate([s + 2345, rng.integers(0, 10**9, 2000)]))
    corr = timing.cross_correlation(s, c, 10, 5000)
    peak = int(np.argmax(corr.counts))
    assert corr.lag_ps[peak] == 2340
    # background: 10 ps x 2000 x 4000 / 1e9 ps = 0.08 per bin, so at most a few extra pairs
    assert 2000 <= corr.counts[peak] < 2010


def test_first_tags_matches_reference(rng):
    ts = np.sort(rng.integers(0, 10**6, 500))
    ch = rng.integers(0, 3, 500).astype(np.uint8)
    for c in (0, 2, 7):
        for limit in (0, 3, 1000):
            np.testing.assert_array_equal(
                k.first_tags(ts, ch, c, limit), ref.first_tags(ts, ch, c, limit)
            )


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"drift_ppm": (-40.0, 60.0), "drift_change_pulse": 200_000},
        {"gap_pulses": (100_000, 160_000)},
        {"sync_jitter_ps": 0},
    ],
)
def test_sync_table_matches_reference(rng, kw):
    ts, ch, _, _ = make_capture(rng, n_pulses=200_000, detect_prob=0.01, **kw)
    glitch = ts[ch == 0][10] + 37_000  # a glitch between two syncs
    at = np.searchsorted(ts, glitch)
    ts, ch = np.insert(ts, at, glitch), np.insert(ch, at, 0)
    args = (0, float(DIVIDER * PERIOD_PS), 1 / 16, 0.25)
    got = timing.build_sync_table(ts, ch, *args)
    exp = ref.build_sync_table(ts, ch, *args)
    for g, e in zip(got[:6], exp, strict=True):
        np.testing.assert_array_equal(g, e)
    assert got[2] == len(got[0]) + 1  # exactly the glitch is rejected
    # the periods between rows, computed on the way (counts: pulses of one per sync period)
    np.testing.assert_array_equal(got[6], ref.interval_periods(got[0], got[1]))
    empty = timing.build_sync_table(ts[:0], ch[:0], *args)
    assert empty[2] == 0 and all(len(empty[i]) == 0 for i in (0, 1, 4, 5, 6))
    # pad = 1 (recover_clock's layout): the same table between one spare row at each end
    padded = timing.build_sync_table(ts, ch, *args, 1)
    for i in (0, 1):
        assert len(padded[i]) == len(exp[i]) + 2
        np.testing.assert_array_equal(padded[i][1:-1], exp[i])
    for g, e in zip(padded[2:6], exp[2:], strict=True):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(padded[6][1:-1], got[6])
    empty = timing.build_sync_table(ts[:0], ch[:0], *args, 1)
    assert empty[2] == 0 and len(empty[0]) == len(empty[1]) == 2
    # absolute pulses (recover_clock's numbering): (round(t_first / origin) + count) * divider
    # (a capture starting 5000.4 sync periods of `origin` after the tagger's time 0)
    origin = args[1] * 1.0003
    later = ts - exp[0][0] + int(5000.4 * origin)
    absolute = timing.build_sync_table(later, ch, *args, origin_ps=origin, divider=7)
    np.testing.assert_array_equal(absolute[6], ref.interval_periods(absolute[0], absolute[1]))
    first = int(np.floor(absolute[0][0] / origin + 0.5))
    assert first == 5000
    np.testing.assert_array_equal(absolute[1], (first + exp[1]) * 7)
    for g, e in zip(absolute[2:6], exp[2:], strict=True):
        np.testing.assert_array_equal(g, e)


def test_duplicate_sync_timestamp_is_a_rejected_glitch(rng):
    # two sync tags with the same timestamp: an interval of 0 ps (1 / dt must not raise)
    ts, ch, truth, delays = make_capture(rng, n_pulses=50_000)
    sync_at = np.flatnonzero(ch == 0)[7]
    ts, ch = np.insert(ts, sync_at, ts[sync_at]), np.insert(ch, sync_at, 0)
    truth = np.insert(truth, sync_at, -2)
    args = (0, float(DIVIDER * PERIOD_PS), 1 / 16, 0.25)
    got = timing.build_sync_table(ts, ch, *args)
    for g, e in zip(got[:6], ref.build_sync_table(ts, ch, *args), strict=True):
        np.testing.assert_array_equal(g, e)
    assert got[2] == len(got[0]) + 1
    clock, _ = check_assignment(ts, ch, truth, delays)
    assert clock.status.n_rejected == 1


@needs_simd
def test_vector_sync_extraction_matches_scalar(rng):
    """sync_tags_into_simd against sync_tags_into: lengths below, at and off a multiple of the
    16-tag block, no sync at all, syncs only, dense and sparse syncs, other channels up to
    255, with and without padding."""
    for n in (0, 5, 16, 17, 64, 65, 1000, 4099):
        for p_sync in (0.0, 0.02, 0.3, 1.0):
            ts = np.cumsum(rng.integers(0, 1000, n)).astype(np.int64)
            ch = rng.integers(1, 256, n).astype(np.uint8)
            ch[rng.random(n) < p_sync] = 0
            n_sync = k.count_channel(ch, 0)
            assert n_sync == k.count_channel_simd(ch, 0) == np.count_nonzero(ch == 0)
            assert k.count_channel_simd(ch, 255) == np.count_nonzero(ch == 255)
            for pad in (0, 1):
                got = np.full(n_sync + 1 + pad + _simd.BLOCK, -7, np.int64)
                exp = np.full(n_sync + 1 + pad, -7, np.int64)
                k.sync_tags_into_simd(ts, ch, 0, got, pad)
                k.sync_tags_into(ts, ch, 0, exp, pad)
                np.testing.assert_array_equal(got[: pad + n_sync], exp[: pad + n_sync])
                np.testing.assert_array_equal(got[pad : pad + n_sync], ts[ch == 0])


@pytest.mark.parametrize("kw", [{}, {"gap_pulses": (30_000, 90_000)}])
def test_recover_clock_table_is_kernel_table_of_its_fields(rng, kw):
    # recover_clock builds the padded kernel table in place around table_ps; it must be
    # exactly what kernel_table() makes from the public fields
    ts, ch, _, _ = make_capture(rng, n_pulses=200_000, drift_ppm=(-40.0, 60.0), **kw)
    clock = timing.recover_clock(ts, ch, DIVIDER, CLOCK_HZ)
    assert clock.padded_table is not None
    exp = timing.kernel_table(clock.table_ps, clock.table_pulse, clock.edge_period_ps)
    for g, e in zip(clock.kernel_table, exp, strict=True):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(
        clock.table_period_ps, ref.interval_periods(clock.table_ps, clock.table_pulse)
    )


def table_for(ts, ch):
    clock = timing.recover_clock(ts, ch, DIVIDER, CLOCK_HZ)
    return clock, clock.kernel_table


@pytest.mark.parametrize("channels_used", [(1, 2, 3, 4), (3,)])
def test_pulse_kernels_match_reference(rng, channels_used):
    ts, ch, _, delays = make_capture(
        rng,
        n_pulses=100_000,
        drift_ppm=(30.0, -20.0),
        drift_change_pulse=50_000,
        gap_pulses=(20_000, 30_000),
        noise_per_channel=50,
        channels_used=channels_used,
    )
    ch[rng.random(len(ch)) < 0.01] = 9  # marker channel: ignored
    _, table = table_for(ts, ch)
    got = run_nearest(ts, ch, delays, table)
    exp = ref.nearest_pulse(ts, ch, 0, delays, SEARCH_DELAY, *table)
    for g, e in zip(got, exp, strict=True):
        np.testing.assert_array_equal(g, e)
    for half_gate in (100.0, 250.0, 500.0):
        exp = ref.assign_pulses_gated(ts, ch, 0, delays, SEARCH_DELAY, *table, half_gate)
        for kernel in GATED:
            got = run_gated(ts, ch, delays, table, half_gate, kernel)
            for g, e in zip(got, exp, strict=True):
                np.testing.assert_array_equal(g, e)
    # no detections at all
    sync_only = ch == 0
    for kernel in GATED:
        got = run_gated(ts[sync_only], ch[sync_only], delays, table, 250.0, kernel)
        assert len(got[0]) == 0 and got[2].sum() == 0


@needs_simd
@pytest.mark.parametrize("detect_prob", [0.001, 0.05, 0.6])
def test_vector_assignment_matches_reference_on_every_path(rng, detect_prob):
    """The AVX-512 kernel's paths: 16-tag blocks within 8 sync intervals (vector), blocks
    spanning more (scalar; a sparse capture: mostly syncs), dense blocks, the table's last
    intervals and the stream's last tags (scalar), an output buffer with no room for a
    vector's garbage (scalar from there), more than 8 delay entries (scalar throughout);
    tags outside their gate on every path (a gate narrower than the jitter)."""
    ts, ch, _, delays = make_capture(
        rng,
        n_pulses=60_000,
        drift_ppm=(25.0, -35.0),
        drift_change_pulse=31_000,
        gap_pulses=(10_000, 12_500),
        detect_prob=detect_prob,
        noise_per_channel=30,
    )
    ch[rng.random(len(ch)) < 0.02] = 9  # marker channel: ignored, counted if outside
    _, table = table_for(ts, ch)
    long_delays = np.append(delays, [0, 0, 0, 0])  # 9 entries
    for half_gate in (30.0, 250.0):
        exp = ref.assign_pulses_gated(ts, ch, 0, delays, SEARCH_DELAY, *table, half_gate)
        assert exp[2].sum() > 0  # some tags outside their gate
        for spare in (_simd.ASSIGN_BLOCK, 1):
            got = run_gated(ts, ch, delays, table, half_gate, k.assign_pulses_gated_simd, spare)
            for g, e in zip(got, exp, strict=True):
                np.testing.assert_array_equal(g, e)
        # a buffer of exactly the detections + 1: nothing is written past it (guard values)
        n = k.count_detector_tags(ch, 0, len(delays))
        pulse = np.full(n + 1 + 64, -77, np.int64)
        det_ch = np.full(n + 1 + 64, 77, np.uint8)
        k.assign_pulses_gated_simd(
            ts, ch, 0, delays, SEARCH_DELAY, *table, half_gate, pulse[: n + 1], det_ch[: n + 1]
        )
        assert (pulse[n + 1 :] == -77).all() and (det_ch[n + 1 :] == 77).all()
        np.testing.assert_array_equal(pulse[:n], exp[0])
        exp = ref.assign_pulses_gated(ts, ch, 0, long_delays, SEARCH_DELAY, *table, half_gate)
        got = run_gated(ts, ch, long_delays, table, half_gate, k.assign_pulses_gated_simd)
        for g, e in zip(got, exp, strict=True):
            np.testing.assert_array_equal(g, e)


@needs_simd
def test_vector_assignment_never_writes_past_a_tight_buffer():
    """A 32-tag block whose last quarter holds one detection and seven syncs, near the end of
    the detections but not of the table: with a buffer of exactly the detections + 1, the
    vector stores of that block would reach past it; the kernel must leave it to the scalar
    loop (guard values past the buffer stay untouched)."""
    sync_ps = 100_000  # DIVIDER pulses of 1000 ps
    ts, ch = [], []
    for s in range(60):  # 60 intervals of 1 sync + 15 detections: 16 tags each
        ts += [s * sync_ps] + [s * sync_ps + 1000 * (p + 1) for p in range(15)]
        ch += [0] + [1 + p % 4 for p in range(15)]
    s = 60  # a 32-tag block at tag 960: 24 detections, then 1 detection and 7 syncs
    ts += [s * sync_ps] + [s * sync_ps + 1000 * (p + 1) for p in range(23)]
    ch += [0] + [1 + p % 4 for p in range(23)]
    ts += [s * sync_ps + 30_000]
    ch += [2]
    ts += [(s + q) * sync_ps for q in range(1, 8)]
    ch += [0] * 7
    ts += [(s + q) * sync_ps for q in range(8, 30)]  # syncs only: the table goes on
    ch += [0] * 22
    ts, ch = np.array(ts, np.int64), np.array(ch, np.uint8)
    assert len(ts) == 960 + 32 + 22 and (ch[960:992] == 0).sum() == 8
    clock = timing.recover_clock(ts, ch, DIVIDER, CLOCK_HZ)
    table = clock.kernel_table
    delays = np.zeros(5, np.int64)
    n = k.count_detector_tags(ch, 0, 5)
    exp = ref.assign_pulses_gated(ts, ch, 0, delays, 0, *table, 200.0)
    pulse = np.full(n + 1 + 64, -77, np.int64)
    det_ch = np.full(n + 1 + 64, 77, np.uint8)
    k.assign_pulses_gated_simd(ts, ch, 0, delays, 0, *table, 200.0, pulse[: n + 1], det_ch[: n + 1])
    assert (pulse[n + 1 :] == -77).all() and (det_ch[n + 1 :] == 77).all()
    np.testing.assert_array_equal(pulse[:n], exp[0])


def run_nearest(ts, ch, delays, table):
    n = k.count_detector_tags(ch, 0, len(delays))
    out = (np.empty(n, np.int64), np.empty(n), np.empty(n, np.uint8), np.empty(n, np.bool_))
    k.nearest_pulse(ts, ch, 0, delays, SEARCH_DELAY, *table, *out)
    return out


# the gated kernels: the scalar one, and the AVX-512 one on a CPU that has it
GATED = [k.assign_pulses_gated] + ([k.assign_pulses_gated_simd] if _simd.AVAILABLE else [])


def run_gated(ts, ch, delays, table, half_gate, kernel=k.assign_pulses_gated, spare=None):
    n = k.count_detector_tags(ch, 0, len(delays))
    if spare is None:  # one spare slot for the scalar kernel, a block for the vector one
        spare = 1 if kernel is k.assign_pulses_gated else _simd.ASSIGN_BLOCK
    pulse, det_ch = np.empty(n + spare, np.int64), np.empty(n + spare, np.uint8)
    n_outside, n_outside_table, written = kernel(
        ts, ch, 0, delays, SEARCH_DELAY, *table, half_gate, pulse, det_ch
    )
    assert written == n
    return pulse[:n], det_ch[:n], n_outside, n_outside_table


def test_gate_edges_exact():
    # zero drift, integer period: arithmetic is exact, so tags on the edges test [-g/2, +g/2)
    sync = np.arange(0, 10 * DIVIDER * 1000, DIVIDER * 1000, dtype=np.int64)
    det = np.array([5000 - 200, 5000 + 200, 5000 + 199, 7000 - 201, 123_000 + 500])
    ts = np.concatenate([sync, det])
    ch = np.concatenate([np.zeros(len(sync), np.uint8), np.array([1, 2, 2, 1, 3], np.uint8)])
    order = np.argsort(ts, kind="stable")
    ts, ch = ts[order], ch[order]
    clock = timing.recover_clock(ts, ch, DIVIDER, CLOCK_HZ)
    res = timing.assign_pulses(ts, ch, clock, gate_width_ps=400)
    pulses = dict(zip(ts[ch != 0].tolist(), res.pulse_index.tolist(), strict=True))
    assert pulses == {4800: 5, 5200: -1, 5199: 5, 6799: -1, 123_500: -1}
    np.testing.assert_array_equal(res.n_outside, [0, 1, 1, 1, 0])
    # with a full-period gate the window [c - T/2, c + T/2) takes 123_500 for pulse 124
    res = timing.assign_pulses(ts, ch, clock, gate_width_ps=1000)
    assert res.pulse_index[np.flatnonzero(ts[ch != 0] == 123_500)[0]] == 124
    assert kernel_matches_reference(ts, ch, clock, 200.0)


def kernel_matches_reference(ts, ch, clock, half_gate):
    table = clock.kernel_table
    delays = np.zeros(5, dtype=np.int64)
    exp = ref.assign_pulses_gated(ts, ch, 0, delays, SEARCH_DELAY, *table, half_gate)
    return all(
        np.array_equal(g, e)
        for kernel in GATED
        for g, e in zip(run_gated(ts, ch, delays, table, half_gate, kernel), exp, strict=True)
    )


# --------------------------------------------------------------------------- synthetic truth


def check_assignment(ts, ch, truth, delays, gate=500.0):
    clock = timing.recover_clock(ts, ch, DIVIDER, CLOCK_HZ)
    res = timing.assign_pulses(ts, ch, clock, delays, gate)
    det_truth = truth[ch != 0]
    np.testing.assert_array_equal(res.pulse_index, det_truth)
    return clock, res


def test_known_offset_drift_delays_give_exact_pulse_indices(rng):
    ts, ch, truth, delays = make_capture(rng, offset_ps=-321, drift_ppm=(25.0, 25.0))
    clock, res = check_assignment(ts, ch, truth, delays)
    # drift over 400 us of sync tags with +-10 ps jitter: error ~ 10 ps / 4e8 ps = 0.03 ppm
    assert clock.drift_ppm == pytest.approx(25.0, abs=0.2)
    assert clock.period_ps == pytest.approx(PERIOD_PS * (1 + 25e-6), abs=1e-3)
    assert clock.offset_ps == pytest.approx(-321, abs=15)  # first-sync jitter (10 ps) dominates
    assert clock.status.in_sync and clock.status.n_gaps == 0
    assert clock.status.max_residual_ps < 30  # two tags of +-10 ps jitter plus smoothing lag
    assert res.n_outside.sum() == 0


def test_reused_output_buffers_give_the_same_assignment(rng):
    ts, ch, truth, delays = make_capture(rng, noise_per_channel=37)
    clock = timing.recover_clock(ts, ch, DIVIDER, CLOCK_HZ)
    fresh = timing.assign_pulses(ts, ch, clock, delays, 500.0)
    buffers = (np.full(len(ts) + 10, 7, np.int64), np.full(len(ts) + 10, 7, np.uint8))
    for _ in range(2):  # the second call overwrites the first one's result in place
        reused = timing.assign_pulses(ts, ch, clock, delays, 500.0, out=buffers)
        np.testing.assert_array_equal(reused.pulse_index, fresh.pulse_index)
        np.testing.assert_array_equal(reused.channels, fresh.channels)
        np.testing.assert_array_equal(reused.n_outside, fresh.n_outside)
        assert reused.n_outside_table == fresh.n_outside_table
        assert np.shares_memory(reused.pulse_index, buffers[0])
    np.testing.assert_array_equal(fresh.pulse_index, truth[ch != 0])
    for bad in [
        (buffers[0][: len(ts)], buffers[1]),  # no spare slot
        (buffers[1], buffers[1]),  # wrong dtype
        (buffers[0], buffers[0]),
    ]:
        with pytest.raises(ValueError, match="out must be"):
            timing.assign_pulses(ts, ch, clock, delays, 500.0, out=bad)


def test_outside_window_count_is_exact(rng):
    ts, ch, truth, delays = make_capture(rng, noise_per_channel=37)
    _, res = check_assignment(ts, ch, truth, delays)
    np.testing.assert_array_equal(res.n_outside, [0, 37, 37, 37, 37])
    assert np.count_nonzero(res.pulse_index == -1) == 4 * 37  # kept as -1, not dropped
    index, channel = res.assigned()
    assert len(index) == len(res.pulse_index) - 4 * 37 and np.all(index >= 0)


def test_drift_change_mid_capture(rng):
    ts, ch, truth, delays = make_capture(rng, drift_ppm=(-80.0, 120.0), drift_change_pulse=190_000)
    clock, _ = check_assignment(ts, ch, truth, delays)
    starts, drift = clock.local_drift_ppm(window_syncs=500)
    # windows well before / after the change (500 syncs = 50 us: error ~ 20 ps / 5e7 ps)
    assert drift[0] == pytest.approx(-80.0, abs=1.0)
    assert drift[-2] == pytest.approx(120.0, abs=1.0)
    # a single global line would miss by several ns (200 ppm change x 100 us) near the ends,
    # many pulse periods; the table interpolation gave every index exactly


def test_long_fibre_delay(rng):
    # 50 us of fibre (500 sync periods) on every detector, plus the small per-channel skews
    fibre = 50_000_000
    delays = (0, fibre + 130, fibre - 220, fibre + 3100, fibre + 45)
    ts, ch, truth, delays = make_capture(rng, delays_ps=delays, noise_per_channel=11)
    _, res = check_assignment(ts, ch, truth, delays)
    np.testing.assert_array_equal(res.n_outside, [0, 11, 11, 11, 11])


def test_sync_gap_is_reported_and_bridged(rng):
    ts, ch, truth, delays = make_capture(rng, gap_pulses=(150_000, 230_050))
    clock, _ = check_assignment(ts, ch, truth, delays)
    st = clock.status
    assert not st.in_sync
    assert st.n_gaps == 1
    # syncs at pulses 149_900 then 230_100: 802 sync periods apart, 801 syncs missing
    assert st.gap_missing.tolist() == [801] and st.gap_uncertain.tolist() == [False]
    t_before = 321 + 149_900 * PERIOD_PS * (1 + 15e-6)
    t_after = 321 + 230_100 * PERIOD_PS * (1 + 15e-6)
    assert abs(st.gap_start_ps[0] - t_before) <= 11 and abs(st.gap_end_ps[0] - t_after) <= 11


def test_detections_outside_the_sync_table_are_extrapolated_and_counted(rng):
    # no sync before pulse 20_000 (sync starts late); the last sync is at pulse 399_900
    ts, ch, truth, delays = make_capture(rng, gap_pulses=(0, 20_000))
    _, res = check_assignment(ts, ch, truth, delays)  # indices exact, also when extrapolated
    det = truth[ch != 0]
    before, after = np.count_nonzero(det < 20_000), np.count_nonzero(det > 399_900)
    assert before > 0 and after > 0
    # detections of pulse 399_900 itself sit on the last sync, within jitter, either side
    assert before + after <= res.n_outside_table <= before + after + np.sum(det == 399_900)


def test_long_gap_off_grid_is_flagged_not_cascaded():
    # 500 syncs, then 999 missing while the clock slips by 0.35 sync period, then 500 more
    period = DIVIDER * PERIOD_PS
    before = np.arange(500) * period
    after = (np.arange(1499, 1999) + 0.35) * period
    sync = np.concatenate([before, after]).astype(np.int64)
    clock = timing.recover_clock_from_sync(sync, DIVIDER, CLOCK_HZ)
    st = clock.status
    assert st.n_rejected == 0  # the tags after the gap re-lock instead of all being rejected
    assert st.gap_missing.tolist() == [999] and st.gap_uncertain.tolist() == [True]
    assert clock.table_pulse[-1] == 1998 * DIVIDER
    got = timing.build_sync_table(sync, np.zeros(len(sync), np.uint8), 0, period, 1 / 16, 0.25)
    exp = ref.build_sync_table(sync, np.zeros(len(sync), np.uint8), 0, period, 1 / 16, 0.25)
    for g, e in zip(got[:6], exp, strict=True):
        np.testing.assert_array_equal(g, e)


def test_glitch_tag_is_rejected(rng):
    ts, ch, truth, delays = make_capture(rng, n_pulses=50_000)
    glitch = ts[ch == 0][7] + 40_000  # 0.4 sync period after a sync
    ts2 = np.insert(ts, np.searchsorted(ts, glitch), glitch)
    ch2 = np.insert(ch, np.searchsorted(ts, glitch), 0)
    truth2 = np.insert(truth, np.searchsorted(ts, glitch), -2)
    clock, _ = check_assignment(ts2, ch2, truth2, delays)
    assert clock.status.n_rejected == 1 and not clock.status.in_sync


def test_estimate_delays_modulo_period(rng):
    ts, ch, _, delays = make_capture(rng, det_jitter_ps=20, delays_ps=(0, 130, -220, 3100, 495))
    clock = timing.recover_clock(ts, ch, DIVIDER, CLOCK_HZ)
    est = timing.estimate_delays(ts, ch, clock, bin_width_ps=10)
    wrapped = (delays + 500) % 1000 - 500  # 3100 -> 100; 495 sits at the wrap point
    # mean of ~2000 residuals, each uniform +-20 ps (det) +-10 ps (sync): sigma < 0.3 ps;
    # the bound adds 0.5 ps integer rounding of the estimate and 0.5 ps of tag rounding
    assert np.all(np.abs(est[1:] - wrapped[1:]) <= 2), (est, wrapped)
    assert est[0] == 0


def test_clear_errors(rng):
    ts, ch, _, delays = make_capture(rng, n_pulses=5_000)
    with pytest.raises(ValueError, match="at least 2 sync tags"):
        timing.recover_clock(ts, np.ones_like(ch), DIVIDER, CLOCK_HZ)
    clock = timing.recover_clock(ts, ch, DIVIDER, CLOCK_HZ)
    with pytest.raises(ValueError, match="gate_width_ps"):
        timing.assign_pulses(ts, ch, clock, delays, 1500)
    with pytest.raises(ValueError, match="differ in length"):
        timing.recover_clock(ts, ch[:-1], DIVIDER, CLOCK_HZ)
