"""Numba kernels behind hil.analysis.timing and hil.analysis.sifting.

Each kernel is small, takes and returns arrays, and has a plain numpy or pure-Python reference in
tests/analysis/reference.py that the tests check it against. Input validation and the choice of
conventions live in the public wrappers; kernels assume validated inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def merge_sorted_streams(flat_ps, starts, labels, out_ps, out_ch):
    """Merge k sorted runs ``flat_ps[starts[r]:starts[r+1]]`` into one sorted stream.

    Ties go to the run listed first, so equal timestamps keep the order of the runs (stable).
    A linear scan over the k heads is fastest for the handful of channels a tagger has.
    """
    n_runs = len(starts) - 1
    heads = starts[:-1].copy()
    for i in range(len(out_ps)):
        best = -1
        best_t = 0
        for r in range(n_runs):
            h = heads[r]
            if h < starts[r + 1]:
                t = flat_ps[h]
                if best < 0 or t < best_t:
                    best = r
                    best_t = t
        out_ps[i] = best_t
        out_ch[i] = labels[best]
        heads[best] += 1


@njit(cache=True)
def count_per_channel(channels, n_channels):
    """Count tags per channel; channels >= n_channels are not counted."""
    counts = np.zeros(n_channels, dtype=np.int64)
    for c in channels:
        if c < n_channels:
            counts[c] += 1
    return counts


@njit(cache=True)
def rate_histogram(timestamps_ps, channels, n_channels, start_ps, bin_width_ps, n_bins):
    """Count tags per (time bin, channel); bin b covers [start + b w, start + (b + 1) w)."""
    counts = np.zeros((n_bins, n_channels), dtype=np.int64)
    for i in range(len(timestamps_ps)):
        c = channels[i]
        dt = timestamps_ps[i] - start_ps
        if c < n_channels and dt >= 0:
            b = dt // bin_width_ps
            if b < n_bins:
                counts[b, c] += 1
    return counts


@njit(cache=True)
def select_channel(timestamps_ps, channels, channel):
    """Timestamps of the tags on one channel, in stream order."""
    n = 0
    for c in channels:
        if c == channel:
            n += 1
    out = np.empty(n, dtype=np.int64)
    j = 0
    for i in range(len(channels)):
        if channels[i] == channel:
            out[j] = timestamps_ps[i]
            j += 1
    return out


@njit(cache=True)
def count_coincidences(a_ps, b_ps, window_ps):
    """Number of pairs (i, j) with |b[j] - a[i]| <= window_ps; both inputs sorted."""
    n_b = len(b_ps)
    lo = 0
    hi = 0
    total = 0
    for t in a_ps:
        while lo < n_b and b_ps[lo] < t - window_ps:
            lo += 1
        if hi < lo:
            hi = lo
        while hi < n_b and b_ps[hi] <= t + window_ps:
            hi += 1
        total += hi - lo
    return total


@njit(cache=True)
def correlation_histogram(start_ps, click_ps, range_ps, bin_width_ps, n_bins):
    """Histogram of click - start over [-range, range); bin k is [-range + k w, -range + (k+1) w).

    For each start, only the clicks inside the window are visited (a pointer that only moves
    forward), so the cost is O(N_start + N_click + pairs in range), independent of n_bins.
    """
    counts = np.zeros(n_bins, dtype=np.int64)
    n_click = len(click_ps)
    lo = 0
    for s in start_ps:
        first = s - range_ps
        while lo < n_click and click_ps[lo] < first:
            lo += 1
        j = lo
        last = s + range_ps
        while j < n_click and click_ps[j] < last:
            counts[(click_ps[j] - first) // bin_width_ps] += 1
            j += 1
    return counts


# ---------------------------------------------------------------------------------------------
# Clock recovery
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def number_sync_tags(sync_ps, period0_ps, smoothing, max_residual_fraction):
    """Count sync periods between successive sync tags, tolerating gaps, drift changes, glitches.

    Returns (sync_count, residual_ps, accepted): sync_count[k] is the number of sync periods from
    the first tag to tag k; residual_ps[k] is tag k's deviation from the whole number of periods
    predicted by the running period estimate; accepted[k] is False for a tag whose residual
    exceeds max_residual_fraction of a period (a glitch or a spurious tag), which is then ignored.
    The running period follows drift through exponential smoothing of the per-interval period.
    """
    n = len(sync_ps)
    count = np.zeros(n, dtype=np.int64)
    residual = np.zeros(n, dtype=np.float64)
    accepted = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return count, residual, accepted
    accepted[0] = True
    period = period0_ps
    last_t = sync_ps[0]
    last_count = 0
    for k in range(1, n):
        dt = sync_ps[k] - last_t
        steps = np.floor(dt / period + 0.5)
        r = dt - steps * period
        residual[k] = r
        if steps < 1.0 or abs(r) > max_residual_fraction * period:
            count[k] = last_count
            continue
        accepted[k] = True
        last_count += np.int64(steps)
        count[k] = last_count
        last_t = sync_ps[k]
        period += smoothing * (dt / steps - period)
    return count, residual, accepted


# ---------------------------------------------------------------------------------------------
# Pulse assignment
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def nearest_pulse(
    timestamps_ps,
    channels,
    sync_channel,
    delays_ps,
    table_ps,
    table_pulse,
    table_period_ps,
):
    """Nearest pulse index and residual (ps) of every detector tag, by sync-table interpolation.

    Detector tags are those with channel != sync_channel and channel < len(delays_ps). A tag at
    t is moved to t' = t - delay[channel] and placed in the table interval k with
    table_ps[k] <= t' < table_ps[k + 1] (the first/last interval extrapolates outside the
    table); the pulse period there is table_period_ps[k]. Because the stream is sorted and the
    delay is constant per channel, one forward-only pointer per channel finds k.
    Returns (pulse, residual_ps, channel, outside_table) for the detector tags in stream order.
    """
    n_ch = len(delays_ps)
    n_det = 0
    for c in channels:
        if c != sync_channel and c < n_ch:
            n_det += 1
    pulse = np.empty(n_det, dtype=np.int64)
    residual = np.empty(n_det, dtype=np.float64)
    det_ch = np.empty(n_det, dtype=np.uint8)
    outside_table = np.zeros(n_det, dtype=np.bool_)
    last_interval = len(table_ps) - 2
    ptr = np.zeros(n_ch, dtype=np.int64)
    j = 0
    for i in range(len(timestamps_ps)):
        c = channels[i]
        if c == sync_channel or c >= n_ch:
            continue
        t = timestamps_ps[i] - delays_ps[c]
        k = ptr[c]
        while k < last_interval and table_ps[k + 1] <= t:
            k += 1
        ptr[c] = k
        p = table_period_ps[k]
        dt = t - table_ps[k]
        step = np.floor(dt / p + 0.5)
        pulse[j] = table_pulse[k] + np.int64(step)
        residual[j] = dt - step * p
        det_ch[j] = c
        outside_table[j] = t < table_ps[0] or t > table_ps[last_interval + 1]
        j += 1
    return pulse, residual, det_ch, outside_table


@njit(cache=True)
def assign_pulses_gated(
    timestamps_ps,
    channels,
    sync_channel,
    delays_ps,
    table_ps,
    table_pulse,
    table_period_ps,
    half_gate_ps,
):
    """Pulse index of every detector tag whose residual lies in [-half_gate, +half_gate), else -1.

    Same interpolation as nearest_pulse, fused with the gate so that the full-rate path writes
    one int64 per detection. Returns (pulse, channel, n_outside_per_channel, n_outside_table).
    """
    n_ch = len(delays_ps)
    n_det = 0
    for c in channels:
        if c != sync_channel and c < n_ch:
            n_det += 1
    pulse = np.empty(n_det, dtype=np.int64)
    det_ch = np.empty(n_det, dtype=np.uint8)
    n_outside = np.zeros(n_ch, dtype=np.int64)
    n_outside_table = 0
    last_interval = len(table_ps) - 2
    t_first = table_ps[0]
    t_last = table_ps[last_interval + 1]
    ptr = np.zeros(n_ch, dtype=np.int64)
    j = 0
    for i in range(len(timestamps_ps)):
        c = channels[i]
        if c == sync_channel or c >= n_ch:
            continue
        t = timestamps_ps[i] - delays_ps[c]
        k = ptr[c]
        while k < last_interval and table_ps[k + 1] <= t:
            k += 1
        ptr[c] = k
        p = table_period_ps[k]
        dt = t - table_ps[k]
        step = np.floor(dt / p + 0.5)
        r = dt - step * p
        det_ch[j] = c
        if -half_gate_ps <= r < half_gate_ps:
            pulse[j] = table_pulse[k] + np.int64(step)
        else:
            pulse[j] = -1
            n_outside[c] += 1
        if t < t_first or t > t_last:
            n_outside_table += 1
        j += 1
    return pulse, det_ch, n_outside, n_outside_table


# ---------------------------------------------------------------------------------------------
# Sifting
# ---------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True)
def splitmix_bit(seed, pulse, salt):
    """One pseudo-random bit from (seed, pulse index, salt) via the splitmix64 finaliser.

    A hash of the pulse index (rather than a stateful generator) makes the squashing draw
    independent of chunking and of the order in which pulses are processed.
    """
    counter = np.uint64(pulse) * np.uint64(2) + np.uint64(salt) + np.uint64(1)
    z = np.uint64(seed) + counter * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return np.int64(z & np.uint64(1))


@njit(cache=True)
def sift_counts(pulse, channel, basis, intensity, bit, seed):
    """Per-(basis, class) counts from detections sorted by pulse index, with squashing.

    Rows with pulse < 0 are skipped. Returns (n, d, m, stats, error_row): n/d/m are int64
    [2, 3] (basis-matched detections, disclosed among them, errors among disclosed); stats is
    int64 [5] = (unassigned rows, multi-click pulses, cross-basis multi-clicks, same-basis
    conflicting multi-clicks, basis-mismatched pulses); error_row is the first row with an
    invalid channel or answer, or -1.
    """
    n = np.zeros((2, 3), dtype=np.int64)
    d = np.zeros((2, 3), dtype=np.int64)
    m = np.zeros((2, 3), dtype=np.int64)
    stats = np.zeros(5, dtype=np.int64)
    rows = len(pulse)
    i = 0
    while i < rows:
        p = pulse[i]
        if p < 0:
            stats[0] += 1
            i += 1
            continue
        # clicks seen per (basis, bit), as a 4-bit mask: bit (2 * basis + value)
        seen = 0
        j = i
        while j < rows and pulse[j] == p:
            c = np.int64(channel[j]) - 1
            if c < 0 or c > 3:
                return n, d, m, stats, j
            seen |= 1 << c
            j += 1
        a_basis = basis[i]
        a_class = intensity[i]
        a_bit = bit[i]
        if a_basis > 1 or a_class > 2 or (a_bit > 1 and a_bit != 255):
            return n, d, m, stats, i
        z_seen = seen & 3
        x_seen = (seen >> 2) & 3
        if j - i > 1:
            stats[1] += 1
        if z_seen != 0 and x_seen != 0:
            stats[2] += 1
            b_basis = splitmix_bit(seed, p, 0)
        elif z_seen != 0:
            b_basis = 0
        else:
            b_basis = 1
        in_basis = z_seen if b_basis == 0 else x_seen
        if in_basis == 3:
            stats[3] += 1
            b_bit = splitmix_bit(seed, p, 1)
        else:
            b_bit = in_basis >> 1  # mask 1 -> bit 0, mask 2 -> bit 1
        i = j
        if b_basis != a_basis:
            stats[4] += 1
            continue
        n[a_basis, a_class] += 1
        if a_bit != 255:
            d[a_basis, a_class] += 1
            if a_bit != b_bit:
                m[a_basis, a_class] += 1
    return n, d, m, stats, -1
