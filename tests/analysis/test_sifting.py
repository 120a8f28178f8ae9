"""Tests of hil.analysis.sifting: the numba kernel against the numpy reference, the squashing
convention on hand-built multi-clicks, and QBER recovery from synthetic answers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import reference as ref

from hil.analysis import _kernels as k
from hil.analysis import _simd, sifting

SEED = 12345
# the counting kernels: the scalar one, and the one with the AVX-512 fast path if the CPU has it
KERNELS = [k.sift_counts] + ([k.sift_counts_simd] if _simd.AVAILABLE else [])


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def answers_for(rng, pulses, p_z=0.5):
    """One answer per distinct pulse (as the source gives), looked up for every row."""
    uniq, inv = np.unique(pulses, return_inverse=True)
    basis = (rng.random(len(uniq)) >= p_z).astype(np.uint8)
    cls = rng.choice(np.array([0, 1, 2], np.uint8), len(uniq), p=[0.7, 0.2, 0.1])
    bit = rng.integers(0, 2, len(uniq)).astype(np.uint8)
    bit[(basis == 0) & (rng.random(len(uniq)) > 0.3)] = 255
    return basis[inv], cls[inv], bit[inv]


def test_splitmix_kernel_matches_numpy_and_python(rng):
    pulses = np.concatenate([rng.integers(0, 2**62, 200), [0, 1, 2**63 - 1]])
    for seed in (0, 1, 2**63 - 5):
        for salt in (0, 1):
            got = [k.splitmix_bit(seed, int(p), salt) for p in pulses]
            np.testing.assert_array_equal(got, ref.splitmix_bit(seed, pulses, salt))
            assert got == [ref.splitmix_bit_python(seed, int(p), salt) for p in pulses]


@pytest.mark.parametrize("n_rows, n_pulses", [(0, 1), (1, 5), (500, 300), (3000, 100_000)])
def test_kernel_matches_reference(rng, n_rows, n_pulses):
    for _ in range(5):
        pulse = np.sort(rng.integers(-1, n_pulses, n_rows))  # dense range: many multi-clicks
        ch = rng.integers(1, 5, n_rows).astype(np.uint8)
        basis, cls, bit = answers_for(rng, pulse)
        exp = ref.sift_counts(pulse, ch, basis, cls, bit, SEED)
        for kernel in KERNELS:
            got = kernel(pulse, ch, basis, cls, bit, SEED)
            for g, e in zip(got[:4], exp, strict=True):
                np.testing.assert_array_equal(g, e)
            assert got[4] == -1
            if len(np.unique(pulse[pulse >= 0])) > 1:  # reversed order is unsorted
                assert kernel(pulse[::-1], ch, basis, cls, bit, SEED)[4] == -2


def test_unsorted_input_and_one_channel_only(rng):
    pulse = rng.integers(-1, 200, 400)
    for channel_set in ([1, 2, 3, 4], [3]):
        ch = rng.choice(np.array(channel_set, np.uint8), len(pulse))
        basis, cls, bit = answers_for(rng, pulse)
        got = sifting.sift(pulse, ch, basis, cls, bit, seed=SEED)
        n, d, m, stats = ref.sift_counts(pulse, ch, basis, cls, bit, SEED)
        np.testing.assert_array_equal(got.n, n)
        np.testing.assert_array_equal(got.d, d)
        np.testing.assert_array_equal(got.m, m)
        assert [
            got.n_unassigned,
            got.n_multi_click,
            got.n_cross_basis,
            got.n_conflicting,
            got.n_basis_mismatch,
        ] == stats.tolist()
    assert got.n_z.sum() == 0  # only channel 3 (D, X basis) clicked in the last round


def test_empty_input():
    e = np.empty(0, np.uint8)
    res = sifting.sift(np.empty(0, np.int64), e, e, e, e)
    assert res.n.shape == (2, 3) and res.n.sum() == 0 and np.isnan(res.qber_z)
    assert np.all(np.isnan(res.qber))


def test_squashing_convention_on_hand_built_multi_clicks():
    # pulse: clicks (channels)      source answer (basis, class, bit)
    # 10: H + V  (Z, conflicting)   Z, 0, 0 disclosed
    # 20: H + D  (cross-basis)      Z, 1, 1 disclosed
    # 30: H + H  (same detector)    Z, 2, 0 disclosed -> no conflict, no error
    # 40: A      (single)           Z, 0, 255 -> basis mismatch
    # -1: D      (outside gates)    answers ignored
    pulse = np.array([10, 10, 20, 20, 30, 30, 40, -1])
    ch = np.array([1, 2, 1, 3, 1, 1, 4, 3], np.uint8)
    basis = np.array([0, 0, 0, 0, 0, 0, 0, 0], np.uint8)
    cls = np.array([0, 0, 1, 1, 2, 2, 0, 0], np.uint8)
    bit = np.array([0, 0, 1, 1, 0, 0, 255, 0], np.uint8)
    res = sifting.sift(pulse, ch, basis, cls, bit, seed=SEED)
    bit10 = ref.splitmix_bit_python(SEED, 10, 1)  # random bit for the H+V conflict
    basis20 = ref.splitmix_bit_python(SEED, 20, 0)  # random basis for H+D
    n = np.zeros((2, 3), int)
    d = np.zeros((2, 3), int)
    m = np.zeros((2, 3), int)
    n[0, 0] = d[0, 0] = 1
    m[0, 0] = int(bit10 != 0)
    if basis20 == 0:  # kept H: bit 0 against source bit 1 -> error
        n[0, 1] = d[0, 1] = m[0, 1] = 1
    n[0, 2] = d[0, 2] = 1
    np.testing.assert_array_equal(res.n, n)
    np.testing.assert_array_equal(res.d, d)
    np.testing.assert_array_equal(res.m, m)
    assert res.n_multi_click == 3 and res.n_cross_basis == 1 and res.n_conflicting == 1
    assert res.n_unassigned == 1
    assert res.n_basis_mismatch == 1 + int(basis20 == 1)


def test_cross_basis_squash_is_fair(rng):
    n_pulses = 20_000
    pulse = np.repeat(np.arange(n_pulses), 2)
    ch = np.tile(np.array([2, 4], np.uint8), n_pulses)  # V + A on every pulse
    basis = np.zeros(2 * n_pulses, np.uint8)  # source always Z, so matched = squashed to Z
    res = sifting.sift(pulse, ch, basis, basis, np.full(2 * n_pulses, 255, np.uint8), seed=3)
    assert res.n_cross_basis == n_pulses
    # kept-Z count is Binomial(n, 1/2): 5 sigma = 5 sqrt(n / 4)
    assert abs(res.n_z[0] - n_pulses / 2) < 5 * np.sqrt(n_pulses / 4)


def test_qber_recovered_from_synthetic_answers(rng):
    n_det = 400_000
    e_true = np.array([0.03, 0.06])  # error rate per basis (Z, X)
    pulse = np.sort(rng.choice(10**9, n_det, replace=False))  # single clicks only
    a_basis = (rng.random(n_det) < 0.5).astype(np.uint8)  # 0 = Z half the time
    cls = rng.choice(np.array([0, 1, 2], np.uint8), n_det, p=[0.6, 0.3, 0.1])
    a_bit = rng.integers(0, 2, n_det).astype(np.uint8)
    b_basis = rng.integers(0, 2, n_det).astype(np.uint8)  # passive basis choice
    flip = rng.random(n_det) < e_true[b_basis]
    b_bit = np.where(b_basis == a_basis, a_bit ^ flip, rng.integers(0, 2, n_det)).astype(np.uint8)
    ch = (1 + 2 * b_basis + b_bit).astype(np.uint8)
    disclosed = (a_basis == 1) | (rng.random(n_det) < 0.1)  # X all, Z a 10 % sample
    answer_bit = np.where(disclosed, a_bit, 255).astype(np.uint8)
    res = sifting.sift(pulse, ch, a_basis, cls, answer_bit, seed=SEED)

    # exact counts from the synthetic truth
    match = a_basis == b_basis
    for b in (0, 1):
        for c in (0, 1, 2):
            sel = match & (a_basis == b) & (cls == c)
            assert res.n[b, c] == np.count_nonzero(sel)
            assert res.d[b, c] == np.count_nonzero(sel & disclosed)
            assert res.m[b, c] == np.count_nonzero(sel & disclosed & flip)
    assert res.n_basis_mismatch == np.count_nonzero(~match) and res.n_multi_click == 0

    # statistical recovery: m is Binomial(d, e), so QBER has sigma sqrt(e (1 - e) / d); 5 sigma
    for b in (0, 1):
        for c in (0, 1, 2):
            sigma = np.sqrt(e_true[b] * (1 - e_true[b]) / res.d[b, c])
            assert abs(res.qber[b, c] - e_true[b]) < 5 * sigma
    sigma_z = np.sqrt(e_true[0] * (1 - e_true[0]) / res.d[0].sum())
    assert abs(res.qber_z - e_true[0]) < 5 * sigma_z
    np.testing.assert_array_equal(res.m_x, res.m[1])


def test_result_holds_counts_only():
    # no per-detection arrays (that could carry key bits) in the result: only [2, 3] or scalars
    pulse = np.arange(6)
    ch = np.array([1, 2, 1, 2, 3, 4], np.uint8)
    zeros = np.zeros(6, np.uint8)
    res = sifting.sift(pulse, ch, zeros, zeros, np.full(6, 255, np.uint8))
    for f in dataclasses.fields(res):
        v = getattr(res, f.name)
        assert isinstance(v, int) or v.shape == (2, 3), f.name
    assert res.d.sum() == 0 and res.n[0, 0] == 4


@pytest.mark.parametrize(
    "column, value",
    [("ch", 0), ("ch", 5), ("basis", 2), ("cls", 3), ("bit", 2)],
)
def test_invalid_rows_give_one_clear_error(column, value):
    cols = {
        "pulse": np.array([3, 4, 5]),
        "ch": np.array([1, 2, 3], np.uint8),
        "basis": np.zeros(3, np.uint8),
        "cls": np.zeros(3, np.uint8),
        "bit": np.array([0, 1, 255], np.uint8),
    }
    cols[column][1] = value
    with pytest.raises(ValueError, match=r"^detection for pulse 4: channel") as err:
        sifting.sift(cols["pulse"], cols["ch"], cols["basis"], cols["cls"], cols["bit"])
    assert "\n" not in str(err.value)


def test_answers_outside_uint8_are_refused_not_wrapped():
    pulse = np.array([1, 2])
    ch = np.array([1, 3], np.uint8)
    ok = np.zeros(2, np.uint8)
    with pytest.raises(ValueError, match="intensity must hold uint8 values"):
        sifting.sift(pulse, ch, ok, np.array([0, 256]), ok)


def test_unassigned_rows_inside_runs_of_single_clicks(rng):
    """Unassigned rows (-1, where assign_pulses leaves detections outside every gate) at
    random inside long runs of single clicks, alone and in runs, as the fast paths take
    them; and two clicks of one pulse with an unassigned row between them, which only the
    sorted input groups (the kernels report -2, sifting.sift sorts and counts again)."""
    n = 30_000
    pulse = np.cumsum(rng.integers(1, 40, n))
    pulse[rng.random(n) < 0.05] = -1
    pulse[1000:1020] = -1
    ch = rng.integers(1, 5, n).astype(np.uint8)
    basis, cls, bit = answers_for(rng, pulse)
    exp = ref.sift_counts(pulse, ch, basis, cls, bit, SEED)
    assert exp[3][0] == np.count_nonzero(pulse < 0)
    for kernel in KERNELS:
        got = kernel(pulse, ch, basis, cls, bit, SEED)
        assert got[4] == -1
        for g, e in zip(got[:4], exp, strict=True):
            np.testing.assert_array_equal(g, e)
    split = pulse.copy()
    row = int(np.flatnonzero((split[1:-1] >= 0) & (split[2:] >= 0))[5000]) + 1
    split[row + 1], split[row + 2] = -1, split[row]  # pulse p, -1, p
    for kernel in KERNELS:
        assert kernel(split, ch, basis, cls, bit, SEED)[4] == -2
    got = sifting.sift(split, ch, basis, cls, bit, seed=SEED)
    order = np.argsort(split, kind="stable")
    n_exp, d_exp, m_exp, stats = ref.sift_counts(
        split[order], ch[order], basis[order], cls[order], bit[order], SEED
    )
    np.testing.assert_array_equal(got.n, n_exp)
    np.testing.assert_array_equal(got.m, m_exp)
    assert got.n_multi_click == stats[1] >= 1


def test_long_single_click_runs_with_interruptions(rng):
    """The kernel's fast path (single clicks, four histogram copies) and its hand-over to the
    general path: long runs of single clicks broken by unassigned rows at their stream
    positions (as assign_pulses leaves them), multi-clicks and the last row, against the
    reference; an invalid row deep inside a run is reported by its own row number."""
    n = 20_000
    pulse = np.cumsum(rng.integers(1, 50, n))
    pulse = np.sort(np.concatenate([pulse, rng.choice(pulse, 30, replace=False)]))  # 30 doubles
    # unassigned rows where the stream had them, between ascending pulses
    pulse = np.insert(pulse, rng.choice(len(pulse), 40, replace=False), -1)
    ch = rng.integers(1, 5, len(pulse)).astype(np.uint8)
    basis, cls, bit = answers_for(rng, pulse)
    exp = ref.sift_counts(pulse, ch, basis, cls, bit, SEED)
    assert exp[3][0] == 40 and exp[3][1] == 30
    for kernel in KERNELS:
        got = kernel(pulse, ch, basis, cls, bit, SEED)
        assert got[4] == -1  # -1 rows between ascending pulses are not an unsorted input
        for g, e in zip(got[:4], exp, strict=True):
            np.testing.assert_array_equal(g, e)
        # an invalid channel, basis, class or bit on a single click deep inside a run, at
        # several offsets (the vector kernel's 16-row blocks fall anywhere among them)
        single = np.flatnonzero(
            (pulse[1:-1] >= 0) & (pulse[2:] > pulse[1:-1]) & (pulse[:-2] < pulse[1:-1])
        )
        for column in range(4):
            for row in single[12_345:12_362:4] + 1:
                bad = [ch, basis, cls, bit][column].copy()
                bad[row] = 7
                args = [ch, basis, cls, bit]
                args[column] = bad
                assert kernel(pulse, *args, SEED)[4] == row
