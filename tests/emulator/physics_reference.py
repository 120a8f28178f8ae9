"""Plain-Python reference implementations of the emulator's physics kernels
(hil.emulator._physics_kernels), written loop by loop for small inputs, so the tests can check
the numba kernels against code that is easy to read."""

import heapq
import math

import numpy as np

MASK = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
BLOCK_PULSES = 1 << 16
DARK_SLOT_PS = 1 << 26
CLIP = 8.0

# stream numbers as documented in the kernels module
S_SOURCE, S_DISCLOSE, S_EVE, S_ACCEPT = 1, 3, 4, 6
S_JITTER, S_BLOCK, S_DARK_COUNT, S_DARK_TIME, S_AP_PROB, S_AP_DELAY = 11, 15, 16, 20, 24, 28


def mix64(z: int) -> int:
    z &= MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def stream_key(seed: int, stream: int) -> int:
    return mix64(int(seed) * GAMMA + int(stream))


def hash_at(seed: int, stream: int, counter: int) -> int:
    return mix64(stream_key(int(seed), stream) ^ mix64((int(counter) & MASK) * GAMMA + GAMMA))


def u01(h: int) -> float:
    return (h >> 11) * 2.0**-53


def source_choice(h: int, c0: float, c1: float, p_z: float) -> tuple[int, int, int]:
    """(class, basis, bit) from one hash: class uniform = bits 63..32, basis uniform = bits
    31..1, bit = bit 0."""
    u_class = (h >> 32) / 2.0**32
    u_basis = ((h >> 1) & (2**31 - 1)) / 2.0**31
    cls = 0 if u_class < c0 else (1 if u_class < c1 else 2)
    return cls, (0 if u_basis < p_z else 1), h & 1


def pulse_choices(seed, p_mu, p_z, disclose_fraction, indices):
    out = []
    for i in indices:
        i = int(i)
        cls, basis, bit = source_choice(hash_at(seed, S_SOURCE, i), p_mu[0], p_mu[0] + p_mu[1], p_z)
        disclosed = basis == 1 or u01(hash_at(seed, S_DISCLOSE, i)) < disclose_fraction
        out.append((basis, cls, bit, disclosed))
    return out


def exp_from_hash(h: int) -> float:
    """-ln(u), u = (2 (h >> 12) + 1) / 2**53, by the series ln m = 2 sum s^(2k+1) / (2k + 1),
    s = (m - 1)/(m + 1), through s^13, after reducing u's integer to 2**e m, m in
    [1/sqrt2, sqrt2]."""
    x = float(2 * (h >> 12) + 1)
    frac, exp2 = math.frexp(x)  # x = frac 2**exp2, frac in [1/2, 1)
    m, e = 2.0 * frac, exp2 - 1
    if m > math.sqrt(2.0):
        m, e = m / 2.0, e + 1
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    series = 2 / 13
    for k in (11, 9, 7, 5, 3, 1):
        series = series * z + 2 / k
    return (53 - e) * math.log(2.0) - s * series


# Acklam's inverse normal CDF, same coefficients as the kernel (checked separately against
# statistics.NormalDist in the tests).
_A = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
)
_B = (
    -5.447609879822406e01,
    1.615858368580409e02,
    -1.556989798598866e02,
    6.680131188771972e01,
    -1.328068155288572e01,
)
_C = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549732539343734e00,
    4.374664141464968e00,
    2.938163982698783e00,
)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


def _poly(coef, x):
    acc = 0.0
    for c in coef:
        acc = acc * x + c
    return acc


def norm_ppf(p: float) -> float:
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        return _poly(_C, q) / (_poly(_D, q) * q + 1.0)
    if p > 1 - 0.02425:
        q = math.sqrt(-2 * math.log(1 - p))
        return -_poly(_C, q) / (_poly(_D, q) * q + 1.0)
    q = p - 0.5
    r = q * q
    return _poly(_A, r) * q / (_poly(_B, r) * r + 1.0)


GAUSS_CELLS = 4096
GAUSS_TABLE = [0.0] + [norm_ppf(k / GAUSS_CELLS) for k in range(1, GAUSS_CELLS)] + [0.0]


def gauss_from_hash(h: int) -> float:
    """Table quantile with linear interpolation; exact formula in the 16 outer cells per side."""
    cell = h >> 52
    if cell < 16 or cell >= GAUSS_CELLS - 16:
        g = norm_ppf(((h >> 12) + 0.5) * 2.0**-52)
    else:
        f = ((h >> 12) & ((1 << 40) - 1)) * 2.0**-40
        g = GAUSS_TABLE[cell] + f * (GAUSS_TABLE[cell + 1] - GAUSS_TABLE[cell])
    return min(max(g, -CLIP), CLIP)


def click_pattern_tables(mu, tj):
    order = np.zeros((3, 4, 15), np.int64)
    cum = np.zeros((3, 4, 15))
    for c in range(3):
        for s in range(4):
            probs = []
            for pat in range(1, 16):
                q = 1.0
                for j in range(4):
                    pj = -math.expm1(-mu[c] * tj[s][j])
                    q *= pj if (pat >> j) & 1 else 1.0 - pj
                probs.append((pat, q))
            probs.sort(key=lambda pq: -pq[1])  # stable
            run = 0.0
            for m, (pat, q) in enumerate(probs):
                order[c, s, m] = pat
                run += q
                cum[c, s, m] = run
    return order, cum


def nominal_time(i, anchor_i, tau0_int, tau0_frac, p_int, p_rest):
    d = i - anchor_i
    frac = tau0_frac + d * p_rest
    fl = math.floor(frac)
    return tau0_int + d * p_int + fl, frac - fl


def signal_detections(
    seed, pattern_seed, i_lo, i_hi, mu, c0, c1, p_z, eve_fraction, tj, sigma_ps, timing
):
    """Same algorithm as the kernel, one pulse candidate at a time; returns the keys
    t * 4 + detector in pulse order, each pulse's clicks in time order."""
    order, cum = click_pattern_tables(mu, tj)
    p_c = max(cum[c, s, 14] for c in range(3) for s in range(4))
    out = []
    if p_c <= 0 or i_hi <= i_lo:
        return out
    inv = -1.0 / math.log1p(-p_c) if p_c < 1 else 0.0
    b = i_lo // BLOCK_PULSES
    while b * BLOCK_PULSES < i_hi:
        start, end = b * BLOCK_PULSES, min((b + 1) * BLOCK_PULSES, i_hi)
        state = hash_at(seed, S_BLOCK, b)
        pos = start - 1
        while True:
            state = (state + GAMMA) & MASK
            skip = int(min(exp_from_hash(mix64(state)) * inv, float(BLOCK_PULSES)))
            if pos + 1 + skip >= end:
                break
            pos += 1 + skip
            if pos < i_lo:
                continue
            i = pos
            cls, basis, bit = source_choice(hash_at(pattern_seed, S_SOURCE, i), c0, c1, p_z)
            s = 2 * basis + bit
            he = hash_at(seed, S_EVE, i)
            if eve_fraction > 0 and u01(he) < eve_fraction:
                eb = he & 1  # Eve's basis; her bit is Alice's in the same basis, else bit 1
                ebit = bit if eb == basis else (he >> 1) & 1
                s = 2 * eb + ebit
            x = u01(hash_at(seed, S_ACCEPT, i)) * p_c
            if x >= cum[cls, s, 14]:
                continue
            m = 0
            while cum[cls, s, m] <= x:
                m += 1
            pattern = order[cls, s, m]
            t_int, t_frac = nominal_time(i, *timing)
            clicks = []
            for j in range(4):
                if (pattern >> j) & 1:
                    g = gauss_from_hash(hash_at(seed, S_JITTER + j, i))
                    clicks.append((t_int + math.floor(t_frac + sigma_ps * g)) * 4 + j)
            out.extend(sorted(clicks))  # a pulse's clicks in time order
        b += 1
    return out


def poisson_from_hash(h: int, lam: float) -> int:
    n, remaining, piece = 0, lam, 0
    while remaining > 0:
        lp = min(remaining, 30.0)
        remaining -= lp
        u = u01(mix64(h + piece * GAMMA))
        p = math.exp(-lp)
        cdf, k = p, 0
        while u > cdf and k < 1000:
            k += 1
            p *= lp / k
            cdf += p
        n += k
        piece += 1
    return n


def dark_detections(seed, det, rate_hz, t_lo, t_hi):
    out = []
    if rate_hz <= 0 or t_hi <= t_lo:
        return out
    lam = rate_hz * DARK_SLOT_PS * 1e-12
    for s in range(t_lo // DARK_SLOT_PS, (t_hi - 1) // DARK_SLOT_PS + 1):
        n = poisson_from_hash(hash_at(seed, S_DARK_COUNT + det, s), lam)
        ht = hash_at(seed, S_DARK_TIME + det, s)
        for m in range(n):
            t = s * DARK_SLOT_PS + int(u01(mix64(ht + (m + 1) * GAMMA)) * DARK_SLOT_PS)
            if t_lo <= t < t_hi:
                out.append(t * 4 + det)
    return sorted(out)


def register_clicks(keys, horizon_ps, dead_ps, on, p_ap, tau_ps, seed, last, pending):
    """Dead time + afterpulsing with heapq; `last` (list) and `pending` (heap list) updated in
    place; returns registered keys."""
    out = []
    i = 0
    keys = list(keys)
    while True:
        if i < len(keys) and (not pending or keys[i] <= pending[0]):
            key = keys[i]
            i += 1
        elif pending and pending[0] < horizon_ps * 4:
            key = heapq.heappop(pending)
        else:
            break
        t, d = key >> 2, key & 3
        if not on[d] or t - last[d] < dead_ps[d]:
            continue
        last[d] = t
        out.append(key)
        if p_ap > 0 and u01(hash_at(seed, S_AP_PROB + d, t)) < p_ap:
            u = u01(hash_at(seed, S_AP_DELAY + d, t))
            delay = dead_ps[d] + math.floor(-tau_ps * math.log1p(-u))
            heapq.heappush(pending, (t + delay) * 4 + d)
    return out
