"""Numba kernels of the link physics: counter-based random numbers, pulse choices, detection
sampling, dark counts and the detector dead-time/afterpulse state machine.

Every random number is a hash of (seed, stream, counter) so that a pulse's fate does not depend
on how the link time was cut into chunks. Plain reference versions live in
tests/emulator/physics_reference.py and the tests compare both.
"""

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

# splitmix64 constants (Steele, Lea, Flood, "Fast splittable pseudorandom number generators",
# OOPSLA 2014; finaliser constants from Vigna's splitmix64.c): a bijective 64-bit mixer whose
# output passes BigCrush when fed a counter.
GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_ONE = np.uint64(1)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53

# Streams: one independent hash family per random decision. Keep these numbers stable: changing
# one changes every emulated capture made with a given seed.
STREAM_SOURCE = 1  # class, basis and bit of a pulse, from bit fields of one hash
# 2: retired (was the basis/bit stream)
STREAM_DISCLOSE = 3
STREAM_EVE = 4  # whether Eve acts on a pulse, her basis and her random bit
# 5: retired (was Eve's choices)
STREAM_ACCEPT = 6
STREAM_PATTERN = 7  # 7..10: reserved (was one per detector)
STREAM_JITTER = 11  # 11..14, one per detector
STREAM_BLOCK = 15
STREAM_DARK_COUNT = 16  # 16..19
STREAM_DARK_TIME = 20  # 20..23
STREAM_AP_PROB = 24  # 24..27
STREAM_AP_DELAY = 28  # 28..31
STREAM_SYNC_JITTER = 32

JITTER_CLIP_SIGMA = 8.0  # Gaussian jitter truncated at 8 sigma (probability 1e-15 per click)
BLOCK_PULSES = 1 << 16  # geometric-skip blocks: the skip sequence restarts at each block start
DARK_SLOT_PS = 1 << 26  # dark counts are drawn per fixed 67.1 us slot of link time
_POISSON_PIECE = 30.0  # Poisson inversion on pieces of mean <= 30 (no exp underflow)


@njit(cache=True, nogil=True)
def mix64(z):
    """splitmix64 finaliser of a uint64."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, nogil=True)
def stream_key(seed, stream):
    """Key of one random stream: a hash of the user seed and the stream number."""
    return mix64(np.uint64(seed) * GAMMA + np.uint64(stream))


@njit(cache=True, nogil=True)
def counter_mix(index):
    """First mixing stage of a counter (pulse index, slot, time); shared by all streams."""
    return mix64(np.uint64(index) * GAMMA + GAMMA)


@njit(cache=True, nogil=True)
def keyed(key, cmix):
    """Hash of a stream key and a pre-mixed counter."""
    return mix64(key ^ cmix)


@njit(cache=True, nogil=True)
def u01(h):
    """Uniform double in [0, 1) from the top 53 bits of a hash."""
    # via int64 (exact: < 2**53): a signed conversion is one instruction, an unsigned one a
    # longer sequence on most x86 targets
    return np.float64(np.int64(h >> _S11)) * _INV53


def _bitcast(source, target, doc):
    """A numba intrinsic reinterpreting a ``source`` value's bits as ``target`` (a register
    move, no conversion)."""

    def typer(typingctx, x):
        if x != source:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(target))

        return target(source), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


_f64_bits = _bitcast(types.float64, types.int64, "Bit pattern of a float64 as an int64.")
_bits_f64 = _bitcast(types.int64, types.float64, "The float64 with the given int64 bit pattern.")


_S32 = np.uint64(32)
_M31 = np.uint64((1 << 31) - 1)
_INV32 = 1.0 / float(1 << 32)
_INV31 = 1.0 / float(1 << 31)
_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
_MANT = np.int64((1 << 52) - 1)
_EXP_ONE = np.int64(1023 << 52)
_S52I = np.int64(52)
# ln m = 2 (s + s^3/3 + s^5/5 + ...), s = (m - 1) / (m + 1) (NIST DLMF eq. 4.6.4); for m in
# [1/sqrt2, sqrt2], |s| <= 0.1716 and the terms after s^13 add less than 5e-13.
_L3, _L5, _L7, _L9, _L11, _L13 = 2 / 3, 2 / 5, 2 / 7, 2 / 9, 2 / 11, 2 / 13


@njit(cache=True, nogil=True, error_model="numpy")
def exp_from_hash(h):
    """Exponential(1) variate -ln(u) of u = (2 (h >> 12) + 1) 2**-53, uniform in (0, 1).

    Absolute error < 5e-13 against the exact logarithm. Only multiplications, one division and
    bit operations: unlike a call to log, a loop of these vectorises."""
    x = np.float64(np.int64(h >> _S12) * 2 + 1)  # odd integer < 2**53: exact
    bits = _f64_bits(x)
    e = (bits >> _S52I) - 1023  # x = 2**e m, m in [1, 2)
    m = _bits_f64((bits & _MANT) | _EXP_ONE)
    big = m > _SQRT2  # centre m on 1: m in [1/sqrt2, sqrt2]
    m = m * 0.5 if big else m
    e += np.int64(big)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    p = (((((_L13 * z + _L11) * z + _L9) * z + _L7) * z + _L5) * z + _L3) * z + 2.0
    return np.float64(53 - e) * _LN2 - s * p


# Inverse of the standard normal CDF: Acklam's rational approximation (P. J. Acklam, "An
# algorithm for computing the inverse normal cumulative distribution function", 2003; relative
# error < 1.15e-9). One division instead of Box-Muller's log, sqrt and cos for most draws.
_NA = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
)
_NB = (
    -5.447609879822406e01,
    1.615858368580409e02,
    -1.556989798598866e02,
    6.680131188771972e01,
    -1.328068155288572e01,
)
_NC = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549732539343734e00,
    4.374664141464968e00,
    2.938163982698783e00,
)
_ND = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425


@njit(cache=True, nogil=True)
def norm_ppf(p):
    """Standard normal quantile of p in (0, 1)."""
    if p < _P_LOW:
        q = math.sqrt(-2.0 * math.log(p))
        return (((((_NC[0] * q + _NC[1]) * q + _NC[2]) * q + _NC[3]) * q + _NC[4]) * q + _NC[5]) / (
            (((_ND[0] * q + _ND[1]) * q + _ND[2]) * q + _ND[3]) * q + 1.0
        )
    if p > 1.0 - _P_LOW:
        q = math.sqrt(-2.0 * math.log(1.0 - p))
        return -(
            ((((_NC[0] * q + _NC[1]) * q + _NC[2]) * q + _NC[3]) * q + _NC[4]) * q + _NC[5]
        ) / ((((_ND[0] * q + _ND[1]) * q + _ND[2]) * q + _ND[3]) * q + 1.0)
    q = p - 0.5
    r = q * q
    return (
        (((((_NA[0] * r + _NA[1]) * r + _NA[2]) * r + _NA[3]) * r + _NA[4]) * r + _NA[5])
        * q
        / (((((_NB[0] * r + _NB[1]) * r + _NB[2]) * r + _NB[3]) * r + _NB[4]) * r + 1.0)
    )


# Normal quantiles at k / 4096 (k = 1..4095) for table lookup. Linear interpolation inside a
# cell is accurate to < 1.5e-4 sigma for cells 16..4079 (|z| < 2.67); the 16 outermost cells on
# each side (probability 1/128), where the quantile curves strongly, use the rational formula.
_GAUSS_BITS = 12
_GAUSS_CELLS = 1 << _GAUSS_BITS
_GAUSS_EDGE = 16
_GAUSS_TABLE = np.zeros(_GAUSS_CELLS + 1)
for _k in range(1, _GAUSS_CELLS):
    _GAUSS_TABLE[_k] = norm_ppf.py_func(_k / _GAUSS_CELLS)
_S52 = np.uint64(64 - _GAUSS_BITS)
_GAUSS_EDGE_U = np.uint64(_GAUSS_EDGE)
_GAUSS_HI_U = np.uint64(_GAUSS_CELLS - _GAUSS_EDGE)
_FRAC_MASK = np.uint64((1 << 40) - 1)
_S12 = np.uint64(12)
_INV40 = 1.0 / float(1 << 40)
_INV52 = 1.0 / float(1 << 52)


@njit(cache=True, nogil=True)
def gauss_from_hash(h):
    """Standard normal variate from a hash, truncated at JITTER_CLIP_SIGMA.

    The top 12 bits pick a cell of the probability axis, 40 further bits the position in it:
    the quantile is interpolated from _GAUSS_TABLE, or computed by norm_ppf in the outer cells
    (where it curves strongly and diverges)."""
    cell = h >> _S52  # unsigned: indexes the table without a negative-index fix-up
    if cell < _GAUSS_EDGE_U or cell >= _GAUSS_HI_U:
        g = norm_ppf((np.float64(np.int64(h >> _S12)) + 0.5) * _INV52)  # inside (0, 1)
    else:
        f = np.float64(np.int64((h >> _S12) & _FRAC_MASK)) * _INV40
        g = _GAUSS_TABLE[cell] + f * (_GAUSS_TABLE[cell + _ONE] - _GAUSS_TABLE[cell])
    return min(max(g, -JITTER_CLIP_SIGMA), JITTER_CLIP_SIGMA)


@njit(cache=True, nogil=True)
def source_choice(h, c0, c1, p_z):
    """(intensity class, basis, bit) of a pulse from its STREAM_SOURCE hash h.

    Independent bit fields: the top 32 bits are the class uniform (resolution 2**-32), the next
    31 bits the basis uniform (2**-31), the lowest bit the bit value."""
    uc = np.float64(np.int64(h >> _S32)) * _INV32
    ub = np.float64(np.int64((h >> _ONE) & _M31)) * _INV31
    cls = np.int64(uc >= c0) + np.int64(uc >= c1)
    return cls, np.int64(ub >= p_z), np.int64(h & _ONE)


@njit(cache=True, nogil=True)
def pulse_choices_kernel(seed, c0, c1, p_z, disclose_fraction, indices):
    """Basis, intensity class, bit and disclosure flag of each pulse index (see physics.py)."""
    n = indices.shape[0]
    basis = np.empty(n, np.uint8)
    intensity = np.empty(n, np.uint8)
    bit = np.empty(n, np.uint8)
    disclosed = np.empty(n, np.bool_)
    k_src = stream_key(seed, STREAM_SOURCE)
    k_dis = stream_key(seed, STREAM_DISCLOSE)
    for m in range(n):
        cm = counter_mix(indices[m])
        cls, b, v = source_choice(keyed(k_src, cm), c0, c1, p_z)
        intensity[m] = cls
        basis[m] = b
        bit[m] = v
        disclosed[m] = b == 1 or u01(keyed(k_dis, cm)) < disclose_fraction
    return basis, intensity, bit, disclosed


@njit(cache=True, nogil=True)
def nominal_time(i, anchor_i, tau0_int, tau0_frac, p_int, p_rest):
    """Tagger time (ps) of pulse i's emission as (integer part, fraction in [0, 1)).

    t = tau0 + (i - anchor_i) * (p_int + p_rest): the integer period part stays exact in int64,
    the small remainder (fractional period and drift) is carried in float64."""
    d = i - anchor_i
    frac = tau0_frac + d * p_rest
    fl = math.floor(frac)
    return tau0_int + d * p_int + np.int64(fl), frac - fl


@njit(cache=True, nogil=True)
def click_pattern_tables(mu, tj):
    """Click-pattern distribution of one pulse window, per intensity class c and state s.

    A coherent pulse has a Poisson photon number; independent losses split it into independent
    Poisson numbers per detector (thinning), so detector j clicks with probability
    1 - exp(-mu_c tj[s, j]) independently of the others (Ma et al., PRA 72, 012326 (2005),
    Sec. II; the same splitting applied to each of the four detectors).
    Returns order[c, s, m]: the 15 non-empty patterns (bit j = detector j) by decreasing
    probability, cum[c, s, m]: their running sum (cum[c, s, 14] = P(at least one click))."""
    order = np.zeros((3, 4, 15), np.int64)
    cum = np.zeros((3, 4, 15))
    pr = np.empty(15)
    for c in range(3):
        for s in range(4):
            for pat in range(1, 16):
                q = 1.0
                for j in range(4):
                    pj = -math.expm1(-mu[c] * tj[s, j])
                    q *= pj if (pat >> j) & 1 else 1.0 - pj
                pr[pat - 1] = q
            idx = np.argsort(-pr, kind="mergesort")  # stable: ties keep pattern order
            run = 0.0
            for m in range(15):
                order[c, s, m] = idx[m] + 1
                run += pr[idx[m]]
                cum[c, s, m] = run
    return order, cum


_BATCH = 2048
_GUIDE_CELLS = 256
_BLOCK_F = float(BLOCK_PULSES)
# detectors of each click pattern (bit j = detector j), ascending: _PAT_N[p] of them
_PAT_N = np.array([bin(p).count("1") for p in range(16)], np.int64)
_PAT_DET = np.zeros((16, 4), np.int64)
for _p in range(16):
    _dets = [j for j in range(4) if (_p >> j) & 1]
    _PAT_DET[_p, : len(_dets)] = _dets
_PAT_DET_F = _PAT_DET.ravel().copy()
_U3 = np.uint64(3)
_U4 = np.uint64(4)
_U15 = np.uint64(15)


@njit(cache=True, nogil=True, error_model="numpy")
def _guide_table(cum, p_c):
    """guide[c, k]: how many running sums of row c lie below cell k's lower edge k p_c / cells
    (made slightly lower, so that float rounding of the cell index never overshoots)."""
    guide = np.zeros((cum.shape[0], _GUIDE_CELLS + 1), np.int64)
    for c in range(cum.shape[0]):
        j = 0
        for k in range(_GUIDE_CELLS + 1):
            edge = k * p_c / _GUIDE_CELLS * (1.0 - 1e-9)
            while j < 14 and cum[c, j] <= edge:
                j += 1
            guide[c, k] = j
    return guide


@njit(cache=True, nogil=True, error_model="numpy")
def signal_tables(order, cum):
    """The tables signal_detections works from, computed once per parameter set from
    click_pattern_tables' (order, cum): rows c = 4 class + state of patterns and running sums,
    P(any click) per row, the guide table of the pattern search, and p_c = max P(any click)."""
    order2 = np.ascontiguousarray(order).reshape((12, 15))
    cum2 = np.ascontiguousarray(cum).reshape((12, 15))
    cum_any = cum2[:, 14].copy()
    p_c = cum_any.max()
    guide = _guide_table(cum2, p_c if p_c > 0.0 else 1.0)
    return order2, cum2, cum_any, guide, p_c


@njit(cache=True, nogil=True, error_model="numpy")
def _draw_skips(skips, nb, s0, k, inv_neg_log_q):
    """Geometric gaps of draws k + 1 .. k + nb of a block's skip sequence (hash s0)."""
    for j in range(nb):
        e = exp_from_hash(mix64(s0 + np.uint64(k + j + 1) * GAMMA))
        skips[j] = np.int64(min(e * inv_neg_log_q, _BLOCK_F))


@njit(cache=True, nogil=True, error_model="numpy")
def _judge_batch(out, n_out, cand, n, w_cm, w_cs, w_x, w_acc, w_q, w_multi, keys, tabs, prm, tim):
    """Decide a batch of candidate pulses and write the clicks of the kept ones to `out`.

    Loops of independent iterations (hashes and decisions; compaction; click patterns; click
    times), so that the compiler vectorises the first and the CPU overlaps the others."""
    k_src, k_acc, k_eve = keys[0], keys[1], keys[2]
    order, cum, cum_any, guide = tabs
    c0, c1, p_z, p_c, eve_fraction, sigma_ps, tau0_frac, p_rest = prm
    cell_scale = _GUIDE_CELLS / p_c
    # source choices (one hash: class, basis, bit) and the acceptance uniform
    for q in range(n):
        cm = counter_mix(cand[q])
        w_cm[q] = cm
        cls, basis, bit = source_choice(keyed(k_src, cm), c0, c1, p_z)
        w_cs[q] = 4 * cls + 2 * basis + bit
        w_x[q] = u01(keyed(k_acc, cm)) * p_c
    if eve_fraction > 0.0:
        for q in range(n):
            he = keyed(k_eve, w_cm[q])
            if u01(he) < eve_fraction:
                # Intercept-resend: Eve measures in a random basis and resends her result.
                c = w_cs[q]
                basis = (c >> 1) & 1
                eb = np.int64(he & _ONE)
                ebit = (c & 1) if eb == basis else np.int64((he >> _ONE) & _ONE)
                w_cs[q] = (c & ~3) | (2 * eb + ebit)
    # (table lookups with unsigned indices: numba adds no negative-index fix-up to those)
    m = 0
    for q in range(n):
        w_acc[m] = q
        m += np.int64(w_x[q] < cum_any[np.uint64(w_cs[q])])
    # Click patterns: the first running sum above x. The guide table gives a lower bound of
    # that index from the cell of x (indexed search: Chen and Asau, AIIE Trans. 6, 163 (1974);
    # Devroye 1986, Sec. III.2.4), the loop steps up from it: usually no step, since few cells
    # hold a running sum. A click slot holds 4 * candidate + detector; the first detector's
    # slot is written unconditionally, the others only for multi-click patterns (rare).
    guide_f = guide.ravel()
    cum_f = cum.ravel()
    order_f = order.ravel()
    n_cells = np.uint64(guide.shape[1])
    n_exp = 0
    n_multi = 0
    for r in range(m):
        q = w_acc[r]
        c = np.uint64(w_cs[q])
        x = w_x[q]
        j = c * _U15 + np.uint64(guide_f[c * n_cells + np.uint64(x * cell_scale)])
        while cum_f[j] <= x:
            j += _ONE
        pattern = np.uint64(order_f[j])
        w_q[n_exp] = 4 * q + _PAT_DET_F[pattern * _U4]
        n_exp += 1
        if pattern & (pattern - _ONE):  # a multi-click (rare): its further detectors
            # its first slot and click count, to put its clicks in time order below
            w_multi[n_multi] = 8 * (n_exp - 1) + _PAT_N[pattern]
            n_multi += 1
            for e in range(1, _PAT_N[pattern]):
                w_q[n_exp] = 4 * q + _PAT_DET_F[pattern * _U4 + np.uint64(e)]
                n_exp += 1
    anchor_i, tau0_int, p_int = tim
    if p_rest == 0.0:
        # whole-ps period without drift: the emission-time fraction is the same for all pulses
        t_base, t_frac = nominal_time(anchor_i, anchor_i, tau0_int, tau0_frac, p_int, p_rest)
        for e in range(n_exp):
            qd = w_q[e]
            q = np.uint64(qd >> 2)
            g = gauss_from_hash(keyed(keys[_U3 + np.uint64(qd & 3)], w_cm[q]))
            t_int = t_base + (cand[q] - anchor_i) * p_int
            out[n_out + e] = (t_int + np.int64(math.floor(t_frac + sigma_ps * g))) * 4 + (qd & 3)
    else:
        for e in range(n_exp):
            qd = w_q[e]
            q = np.uint64(qd >> 2)
            t_int, t_frac = nominal_time(cand[q], anchor_i, tau0_int, tau0_frac, p_int, p_rest)
            g = gauss_from_hash(keyed(keys[_U3 + np.uint64(qd & 3)], w_cm[q]))
            out[n_out + e] = (t_int + np.int64(math.floor(t_frac + sigma_ps * g))) * 4 + (qd & 3)
    # The clicks of one pulse in time order: jitter reorders them, and across pulses only when
    # it exceeds half a pulse period; so the caller's sort of the stream usually finds it sorted.
    for r in range(n_multi):
        first = n_out + (w_multi[r] >> 3)
        for e in range(first + 1, first + (w_multi[r] & 7)):
            v = out[e]
            h = e
            while h > first and out[h - 1] > v:
                out[h] = out[h - 1]
                h -= 1
            out[h] = v
    return n_out + n_exp


@njit(cache=True, nogil=True, error_model="numpy")
def signal_detections(
    out,
    seed,
    pattern_seed,
    i_lo,
    i_hi,
    tables,
    c0,
    c1,
    p_z,
    eve_fraction,
    sigma_ps,
    anchor_i,
    tau0_int,
    tau0_frac,
    p_int,
    p_rest,
):
    """Detector clicks caused by the light of pulses i_lo <= i < i_hi, as keys t_ps * 4 + detector.

    Candidate pulses are found by geometric skipping with the largest per-pulse click probability
    p_c (the gap between Bernoulli(p) successes is geometric, sampled by inversion: Devroye,
    Non-Uniform Random Variate Generation, 1986); a candidate of class c and state s is kept with
    probability P_any(c, s) / p_c (thinning), so kept pulses are exactly Bernoulli(P_any). The
    same uniform, rescaled, picks the click pattern from the tables of click_pattern_tables
    (`tables`: their signal_tables form). Each pulse's class, basis and bit are keyed on
    `pattern_seed` (the source's secret), every channel decision on `seed`.
    Fills `out` and returns (n written, next pulse index): if `out` fills up, call again from
    that index (the caller's buffer keeps this loop free of reallocation)."""
    order2, cum2, cum_any, guide, p_c = tables
    if p_c <= 0.0 or i_hi <= i_lo:
        return 0, i_hi
    # skip = floor(E / -ln(1 - p_c)), E exponential: the number of failures before a success
    inv_neg_log_q = -1.0 / math.log1p(-p_c) if p_c < 1.0 else 0.0
    keys = np.empty(7, np.uint64)
    # the source's choices come from its own secret pattern seed, the channel's from `seed`
    keys[0] = stream_key(pattern_seed, STREAM_SOURCE)
    keys[1] = stream_key(seed, STREAM_ACCEPT)
    keys[2] = stream_key(seed, STREAM_EVE)
    for j in range(4):
        keys[3 + j] = stream_key(seed, STREAM_JITTER + j)
    k_blk = stream_key(seed, STREAM_BLOCK)
    tabs = (order2, cum2, cum_any, guide)
    prm = (c0, c1, p_z, p_c, eve_fraction, sigma_ps, tau0_frac, p_rest)
    tim = (anchor_i, tau0_int, p_int)
    cand = np.empty(_BATCH, np.int64)
    skips = np.empty(_BATCH, np.int64)
    w_cm = np.empty(_BATCH, np.uint64)
    w_cs = np.empty(_BATCH, np.int64)
    w_x = np.empty(_BATCH)
    w_acc = np.empty(_BATCH, np.int64)
    w_q = np.empty(4 * _BATCH + 4, np.int64)
    w_multi = np.empty(_BATCH, np.int64)
    n_out = 0
    b = i_lo // BLOCK_PULSES - 1
    end = b * BLOCK_PULSES  # no block open yet
    pos = end
    s0 = np.uint64(0)
    k = 0  # draws of the open block's skip sequence made so far
    j = 0  # next unused entry of skips[:nb]
    nb = 0
    block_done = True
    finished = False
    while True:
        # candidates until the batch is full or could overflow `out` (4 clicks at most each)
        limit = min(_BATCH, (out.shape[0] - n_out) // 4)
        n_cand = 0
        while n_cand < limit:
            if j == nb:
                if block_done:
                    b += 1
                    if b * BLOCK_PULSES >= i_hi:
                        finished = True
                        break
                    end = min((b + 1) * BLOCK_PULSES, i_hi)
                    s0 = keyed(k_blk, counter_mix(b))
                    pos = b * BLOCK_PULSES - 1
                    k = 0
                    block_done = False
                # draws for the expected candidates left in the block, plus a margin
                nb = min(
                    _BATCH, np.int64((end - pos) * p_c + 2.0 * math.sqrt((end - pos) * p_c)) + 4
                )
                _draw_skips(skips, nb, s0, k, inv_neg_log_q)
                k += nb
                j = 0
            # A run of the drawn gaps, as positions by a running sum, until the block's end,
            # the batch's room or the draws run out: a short loop whose only branch is the end
            m = min(nb - j, limit - n_cand)
            t = 0
            while t < m:
                nxt = pos + 1 + skips[np.uint64(j + t)]
                if nxt >= end:
                    break
                pos = nxt
                cand[np.uint64(n_cand + t)] = pos
                t += 1
            if t < m:  # draw j + t passed the block's end
                block_done = True
                j = nb
            else:
                j += t
            if t > 0 and cand[np.uint64(n_cand)] < i_lo:
                # the block holding i_lo: candidates before it belong to the caller before
                drop = 0
                while drop < t and cand[np.uint64(n_cand + drop)] < i_lo:
                    drop += 1
                for u in range(t - drop):
                    cand[np.uint64(n_cand + u)] = cand[np.uint64(n_cand + drop + u)]
                t -= drop
            n_cand += t
        n_out = _judge_batch(
            out, n_out, cand, n_cand, w_cm, w_cs, w_x, w_acc, w_q, w_multi, keys, tabs, prm, tim
        )
        if finished:
            return n_out, i_hi
        if out.shape[0] - n_out < 4:
            return n_out, max(i_lo, pos + 1)


@njit(cache=True, nogil=True)
def _poisson_pieces(lam):
    """lam split into pieces of mean <= 30 (a sum of independent Poisson variables is Poisson;
    no exp underflow), and exp(-piece) of each: computed once per rate, not per draw."""
    n_pieces = 0
    remaining = lam
    while remaining > 0.0:
        remaining -= min(remaining, _POISSON_PIECE)
        n_pieces += 1
    pieces = np.empty(n_pieces)
    exps = np.empty(n_pieces)
    remaining = lam
    for k in range(n_pieces):
        lp = min(remaining, _POISSON_PIECE)
        remaining -= lp
        pieces[k] = lp
        exps[k] = math.exp(-lp)
    return pieces, exps


@njit(cache=True, nogil=True)
def _poisson(h, pieces, exps):
    """Poisson(sum of pieces) by sequential inversion (Devroye 1986), piece by piece."""
    n = 0
    for piece in range(pieces.shape[0]):
        lp = pieces[piece]
        u = u01(mix64(h + np.uint64(piece) * GAMMA))
        p = exps[piece]
        cdf = p
        k = 0
        while u > cdf and k < 1000:
            k += 1
            p *= lp / k
            cdf += p
        n += k
    return n


@njit(cache=True, nogil=True)
def dark_detections(out, seed, det, rate_hz, t_lo, t_hi):
    """Dark counts of one detector in [t_lo, t_hi) ps as sorted keys t_ps * 4 + det.

    A homogeneous Poisson process (dark counts of an InGaAs SPAD are Poissonian once dead time
    and afterpulsing are removed) drawn per fixed slot of DARK_SLOT_PS: the count in a slot is
    Poisson(rate * slot) and the times are uniform in it, both hashed from the slot index.
    Fills `out`; returns (n written, time to continue from), the latter < t_hi when `out` is
    full (a slot is written whole or not at all)."""
    n_out = 0
    if rate_hz <= 0.0 or t_hi <= t_lo:
        return 0, t_hi
    pieces, exps = _poisson_pieces(rate_hz * DARK_SLOT_PS * 1e-12)
    k_n = stream_key(seed, STREAM_DARK_COUNT + det)
    k_t = stream_key(seed, STREAM_DARK_TIME + det)
    s_first = t_lo // DARK_SLOT_PS
    s_last = (t_hi - 1) // DARK_SLOT_PS
    for s in range(s_first, s_last + 1):
        cm = counter_mix(s)
        n = _poisson(keyed(k_n, cm), pieces, exps)
        if n == 0:
            continue
        if n_out + n > out.shape[0]:
            return n_out, max(t_lo, s * DARK_SLOT_PS)
        ht = keyed(k_t, cm)
        first = n_out
        for m in range(n):
            t = s * DARK_SLOT_PS + np.int64(
                u01(mix64(ht + np.uint64(m + 1) * GAMMA)) * DARK_SLOT_PS
            )
            if t < t_lo or t >= t_hi:
                continue
            out[n_out] = t * 4 + det
            n_out += 1
        if n_out - first > 1:
            out[first:n_out].sort()
    return n_out, t_hi


@njit(cache=True, nogil=True)
def dark_detections_all(out, seed, rates_hz, t_lo, t_hi):
    """Dark counts of all four detectors in [t_lo, t_hi), merged and sorted, in `out`.
    Returns the number written, or -1 if `out` is too small (call again with a larger one)."""
    n = 0
    for det in range(4):
        m, t_next = dark_detections(out[n:], seed, det, rates_hz[det], t_lo, t_hi)
        if t_next < t_hi:
            return -1
        n += m
    out[:n].sort()
    return n


@njit(cache=True, nogil=True)
def _heap_push(heap, n, key):
    q = n
    heap[q] = key
    while q > 0:
        parent = (q - 1) // 2
        if heap[parent] <= heap[q]:
            break
        heap[parent], heap[q] = heap[q], heap[parent]
        q = parent
    return n + 1


@njit(cache=True, nogil=True)
def heap_push_all(heap, n, keys):
    """Push keys onto the binary min-heap heap[:n] (room needed for all); returns the new n."""
    for m in range(keys.shape[0]):
        n = _heap_push(heap, n, keys[m])
    return n


@njit(cache=True, nogil=True)
def _heap_pop(heap, n):
    top = heap[0]
    n -= 1
    heap[0] = heap[n]
    q = 0
    while True:
        a = 2 * q + 1
        if a >= n:
            break
        c = a
        if a + 1 < n and heap[a + 1] < heap[a]:
            c = a + 1
        if heap[q] <= heap[c]:
            break
        heap[q], heap[c] = heap[c], heap[q]
        q = c
    return top, n


@njit(cache=True, nogil=True)
def register_clicks(
    out,
    keys,
    horizon_ps,
    dead_ps,
    on,
    p_ap,
    tau_ps,
    seed,
    last,
    heap,
    n_heap,
    delays,
    resolution,
    enabled,
):
    """Apply non-paralysable dead time and afterpulsing to time-sorted primary clicks.

    keys: sorted t_ps * 4 + detector, all < horizon_ps * 4. Clicks pending in the binary heap
    `heap[:n_heap]` (afterpulses, and clicks the caller put there: dark counts, clicks past an
    earlier horizon) are merged in time order; those at or after the horizon stay pending.
    A registered click at t makes the detector blind until t + dead (non-paralysable: clicks in
    the blind time are lost and do not extend it; Müller, NIM 112, 47 (1973)). With probability
    p_ap it is followed by an afterpulse at t + dead + Exp(tau) (trap release after re-arming,
    one trap family with exponential release, the simplest of the trap models discussed by
    Korzh et al., arXiv:1411.0653 (2014), who show real InGaAs traps are more complex); the
    afterpulse is itself a click and can be lost to dead time or cause afterpulses.
    last[j] (in/out): time of the last registered click of detector j.
    Registered clicks go through the tagger: channel j + 1, tag time
    floor((t + delays[ch]) / resolution) * resolution, dropped if the channel is disabled; they
    are written to `out` as keys ts * 8 + ch (sorted per channel; across channels only up to
    the delay differences). Returns (n written, keys consumed, n_heap); when `out` is full it
    stops early: call again with keys[consumed:]. The heap needs room for n_heap + len(out)
    entries (one afterpulse at most per registered click)."""
    n = keys.shape[0]
    n_out = 0
    k_ap = np.empty(4, np.uint64)
    k_apd = np.empty(4, np.uint64)
    for j in range(4):
        k_ap[j] = stream_key(seed, STREAM_AP_PROB + j)
        k_apd[j] = stream_key(seed, STREAM_AP_DELAY + j)
    limit = horizon_ps * 4
    i = 0
    while n_out < out.shape[0]:
        if i < n and (n_heap == 0 or keys[i] <= heap[0]):
            key = keys[i]
            i += 1
        elif n_heap > 0 and heap[0] < limit:
            key, n_heap = _heap_pop(heap, n_heap)
        else:
            break
        t = key >> 2
        d = key & 3
        if not on[d]:
            continue
        if t - last[d] < dead_ps[d]:
            continue
        last[d] = t
        ch = d + 1
        if enabled[ch]:
            ts = t + delays[ch]
            if resolution != 1:  # skip the slow 64-bit division in the common 1 ps case
                ts = (ts // resolution) * resolution
            out[n_out] = ts * 8 + ch
            n_out += 1
        if p_ap > 0.0:
            cm = counter_mix(t)
            if u01(keyed(k_ap[d], cm)) < p_ap:
                u = u01(keyed(k_apd[d], cm))
                delay = dead_ps[d] + np.int64(math.floor(-tau_ps * math.log1p(-u)))
                n_heap = _heap_push(heap, n_heap, (t + delay) * 4 + d)
    return n_out, i, n_heap


@njit(cache=True, nogil=True)
def sync_tags(
    i_first, i_last, divider, seed, sigma_ps, anchor_i, tau0_int, tau0_frac, p_int, p_rest
):
    """Tagger times (int ps, floor) of the sync pulses i_first <= i <= i_last (the multiples of
    the sync divider): nominal time plus a Gaussian jitter of standard deviation sigma_ps
    (truncated at JITTER_CLIP_SIGMA) keyed on the pulse index; sigma_ps = 0 gives the floor of
    the nominal time."""
    first = ((i_first + divider - 1) // divider) * divider
    if first > i_last:
        return np.empty(0, np.int64)
    n = (i_last - first) // divider + 1
    out = np.empty(n, np.int64)
    key = stream_key(seed, STREAM_SYNC_JITTER)
    for m in range(n):
        i = first + m * divider
        t_int, t_frac = nominal_time(i, anchor_i, tau0_int, tau0_frac, p_int, p_rest)
        g = gauss_from_hash(keyed(key, counter_mix(i))) if sigma_ps > 0.0 else 0.0
        out[m] = t_int + np.int64(math.floor(t_frac + sigma_ps * g))
    return out


_SORT_BLOCK = 128
MERGE_SLACK = 32  # merge_sorted writes up to this many entries past the merged length


@njit(cache=True, nogil=True)
def sort_nearly_sorted(a, max_moves):
    """Sort `a` in place by insertion; give up (return False, `a` then partly sorted) after
    max_moves element moves. Click streams are sorted up to jitter, so this is near O(n).

    Blocks of _SORT_BLOCK elements already in order (checked by a branch-free loop over a view,
    which vectorises) are passed over; only blocks with a descent are insertion-sorted."""
    moves = 0
    n = a.shape[0]
    for start in range(1, n, _SORT_BLOCK):
        end = min(start + _SORT_BLOCK, n)
        blk = a[start - 1 : end]
        descents = 0
        for i in range(1, blk.shape[0]):
            descents += np.int64(blk[i] < blk[i - 1])
        if descents == 0:
            continue  # a[:end] is sorted: a[:start] was, and no step inside the block descends
        for i in range(start, end):
            v = a[i]
            q = i
            while q > 0 and a[q - 1] > v:
                a[q] = a[q - 1]
                q -= 1
            moves += i - q
            a[q] = v
            if moves > max_moves:
                return False
    return True


@njit(cache=True, nogil=True)
def merge_sorted(a, b, out):
    """Merge two sorted int64 arrays into out[: len(a) + len(b)] (returned); `out` needs
    MERGE_SLACK entries more, and must not overlap a or b.

    When one array is much shorter (dark counts, sync tags or held-over keys against a chunk's
    clicks), the run of the longer one before each element of the shorter is copied in windows
    of MERGE_SLACK entries: each window is copied whole and its entries <= the element counted
    without a branch (the copy past the run is overwritten later). Otherwise a plain merge."""
    if a.shape[0] < b.shape[0]:
        a, b = b, a
    na = a.shape[0]
    nb = b.shape[0]
    w = MERGE_SLACK
    i = 0
    o = 0
    if 4 * nb > na:
        for j in range(nb):
            v = b[j]
            while i < na and a[i] <= v:
                out[o] = a[i]
                o += 1
                i += 1
            out[o] = v
            o += 1
    else:
        for j in range(nb):
            v = b[j]
            while i + w <= na:
                c = 0
                for t in range(w):  # unsigned indices: no negative-index fix-up, vectorises
                    x = a[np.uint64(i + t)]
                    out[np.uint64(o + t)] = x
                    c += np.int64(x <= v)
                i += c
                o += c
                if c < w:
                    break
            while i < na and a[i] <= v:  # the last entries of a (fewer than w)
                out[o] = a[i]
                o += 1
                i += 1
            out[o] = v
            o += 1
    for t in range(na - i):
        out[np.uint64(o + t)] = a[np.uint64(i + t)]
    return out[: na + nb]


@njit(cache=True, nogil=True)
def finalize_tags(pending, main, sync, t0_ps, t1_ps, ts_buf, ch_buf):
    """Merge three sorted arrays of tag keys (ts * 8 + channel) and split them at the span.

    Returns (timestamps, channels) of the tags in [t0_ps, t1_ps) as the first entries of
    ts_buf and ch_buf (room needed: all keys, plus MERGE_SLACK in ts_buf), the sorted keys at or
    after t1_ps (to emit later), and the number of keys before t0_ps (dropped). The keys inside
    the span are merged straight into ts_buf and split there in place."""
    small = merge_sorted(
        pending, sync, np.empty(pending.shape[0] + sync.shape[0] + MERGE_SLACK, np.int64)
    )
    lo_key = t0_ps * 8
    hi_key = t1_ps * 8
    a0 = np.searchsorted(main, lo_key)
    a1 = np.searchsorted(main, hi_key)
    b0 = np.searchsorted(small, lo_key)
    b1 = np.searchsorted(small, hi_key)
    n = (a1 - a0) + (b1 - b0)
    merge_sorted(main[a0:a1], small[b0:b1], ts_buf)
    for m in range(n):
        key = ts_buf[m]
        ts_buf[m] = key >> 3
        ch_buf[m] = key & 7
    n_later = (main.shape[0] - a1) + (small.shape[0] - b1)
    later = merge_sorted(main[a1:], small[b1:], np.empty(n_later + MERGE_SLACK, np.int64))
    return ts_buf[:n], ch_buf[:n], later, a0 + b0
