"""Tests of the emulator's link physics: kernels against the plain reference, and the physical
model against closed-form expectations with tolerances from counting statistics.

Statistical tests use a fixed seed, so they are deterministic; their tolerance is 5 standard
deviations of the counting statistic named in each test, so a correct model fails them with
probability below 1e-6 for a given seed choice and a wrong model beyond that margin is caught.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import physics_reference as ref
import pytest

from hil.emulator import _physics_kernels as k
from hil.emulator import physics
from hil.emulator.physics import LinkGenerator, LinkParams

SECOND_PS = 10**12

# A test bench: 100 MHz clock (10 ns period) and 1 ns dead time, so a click can never blind a
# detector for the next pulse and per-pulse detection probabilities are not distorted by dead
# time; no afterpulsing unless a test turns it on.
BASE = LinkParams(
    clock_hz=1e8,
    dead_time_s=(1e-9,) * 4,
    afterpulse_prob=0.0,
    sync_divider=1000,
    seed=12345,
)
PERIOD_PS = 10_000


def run(params: LinkParams, duration_ps: int, t0: int = 0):
    return LinkGenerator(params).generate(params, t0, t0 + duration_ps)


def detections_by_pulse(ts, ch, params: LinkParams, n_pulses: int):
    """Pulse index and click mask (bit j = detector j) of each pulse with at least one click,
    from the known emission times (offset 0, no drift, no delays in these tests); pulses at the
    two ends of the span are dropped (their clicks may straddle the span boundary)."""
    det = ch > 0
    period = 1e12 / params.clock_hz
    idx = np.rint(ts[det] / period).astype(np.int64)
    bits = (1 << (ch[det].astype(np.int64) - 1)).astype(np.int64)
    order = np.argsort(idx, kind="stable")
    idx, bits = idx[order], bits[order]
    uniq, start = np.unique(idx, return_index=True)
    mask = np.bitwise_or.reduceat(bits, start) if len(start) else np.zeros(0, np.int64)
    keep = (uniq >= 1) & (uniq < n_pulses - 1)
    return uniq[keep], mask[keep]


def choices(params: LinkParams, indices):
    pattern = params.seed if params.pattern_seed is None else params.pattern_seed
    return physics.pulse_choices(
        pattern, params.p_mu, params.p_z, params.disclose_fraction, indices
    )


# ---------------------------------------------------------------------------------------------
# kernels against the plain reference


def test_hash_and_pulse_choices_match_reference():
    rng = np.random.default_rng(1)
    idx = np.concatenate([[0, 1, 2**40, 2**62], rng.integers(0, 2**50, 300)]).astype(np.int64)
    for seed in (0, 1, 2**63 - 1):
        basis, cls, bit, disc = physics.pulse_choices(seed, (0.6, 0.3, 0.1), 0.8, 0.25, idx)
        expected = ref.pulse_choices(seed, (0.6, 0.3, 0.1), 0.8, 0.25, idx)
        assert [tuple(int(v) for v in row) for row in zip(basis, cls, bit, disc, strict=True)] == [
            tuple(int(v) for v in row) for row in expected
        ]
    # negative counters (times before 0) wrap like the reference's 64-bit mask
    key = k.stream_key(np.int64(7), np.int64(3))
    for c in (-1, -(2**40), 5):
        cm = np.uint64(k.counter_mix(np.int64(c)))
        assert int(k.keyed(np.uint64(key), cm)) == ref.hash_at(7, 3, c)


def test_normal_quantile_matches_statistics_module():
    nd = NormalDist()
    for p in np.concatenate([np.linspace(1e-12, 1 - 1e-12, 2001), [1e-300, 0.02425, 0.5]]):
        # Acklam's approximation: relative error below 1.15e-9 (its stated bound)
        exact = nd.inv_cdf(float(p))
        assert abs(k.norm_ppf(p) - exact) <= 1.2e-9 * abs(exact) + 1e-15
        assert k.norm_ppf(p) == ref.norm_ppf(float(p))
    # the table quantile used for jitter: interpolation error within its stated bound
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**64 - 1, 20_000, dtype=np.uint64, endpoint=True)
    hashes[:6] = [0, 2**64 - 1, 2**52 - 1, 2**63, 16 * 2**52, 4080 * 2**52 - 1]
    for h in hashes:
        g = k.gauss_from_hash(h)
        assert g == ref.gauss_from_hash(int(h))
        u = ((int(h) >> 12) + 0.5) * 2.0**-52
        exact = min(max(nd.inv_cdf(u), -8.0), 8.0)
        assert abs(g - exact) < 1.5e-4


def test_exponential_from_hash_matches_reference_and_log():
    rng = np.random.default_rng(11)
    hashes = rng.integers(0, 2**64 - 1, 20_000, dtype=np.uint64, endpoint=True)
    # extremes of u, powers of two, and both sides of the sqrt2 reduction (mantissa near sqrt2)
    near_sqrt2 = int(math.sqrt(2.0) * 2**63)
    hashes[:8] = [0, 2**64 - 1, 2**12, 2**63, 2**63 - 1, 2**52, near_sqrt2, near_sqrt2 + 2**13]
    for h in hashes:
        e = k.exp_from_hash(h)
        assert e == ref.exp_from_hash(int(h))
        u = (2 * (int(h) >> 12) + 1) * 2.0**-53  # exact: odd integer < 2**53 times 2**-53
        # stated accuracy: series truncation < 5e-13 plus rounding of values below 37
        assert abs(e + math.log(u)) < 5e-13, (int(h), e, -math.log(u))
        assert e > 0.0


def test_geometric_skips_follow_geometric_law():
    """P(skip >= j) = (1 - p)^j for the gaps of the candidate search. Counting: the number of
    n draws with skip >= j is binomial(n, (1 - p)^j); tolerance 5 sigma."""
    p, n = 0.01, 400_000
    skips = np.empty(n, np.int64)
    k._draw_skips(skips, n, np.uint64(0x1234567), 0, -1.0 / math.log1p(-p))
    assert skips.min() >= 0
    for j in (1, 10, 69, 200, 500, 1000):
        q = (1 - p) ** j
        assert abs(np.sum(skips >= j) - n * q) < 5 * math.sqrt(n * q * (1 - q)), j


def test_guide_table_never_overshoots():
    """The guide table's start index is at most the first running sum above x, for x anywhere
    in [0, P_any), including exactly on and just below cell edges."""
    tj = physics.photon_click_table(BASE.replace(attenuation_db=0.0, e_mis=0.05))
    order, cum = k.click_pattern_tables(np.array([0.6, 0.2, 1e-4]), tj)
    cum2 = cum.reshape(12, 15)
    p_c = float(cum2[:, 14].max())
    guide = k._guide_table(cum2, p_c)
    cells = guide.shape[1] - 1
    rng = np.random.default_rng(4)
    edges = np.arange(cells) * p_c / cells
    for c in range(12):
        xs = np.concatenate(
            [rng.random(2000) * cum2[c, 14], edges, np.nextafter(edges, -1.0), cum2[c, :14]]
        )
        xs = xs[(xs >= 0) & (xs < cum2[c, 14])]
        first = np.searchsorted(cum2[c], xs, side="right")  # first running sum > x
        start = guide[c, (xs * (cells / p_c)).astype(np.int64)]
        assert (start <= first).all()
        assert (first <= 14).all()


# p_rest 0: whole-ps period without drift (a separate path of the click times); mu 20: most
# clicking pulses click several detectors (the multi-click path of the pattern expansion)
@pytest.mark.parametrize(
    ("eve", "p_rest", "mu_signal"), [(0.0, 1e-3, 0.6), (0.5, 1e-3, 0.6), (0.0, 0.0, 20.0)]
)
def test_signal_kernel_matches_reference(eve, p_rest, mu_signal):
    p = BASE.replace(attenuation_db=0.0, efficiency=(0.3, 0.2, 0.25, 0.1), e_mis=0.03)
    tj = physics.photon_click_table(p)
    mu = np.array([mu_signal, 0.2, 0.0])
    order, cum = k.click_pattern_tables(mu, tj)
    timing = (3, 1234, 0.25, 1000, p_rest)  # anchor 3, nonzero fraction, drift
    args = (k.signal_tables(order, cum), 0.5, 0.8, 0.7, eve, 30.0, *timing)
    for i_lo, i_hi in ((0, 20_000), (65_000, 66_000), (131_071, 131_073), (10, 10)):
        buf = np.empty(4 * (i_hi - i_lo) + 8, np.int64)
        n, nxt = k.signal_detections(buf, 9, 4, i_lo, i_hi, *args)
        expected = ref.signal_detections(9, 4, i_lo, i_hi, mu, 0.5, 0.8, 0.7, eve, tj, 30.0, timing)
        assert nxt == i_hi
        assert buf[:n].tolist() == expected
    # a buffer that fills up: resuming from the returned index gives the same clicks
    buf = np.empty(40, np.int64)
    got, i = [], 0
    while i < 20_000:
        n, i = k.signal_detections(buf, 9, 4, i, 20_000, *args)
        got += buf[:n].tolist()
    assert got == ref.signal_detections(9, 4, 0, 20_000, mu, 0.5, 0.8, 0.7, eve, tj, 30.0, timing)


def test_pattern_tables_match_reference():
    tj = physics.photon_click_table(BASE.replace(attenuation_db=0.0, e_mis=0.1))
    mu = np.array([0.5, 0.1, 0.0])
    order, cum = k.click_pattern_tables(mu, tj)
    r_order, r_cum = ref.click_pattern_tables(mu, tj.tolist())
    assert (order == r_order).all()
    np.testing.assert_allclose(cum, r_cum, rtol=1e-15, atol=0)


def test_dark_kernel_matches_reference():
    # (a span of a few slots; a high rate, many Poisson pieces, across a slot boundary; empty)
    slot = k.DARK_SLOT_PS
    cases = ((3e5, 0, 4 * slot + 5), (1e8, 3 * slot // 4 + 17, 5 * slot // 4 + 3), (10.0, 3, 3))
    for rate, t_lo, t_hi in cases:
        buf = np.empty(100_000, np.int64)
        n, nxt = k.dark_detections(buf, 4, 2, rate, t_lo, t_hi)
        assert nxt == t_hi
        assert buf[:n].tolist() == ref.dark_detections(4, 2, rate, t_lo, t_hi)
    rates = np.array([1e5, 0.0, 3e6, 7e4])
    buf = np.empty(10_000, np.int64)
    n = k.dark_detections_all(buf, 4, rates, 10**6, 10**9)
    merged = sorted(sum((ref.dark_detections(4, j, rates[j], 10**6, 10**9) for j in range(4)), []))
    assert buf[:n].tolist() == merged
    assert k.dark_detections_all(np.empty(10, np.int64), 4, rates, 10**6, 10**9) == -1


def test_register_kernel_matches_reference():
    rng = np.random.default_rng(5)
    keys = np.sort(rng.integers(0, 10**7, 3000) * 4 + rng.integers(0, 4, 3000)).astype(np.int64)
    dead = np.array([5000, 20000, 0, 1000], np.int64)
    on = np.array([True, True, True, False])
    delays = np.array([0, 100, -300, 7, 0], np.int64)
    enabled = np.array([True, True, False, True, True])
    horizon = 9 * 10**6
    keys = keys[keys < horizon * 4]
    last = np.full(4, -(2**62), np.int64)
    heap = np.empty(2 * len(keys) + 64, np.int64)
    out = np.empty(len(keys) + 64, np.int64)
    n, used, n_heap = k.register_clicks(
        out, keys, horizon, dead, on, 0.2, 30000.0, 3, last, heap, 0, delays, 4, enabled
    )
    r_last = [-(2**62)] * 4
    pending: list[int] = []
    registered = ref.register_clicks(keys, horizon, dead, on, 0.2, 30000.0, 3, r_last, pending)
    # the tagger's view, written out here: channel d + 1, delay, floor to the resolution
    expected = [
        ((key >> 2) + int(delays[(key & 3) + 1])) // 4 * 4 * 8 + (key & 3) + 1
        for key in registered
        if enabled[(key & 3) + 1]
    ]
    assert used == len(keys)
    assert out[:n].tolist() == expected
    assert last.tolist() == r_last
    assert sorted(heap[:n_heap].tolist()) == sorted(pending)
    # a full output buffer stops early; continuing gives the same result
    last2 = np.full(4, -(2**62), np.int64)
    heap2 = np.empty(2 * len(keys) + 64, np.int64)
    got, rest, nh = [], keys, 0
    while True:
        small = np.empty(50, np.int64)
        m, used2, nh = k.register_clicks(
            small, rest, horizon, dead, on, 0.2, 30000.0, 3, last2, heap2, nh, delays, 4, enabled
        )
        got += small[:m].tolist()
        rest = rest[used2:]
        if m < 50:
            break
    assert got == expected


def test_sorting_kernels_match_numpy():
    rng = np.random.default_rng(2)
    a = np.sort(rng.integers(0, 10**9, 5000)) + rng.integers(-50, 50, 5000)
    b = a.copy()
    assert k.sort_nearly_sorted(b, 10**9)
    assert (b == np.sort(a)).all()
    c = rng.integers(0, 10**9, 5000)
    assert not k.sort_nearly_sorted(c.copy(), 100)  # gives up on a shuffled array
    # sorted blocks are passed over: single descents at, just before and after block edges,
    # including one that must move an element back across several blocks
    for n in (0, 1, 2, 127, 128, 129, 1000):
        for pos in {1, 127, 128, 129, 256, n - 1}:
            if not 0 < pos < n:
                continue
            d = np.arange(n, dtype=np.int64) * 10
            d[pos] = d[pos] - 15 if pos != n - 1 else -1
            e = d.copy()
            assert k.sort_nearly_sorted(e, 10**9)
            assert (e == np.sort(d)).all(), (n, pos)
    x, y = np.sort(rng.integers(0, 100, 300)), np.sort(rng.integers(0, 100, 7))
    out = np.full(400, -1, np.int64)
    assert (k.merge_sorted(x, y, out) == np.sort(np.concatenate([x, y]))).all()
    assert (out[307 + k.MERGE_SLACK :] == -1).all()  # nothing written past the stated slack
    assert len(k.merge_sorted(x[:0], y[:0], out)) == 0
    # galloping merge: sizes from empty to equal, duplicates, one side wholly before the other
    # (both merge paths: sizes within 4x of each other, and far apart; windows of the short path
    # ending exactly at, before and after the end of the long array)
    cases = [(0, 5, 10), (5, 0, 10), (1000, 1000, 50), (2000, 3, 10**6), (3, 2000, 10)]
    cases += [(n, 1, 10**6) for n in (31, 32, 33, 64, 65)] + [(5000, 40, 10**4), (5000, 40, 9)]
    for na, nb, hi in cases:
        for shift in (0, 10**7, -(10**7)):
            p = np.sort(rng.integers(0, hi, na))
            q = np.sort(rng.integers(0, hi, nb)) + shift
            got = k.merge_sorted(p, q, np.empty(na + nb + k.MERGE_SLACK, np.int64))
            assert (got == np.sort(np.concatenate([p, q]))).all(), (na, nb, shift)
    for sizes in ((40, 3000, 0), (40, 3000, 200), (0, 5, 3000)):
        parts = [np.sort(rng.integers(0, 8 * 10**6, m)) for m in sizes]
        _check_finalize(parts)


def _check_finalize(parts):
    for t0, t1 in ((0, 10**6), (2 * 10**5, 7 * 10**5), (5, 5)):
        n = sum(len(a) for a in parts)
        ts_buf = np.empty(n + k.MERGE_SLACK, np.int64)
        ts, ch, later, early = k.finalize_tags(*parts, t0, t1, ts_buf, np.empty(n, np.uint8))
        allk = np.sort(np.concatenate(parts))
        inside = allk[(allk >= t0 * 8) & (allk < t1 * 8)]
        assert (ts == inside >> 3).all() and (ch == inside & 7).all() and ch.dtype == np.uint8
        assert (later == allk[allk >= t1 * 8]).all()
        assert early == np.sum(allk < t0 * 8)


# ---------------------------------------------------------------------------------------------
# the physical model


def test_detection_probability_follows_decoy_model_across_attenuation():
    """Q_k = 1 - (1 - Y0) exp(-eta mu_k) (Ma et al., PRA 72, 012326 (2005), channel model).

    Counting: the number of detected pulses of class k among N_k emitted is binomial
    (pulses are independent), sigma = sqrt(N_k Q_k (1 - Q_k)); tolerance 5 sigma."""
    duration = SECOND_PS // 10  # 1e7 pulses
    n_pulses = duration // PERIOD_PS
    _, cls_all, _, _ = choices(BASE, np.arange(n_pulses))
    interior = np.zeros(n_pulses, bool)
    interior[1 : n_pulses - 1] = True
    n_k = np.bincount(cls_all[interior], minlength=3)
    for att in (0.0, 10.0, 20.0, 30.0, 40.0):
        p = BASE.replace(attenuation_db=att)
        ts, ch = run(p, duration)
        idx, _ = detections_by_pulse(ts, ch, p, n_pulses)
        detected = np.bincount(cls_all[idx], minlength=3)
        # the formula, written from the parameters independently of the module
        loss_db = p.fiber_loss_db_per_km * p.fiber_length_m / 1e3 + p.insertion_loss_db + att
        eta = 10 ** (-loss_db / 10) * p.efficiency[0]
        y0 = 1 - math.exp(-4 * p.dark_count_rate_ref_hz[0] * PERIOD_PS * 1e-12)
        for c in range(3):
            q = 1 - (1 - y0) * math.exp(-eta * p.mu[c])
            assert physics.expected_detection_probability(p, c) == pytest.approx(q, rel=1e-12)
            sigma = math.sqrt(n_k[c] * q * (1 - q))
            assert abs(detected[c] - n_k[c] * q) < 5 * sigma, (att, c, detected[c], n_k[c] * q)
    # unequal efficiencies and misalignment: Q_k is the state average (same binomial test)
    p = BASE.replace(attenuation_db=3.0, efficiency=(0.3, 0.1, 0.25, 0.15), e_mis=0.05)
    ts, ch = run(p, duration)
    idx, _ = detections_by_pulse(ts, ch, p, n_pulses)
    detected = np.bincount(cls_all[idx], minlength=3)
    for c in range(3):
        q = physics.expected_detection_probability(p, c)
        sigma = math.sqrt(n_k[c] * q * (1 - q))
        assert abs(detected[c] - n_k[c] * q) < 5 * sigma, (c, detected[c], n_k[c] * q)


def _single_click_expectation(p: LinkParams, cls: int, basis: int, eve: float):
    """(P(single click on a detector of `basis` with the right bit), same with the wrong bit)
    for Alice's state averaged over her bit; from independent per-detector clicks
    c_j = 1 - (1 - pd_j) exp(-mu tj[s, j]) and intercept-resend mixing Bob's state s."""
    tj = physics.photon_click_table(p)
    pd = 1 - math.exp(-p.dark_count_rate_ref_hz[0] * PERIOD_PS * 1e-12)
    mu = p.mu[cls]
    right = wrong = 0.0
    for bit in (0, 1):
        # Bob's state: Alice's with prob 1 - f; Eve's (random basis; her bit equals Alice's in
        # the same basis, random otherwise) with prob f.
        states = {2 * basis + bit: 1 - eve + eve / 2}
        for b in (0, 1):
            states[2 * (1 - basis) + b] = states.get(2 * (1 - basis) + b, 0) + eve / 4
        for s, w in states.items():
            c = [1 - (1 - pd) * math.exp(-mu * tj[s, j]) for j in range(4)]
            for j in range(4):
                if physics.DET_BASIS[j] != basis:
                    continue
                only_j = c[j] * math.prod(1 - c[m] for m in range(4) if m != j)
                if physics.DET_BIT[j] == bit:
                    right += 0.5 * w * only_j
                else:
                    wrong += 0.5 * w * only_j
    return right, wrong


def _measured_single_click_qber(p: LinkParams, duration: int, cls: int, basis: int):
    ts, ch = run(p, duration)
    n_pulses = duration // PERIOD_PS
    idx, mask = detections_by_pulse(ts, ch, p, n_pulses)
    b, c, bit, _ = choices(p, idx)
    single = (mask & (mask - 1)) == 0
    det = np.log2(np.maximum(mask, 1)).astype(int)
    det_basis = np.array(physics.DET_BASIS)[det]
    det_bit = np.array(physics.DET_BIT)[det]
    sel = single & (b == basis) & (c == cls) & (det_basis == basis)
    errors = int(np.sum(det_bit[sel] != bit[sel]))
    return errors, int(sel.sum()), (idx, mask, b, c, bit)


@pytest.mark.parametrize("e_mis", [0.0, 0.03])
def test_qber_is_misalignment_plus_dark_contribution(e_mis):
    """E = (e0 Y0 + e_mis (1 - exp(-eta mu))) / Q with e0 = 1/2 (Ma et al. 2005, channel model).

    Dark rate raised to 2e4 Hz so the dark contribution is measurable. Counting: errors among
    n sifted single clicks are binomial, sigma = sqrt(n E (1 - E)); tolerance 5 sigma."""
    p = BASE.replace(e_mis=e_mis, dark_count_rate_ref_hz=(2e4,) * 4, attenuation_db=10.0)
    errors, n, (idx, mask, b, c, bit) = _measured_single_click_qber(p, SECOND_PS // 2, 0, 0)
    right, wrong = _single_click_expectation(p, 0, 0, 0.0)
    e_exact = wrong / (right + wrong)
    # the textbook first-order form: Z-arm transmittance and Y0 of the two Z detectors
    eta_z = physics.channel_transmittance(p) * p.efficiency[0] * p.p_z_bob
    y0_z = 2 * (1 - math.exp(-2e4 * PERIOD_PS * 1e-12))
    sig = -math.expm1(-eta_z * p.mu[0])
    e_formula = (0.5 * y0_z + e_mis * sig) / (y0_z + sig)
    sigma = math.sqrt(e_exact * (1 - e_exact) / n)
    # The exact single-click value differs from the first-order form only by double-click
    # terms of relative order (sum of click probabilities) ~ 1e-3: far below the tolerance.
    assert abs(e_exact - e_formula) < 0.2 * sigma
    assert abs(errors / n - e_exact) < 5 * sigma, (errors / n, e_exact, sigma)
    # the same data under the module's double-click convention (squash) vs expected_qber
    _check_squashed_qber(p, idx, mask, b, c, bit, cls=0, basis=0)


def _check_squashed_qber(p, idx, mask, b, c, bit, cls, basis):
    """Apply the squashing convention (random basis for clicks in both bases, random bit for a
    double click in one basis) with an independent coin, compare with expected_qber; binomial
    5 sigma on the sifted count."""
    coin = np.random.default_rng(99).random((2, len(mask)))
    z = mask & 3
    x = (mask >> 2) & 3
    bob_basis = np.where((z > 0) & (x > 0), (coin[0] < 0.5).astype(int), np.where(z > 0, 0, 1))
    sub = np.where(bob_basis == 0, z, x)
    bob_bit = np.where(sub == 3, (coin[1] < 0.5).astype(int), np.where(sub == 2, 1, 0))
    sel = (b == basis) & (c == cls) & (bob_basis == basis)
    n = int(sel.sum())
    e = physics.expected_qber(p, cls, basis)
    err = int(np.sum(bob_bit[sel] != bit[sel]))
    assert abs(err / n - e) < 5 * math.sqrt(e * (1 - e) / n), (err / n, e)


@pytest.mark.parametrize("fraction", [1.0, 0.4])
def test_intercept_resend_gives_quarter_of_fraction(fraction):
    """Intercept-resend in a random basis on a fraction f: QBER f/4 (Bennett et al., J. Cryptol.
    5, 3 (1992); reference/qkd-key-rate.md), plus the small dark contribution. Eve preserves the
    count rate (checked: measured detections per class against Q_k without her). Binomial 5
    sigma on the sifted errors and on the detected-pulse counts."""
    p = BASE.replace(eve_fraction=fraction, e_mis=0.0, attenuation_db=0.0)
    errors, n, (idx, mask, b, c, bit) = _measured_single_click_qber(p, SECOND_PS // 20, 0, 0)
    right, wrong = _single_click_expectation(p, 0, 0, fraction)
    e_exact = wrong / (right + wrong)
    sigma = math.sqrt(e_exact * (1 - e_exact) / n)
    # dark counts (600 Hz) add < 1e-4 here: the value is f/4 within a fraction of sigma
    assert abs(e_exact - fraction / 4) < 0.5 * sigma
    assert abs(errors / n - e_exact) < 5 * sigma, (errors / n, e_exact, sigma)
    _check_squashed_qber(p, idx, mask, b, c, bit, cls=0, basis=0)
    # count rate preserved: detected pulses per class (binomial, 5 sigma) match Q_k without Eve
    n_pulses = SECOND_PS // 20 // PERIOD_PS
    _, cls_all, _, _ = choices(p, np.arange(1, n_pulses - 1))
    n_k = np.bincount(cls_all, minlength=3)
    detected = np.bincount(c, minlength=3)
    for cls in range(3):
        q_eve = physics.expected_detection_probability(p, cls)
        q_none = physics.expected_detection_probability(p.replace(eve_fraction=0.0), cls)
        assert q_eve == pytest.approx(q_none, rel=1e-12)
        sigma_n = math.sqrt(n_k[cls] * q_none * (1 - q_none))
        assert abs(detected[cls] - n_k[cls] * q_none) < 5 * sigma_n


def test_dead_time_is_respected():
    p = LinkParams(attenuation_db=0.0, dead_time_s=(50e-9, 20e-9, 10e-9, 100e-9), seed=3)
    ts, ch = run(p, SECOND_PS // 200)
    dead_ps = [round(d * 1e12) for d in p.dead_time_s]
    for j in range(4):
        t = ts[ch == j + 1]
        assert len(t) > 1000
        assert np.diff(t).min() >= dead_ps[j]
        # non-paralysable: gaps just above the dead time occur (the detector re-arms)
        assert np.diff(t).min() < dead_ps[j] + 5000


def test_afterpulsing_raises_count_rate_by_configured_amount():
    """Each registered click is followed by an afterpulse with probability p, afterpulses can
    themselves afterpulse: rate x 1/(1 - p). With the same seed the primary clicks are the same,
    so the excess A is the afterpulse count: mean N0 p/(1-p), variance N0 p/(1-p)^2 (geometric
    number of descendants per primary); tolerance 5 sigma. Dead-time losses (rate x dead time
    = 2e-4) shift A by < 0.2 sigma."""
    p0 = BASE.replace(
        link_connected=False, dark_count_rate_ref_hz=(2e4,) * 4, dead_time_s=(10e-9,) * 4
    )
    duration = 2 * SECOND_PS
    ts0, ch0 = run(p0, duration)
    pap = 0.1
    ts1, ch1 = run(p0.replace(afterpulse_prob=pap, afterpulse_tau_s=200e-9), duration)
    for j in range(1, 5):
        n0 = int(np.sum(ch0 == j))
        a = int(np.sum(ch1 == j)) - n0
        mean = n0 * pap / (1 - pap)
        sigma = math.sqrt(n0 * pap) / (1 - pap)
        assert abs(a - mean) < 5 * sigma, (j, a, mean, sigma)
    # afterpulse delays: intervals after a click are dead + Exp(tau): the excess of short gaps
    # (< dead + 3 tau) over the dark-only run matches the afterpulse count (within 5 sigma).
    gaps0 = np.diff(ts0[ch0 == 1])
    gaps1 = np.diff(ts1[ch1 == 1])
    limit = 10_000 + 3 * 200_000
    excess = np.sum(gaps1 < limit) - np.sum(gaps0 < limit)
    n0 = int(np.sum(ch0 == 1))
    expect = n0 * pap * (1 - math.exp(-3)) / (1 - pap)
    assert abs(excess - expect) < 5 * math.sqrt(expect + 2 * n0 * 2e4 * limit * 1e-12)


def test_jitter_has_configured_standard_deviation():
    """Residuals of signal clicks around their pulse's emission time: floor(sigma g) has
    variance sigma^2 + 1/12 (quantisation to 1 ps). Sample variance of n normal values has
    standard deviation sigma_v^2 sqrt(2/(n-1)); tolerance 5 of those."""
    sigma = 40.0
    p = BASE.replace(attenuation_db=0.0, dark_count_rate_ref_hz=(0.0,) * 4, jitter_ps=sigma)
    ts, ch = run(p, SECOND_PS // 100)
    r = ts[ch > 0] - np.rint(ts[ch > 0] / PERIOD_PS).astype(np.int64) * PERIOD_PS
    var = sigma**2 + 1 / 12
    n = len(r)
    assert n > 10_000
    assert abs(r.var(ddof=1) - var) < 5 * var * math.sqrt(2 / (n - 1))
    assert abs(r.mean() + 0.5) < 5 * math.sqrt(var / n)  # floor shifts the mean by -1/2 ps
    assert np.abs(r).max() <= 8 * sigma + 1  # truncated at 8 sigma


@pytest.mark.parametrize(
    "fault", [{"link_connected": False}, {"attenuator_shutter_open": False}, {"output_on": False}]
)
def test_no_light_leaves_dark_counts_at_expected_rate(fault):
    """Fiber cut, shutter closed or laser off: only dark counts. Counts per detector are
    Poisson(rate T) (dead-time loss rate x dead = 1e-5, negligible); tolerance 5 sqrt(rate T)."""
    p = BASE.replace(attenuation_db=0.0, temperature_c=(-30.0, -20.0, -25.0, -40.0), **fault)
    duration = SECOND_PS // 2
    ts, ch = run(p, duration)
    for j in range(4):
        # Arrhenius, written here from the parameters (Itzler et al. 2011)
        t, t_ref = p.temperature_c[j] + 273.15, p.temperature_ref_c + 273.15
        rate = p.dark_count_rate_ref_hz[j] * math.exp(
            -p.dark_activation_energy_ev / 8.617333262e-5 * (1 / t - 1 / t_ref)
        )
        assert physics.dark_count_rate_hz(p, j) == pytest.approx(rate, rel=1e-12)
        expected = rate * duration * 1e-12
        assert abs(np.sum(ch == j + 1) - expected) < 5 * math.sqrt(expected), (j, expected)
    assert np.sum(ch == 0) == duration // PERIOD_PS // p.sync_divider  # sync keeps running


def test_detector_off_gives_no_tags_and_channel_disable_hides_them():
    p = BASE.replace(attenuation_db=0.0, detector_on=(True, False, True, True))
    ts, ch = run(p, SECOND_PS // 1000)
    assert np.sum(ch == 2) == 0 and np.sum(ch == 1) > 0
    p2 = BASE.replace(attenuation_db=0.0, channel_enabled=(False, True, True, True, False))
    ts2, ch2 = run(p2, SECOND_PS // 1000)
    assert set(np.unique(ch2).tolist()) == {1, 2, 3}


def test_same_seed_same_tags_and_chunking_is_exact():
    p = LinkParams(
        attenuation_db=0.0,
        channel_delay_ps=(100, 0, 2500, -700, 40),
        offset_ps=777,
        drift_ppm=2.5,
        resolution_ps=4,
    )
    total = SECOND_PS // 500  # 2 ms: ~4e4 clicks with dead time and afterpulses active
    ts_a, ch_a = run(p, total)
    ts_b, ch_b = run(p, total)
    assert len(ts_a) > 10_000
    assert (ts_a == ts_b).all() and (ch_a == ch_b).all()
    assert (np.diff(ts_a) >= 0).all() and ts_a.dtype == np.int64 and ch_a.dtype == np.uint8
    assert (ts_a % 4 == 0).all()
    cuts = [0, 1, 999_999, 1_000_000, 77_777_777, 77_777_778, 1_500_000_000, total]
    gen = LinkGenerator(p)
    parts = [gen.generate(p, a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    ts_c = np.concatenate([t for t, _ in parts])
    ch_c = np.concatenate([c for _, c in parts])
    assert (ts_c == ts_a).all() and (ch_c == ch_a).all()
    assert gen.dropped_early_tags == 0
    other = run(p.replace(seed=p.seed + 1), total)[0]
    assert len(other) != len(ts_a) or (other != ts_a).any()


def _same_tags_on_two_threads(monkeypatch, spans, fail_first_ahead=False):
    """Generate ``spans`` ((params, t0_ps, t1_ps) each) with one sampling thread and with two;
    assert equal tags span by span. Returns the tags per span and the sampling calls seen:
    (work array, whether it continued a look-ahead's clicks). ``fail_first_ahead``: the first
    look-ahead's worker raises."""
    one = LinkGenerator(spans[0][0])
    two = LinkGenerator(spans[0][0], sampling_threads=2)
    calls = []
    real = physics._sample_range

    def spy(dv, st, key, i_lo, i_hi, timing, start=0):
        first_ahead = key.startswith("ahead") and not any(k[:5] == "ahead" for k, _ in calls)
        calls.append((key, start > 0))
        if fail_first_ahead and first_ahead:
            raise MemoryError("worker out of memory")
        return real(dv, st, key, i_lo, i_hi, timing, start)

    monkeypatch.setattr(physics, "_sample_range", spy)
    counts = []
    for m, (q, t0, t1) in enumerate(spans):
        a, b = one.generate(q, t0, t1), two.generate(q, t0, t1)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), f"span {m}"
        counts.append(len(a[0]))
    return counts, calls


def test_two_sampling_threads_give_the_same_tags(monkeypatch):
    """sampling_threads=2 splits a span's pulses between two threads; every random decision is
    keyed on the pulse index, so the tags are those of one thread, bit for bit. The spans are
    long enough to be split (more than physics.PARALLEL_MIN_CLICKS expected clicks)."""
    p = BASE.replace(attenuation_db=0.0)
    span = SECOND_PS // 10
    counts, calls = _same_tags_on_two_threads(
        monkeypatch, [(p, m * span, (m + 1) * span) for m in range(2)]
    )
    assert min(counts) > 3 * physics.PARALLEL_MIN_CLICKS
    assert ("signal2", False) in calls  # the second thread's half was sampled
    with pytest.raises(ValueError, match="sampling_threads must be 1 or 2"):
        LinkGenerator(p, sampling_threads=3)


def test_look_ahead_gives_the_same_tags(monkeypatch):
    """With two sampling threads the worker samples the first part of the next span's pulses
    while the caller finishes the current span. The spans here change length (shorter and
    longer than guessed), the attenuation changes, the clock rate changes and link time jumps
    a gap: the look-ahead must be used where it fits, dropped where it does not, and the tags
    must be those of one thread bit for bit."""
    ms = SECOND_PS // 1000
    ends = [10, 20, 30, 35, 50, 60, 70, 80, 90, 100, 110, 120]
    changes = {6: {"attenuation_db": 3.0}, 8: {"clock_hz": 0.999e9}}
    spans, t0, q = [], 0, BASE.replace(attenuation_db=0.0)
    for m, end in enumerate(ends):
        q = q.replace(**changes.get(m, {}))
        if m == 9:
            t0 += 5 * ms  # a gap: the detectors' state restarts
        spans.append((q, t0, end * ms))
        t0 = end * ms
    counts, calls = _same_tags_on_two_threads(monkeypatch, spans)
    assert min(counts) > 3 * physics.LOOKAHEAD_MIN_CLICKS
    ahead = [c for c in calls if c[0].startswith("ahead")]
    # look-aheads ran in both work arrays, and calls finished their span's sampling after one
    assert {k for k, _ in ahead} == {"ahead0", "ahead1"}
    assert any(rest for _, rest in ahead)
    # and some did not fit (a shorter span, changed parameters, clock, gap): sampled anew
    assert sum(1 for k, _ in calls if k == "signal") >= 4


def test_a_failed_look_ahead_is_sampled_anew(monkeypatch):
    """A look-ahead whose worker raised is dropped: the call samples its span itself (a real
    fault then raises there), and the tags are those of one thread."""
    p = BASE.replace(attenuation_db=0.0)
    span = SECOND_PS // 100
    _, calls = _same_tags_on_two_threads(
        monkeypatch, [(p, m * span, (m + 1) * span) for m in range(3)], fail_first_ahead=True
    )
    # the span after the failed look-ahead was sampled anew on the calling thread
    first = next(n for n, (k, _) in enumerate(calls) if k.startswith("ahead"))
    assert ("signal", False) in calls[first + 1 :]


def test_results_held_by_the_caller_are_never_overwritten():
    """generate() returns tags in arrays it reuses once no result refers to them: results (and
    views of them) that the caller keeps must stay as they were returned."""
    p = BASE.replace(attenuation_db=0.0)
    span = SECOND_PS // 1000
    fresh = LinkGenerator(p)
    expected = [
        tuple(a.copy() for a in fresh.generate(p, m * span, (m + 1) * span)) for m in range(8)
    ]
    gen = LinkGenerator(p)
    kept = []
    for m in range(8):
        ts, ch = gen.generate(p, m * span, (m + 1) * span)
        if m % 3 == 0:
            kept.append((m, ts, ch))  # whole results
        elif m % 3 == 1:
            kept.append((m, ts[5:50], None))  # a view of the timestamps only
        del ts, ch  # the rest is dropped: its arrays may be reused
    for m, ts, ch in kept:
        assert len(expected[m][0]) > 50
        if ch is None:
            assert (ts == expected[m][0][5:50]).all()
        else:
            assert (ts == expected[m][0]).all() and (ch == expected[m][1]).all()


def test_loss_of_sync_and_parameter_changes_are_deterministic():
    """Sync off removes channel 0 only; a call sequence with parameter changes between calls
    (sync loss, attenuation step, temperature) gives the same tags when repeated."""
    steps = [
        (BASE, 0, 10**8),
        (BASE.replace(sync_enabled=False), 10**8, 2 * 10**8),
        (BASE.replace(attenuation_db=20.0, temperature_c=(-10.0,) * 4), 2 * 10**8, 3 * 10**8),
    ]

    def sequence():
        gen = LinkGenerator(BASE)
        return [gen.generate(p, a, b) for p, a, b in steps]

    first, second = sequence(), sequence()
    for (ts1, ch1), (ts2, ch2) in zip(first, second, strict=True):
        assert (ts1 == ts2).all() and (ch1 == ch2).all()
    assert np.sum(first[0][1] == 0) == 10**8 // PERIOD_PS // BASE.sync_divider
    assert np.sum(first[1][1] == 0) == 0 and np.sum(first[1][1] > 0) > 0
    assert np.sum(first[2][1] == 0) > 0


def test_generate_rejects_time_going_backwards():
    gen = LinkGenerator(BASE)
    gen.generate(BASE, 0, 10**6)
    with pytest.raises(ValueError, match="before the end of the previous call"):
        gen.generate(BASE, 10**5, 10**7)
    ts, _ = gen.generate(BASE, 10**9, 10**9 + 10**6)  # a gap is allowed
    assert (ts >= 10**9).all()


def test_sync_tags_follow_offset_and_drift_phase_continuously():
    from fractions import Fraction

    p = BASE.replace(
        offset_ps=3210,
        drift_ppm=7.0,
        sync_divider=100,
        channel_delay_ps=(55, 0, 0, 0, 0),
        sync_jitter_ps=0.0,  # the exact phase (the jitter has its own test)
    )
    gen = LinkGenerator(p)
    ts, ch = gen.generate(p, 0, 10**8)
    sync = ts[ch == 0]
    i = np.arange(len(sync)) * 100
    period = Fraction(10**12, 10**8) * (1 + Fraction(7, 10**6))
    exact = [3210 + int(n) * period + 55 for n in i]
    # emission times are computed in float64 (error < 1e-6 ps here) and floored to 1 ps: a
    # tag is within (exact - 1, exact] up to that error (it can differ from floor(exact) by one
    # ps when exact is an integer)
    assert all(-1e-6 <= float(x - int(t)) < 1 + 1e-6 for x, t in zip(exact, sync, strict=True))
    assert len(sync) == 10**8 // (100 * 10_000 * (1 + 7e-6)) + 1
    # drift changes at 1e8 ps: the tagger clock keeps its phase, only the rate changes
    p2 = p.replace(drift_ppm=-20.0)
    ts2, ch2 = gen.generate(p2, 10**8, 2 * 10**8)
    sync2 = ts2[ch2 == 0]
    gaps = np.diff(np.concatenate([sync, sync2]))
    new_period = 100 * 10_000 * (1 - 20e-6)
    assert np.abs(gaps[len(sync) :] - new_period).max() <= 1.0
    assert abs(gaps[len(sync) - 1] - 100 * 10_000 * (1 + 7e-6)) <= 1.0  # no jump at the change


def test_sync_jitter_has_configured_standard_deviation_and_keeps_chunking():
    """Sync tags around their nominal times (zero drift, integer period, 1 ps resolution):
    floor(sigma g) has variance sigma^2 + 1/12; the sample variance of n values has standard
    deviation sigma_v^2 sqrt(2/(n-1)), tolerance 5 of those. Jittered syncs near a span's end
    land in the right span: cutting the link time anywhere gives the same tags."""
    sigma = 25.0
    p = BASE.replace(sync_divider=100, sync_jitter_ps=sigma, offset_ps=400)
    sync_period = 100 * PERIOD_PS
    ts, ch = run(p, SECOND_PS // 100)
    sync = ts[ch == 0]
    r = sync - 400 - np.arange(len(sync)) * sync_period
    var = sigma**2 + 1 / 12
    n = len(r)
    assert n == SECOND_PS // 100 // sync_period
    assert abs(r.var(ddof=1) - var) < 5 * var * math.sqrt(2 / (n - 1))
    assert abs(r.mean() + 0.5) < 5 * math.sqrt(var / n)  # floor shifts the mean by -1/2 ps
    assert np.abs(r).max() <= 8 * sigma + 1  # truncated at 8 sigma
    # cut points right at sync tags (before, at and after a jittered tag's time)
    t = [int(x) for x in sync[[10, 500, 501, 2000]]]
    cuts = [0, t[0] - 1, t[0], t[1] + 1, t[2], t[3] - 50, t[3] + 50, SECOND_PS // 100]
    gen = LinkGenerator(p)
    parts = [gen.generate(p, a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    assert (np.concatenate([x for x, _ in parts]) == ts).all()
    assert (np.concatenate([c for _, c in parts]) == ch).all()
    with pytest.raises(ValueError, match="sync_jitter_ps"):
        physics.validate(p.replace(sync_divider=1, sync_jitter_ps=400.0))  # 32 sigma > 10 ns


def test_pulse_choices_frequencies():
    """Class, basis and disclosure frequencies over 1e6 pulses: multinomial counts, 5 sigma."""
    n = 10**6
    basis, cls, bit, disc = physics.pulse_choices(4, (0.7, 0.2, 0.1), 0.9, 0.1, np.arange(n))
    for c, pc in enumerate((0.7, 0.2, 0.1)):
        assert abs(np.sum(cls == c) - n * pc) < 5 * math.sqrt(n * pc * (1 - pc))
    assert abs(np.sum(basis == 0) - 0.9 * n) < 5 * math.sqrt(n * 0.09)
    assert abs(np.sum(bit) - 0.5 * n) < 5 * math.sqrt(n * 0.25)
    # class, basis and bit come from separate bit fields of one hash: their joint law is the
    # product (each of the 12 cells binomial, 5 sigma)
    for c, pc in enumerate((0.7, 0.2, 0.1)):
        for b, pb in enumerate((0.9, 0.1)):
            for v in (0, 1):
                pj = pc * pb * 0.5
                got = np.sum((cls == c) & (basis == b) & (bit == v))
                assert abs(got - n * pj) < 5 * math.sqrt(n * pj * (1 - pj)), (c, b, v)
    assert disc[basis == 1].all()
    nz = int(np.sum(basis == 0))
    assert abs(np.sum(disc[basis == 0]) - 0.1 * nz) < 5 * math.sqrt(nz * 0.09)


def test_default_bench_gives_large_signal_blocks():
    """Metro default at 10 dB: the expected signal-class Z-basis sifted count in 3 s of link
    time is in the 1e6-1e7 range asked for finite-key blocks."""
    p = LinkParams()
    q = physics.expected_detection_probability(p, 0)
    n_z = p.clock_hz * 3 * p.p_mu[0] * q * p.p_z * p.p_z_bob
    assert 1e6 < n_z < 1e8


def test_invalid_parameters_name_the_field():
    with pytest.raises(ValueError, match=r"LinkParams.p_mu=.*sum to 1"):
        physics.validate(LinkParams(p_mu=(0.5, 0.2, 0.2)))
    with pytest.raises(ValueError, match=r"LinkParams.efficiency"):
        LinkGenerator(LinkParams(efficiency=(1.2, 0.2, 0.2, 0.2)))


def test_pattern_seed_keys_the_source_and_seed_the_channel():
    """The source's choices follow pattern_seed alone: the same channel seed with another
    pattern seed gives other tags; a pattern seed of None falls back to the channel seed (in
    process only: the Emulator always draws one)."""
    p = LinkParams(attenuation_db=0.0, pattern_seed=5)
    total = SECOND_PS // 2000
    a = run(p, total)[0]
    assert np.array_equal(a, run(p, total)[0])
    b = run(p.replace(pattern_seed=6), total)[0]
    assert len(a) != len(b) or (a != b).any()
    same = run(p.replace(pattern_seed=p.seed), total)[0]
    assert np.array_equal(same, run(p.replace(pattern_seed=None), total)[0])
    assert "pattern_seed" not in repr(p)  # nor in a traceback's locals
    with pytest.raises(ValueError, match="pattern_seed") as e:
        physics.validate(p.replace(pattern_seed=-12345))
    assert "12345" not in str(e.value)  # a secret is not repeated in an error


def test_source_answers_are_those_of_emission():
    """The generator records the source settings each pulse was emitted with: answers never
    change once a pulse is emitted (a later disclosure fraction or basis probability does not
    reach it), and pulses not emitted yet are marked so."""
    p = LinkParams(pattern_seed=11, disclose_fraction=0.1)
    gen = LinkGenerator(p)
    gen.generate(p, 0, SECOND_PS // 1000)
    end = gen.emitted_to
    idx = np.arange(0, end, 7, dtype=np.int64)
    b, k, v, d, emitted = gen.source_answers(idx)
    assert emitted.all()
    exp = physics.pulse_choices(11, p.p_mu, p.p_z, 0.1, idx)
    for got, want in zip((b, k, v, d), exp, strict=True):
        assert np.array_equal(got, want)
    wider = p.replace(disclose_fraction=1.0, p_z=0.0)  # every pulse X, every bit disclosed
    gen.generate(wider, SECOND_PS // 1000, SECOND_PS // 500)
    again = gen.source_answers(idx)
    for got, want in zip(again[:4], exp, strict=True):
        assert np.array_equal(got, want)
    later = np.arange(end, gen.emitted_to, 7, dtype=np.int64)
    b2, _, _, d2, e2 = gen.source_answers(later)
    assert e2.all() and (b2 == 1).all() and d2.all()  # emitted with the wider settings
    ahead = gen.source_answers(np.arange(gen.emitted_to, gen.emitted_to + 5))
    assert not ahead[4].any()
