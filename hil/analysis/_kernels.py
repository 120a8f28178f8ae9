"""Numba kernels behind hil.analysis.timing and hil.analysis.sifting.

Each kernel is small, takes and returns arrays, and has a plain numpy or pure-Python reference in
tests/analysis/reference.py that the tests check it against. Input validation and the choice of
conventions live in the public wrappers; kernels assume validated inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# error_model="numpy" on the float kernels: a division by zero gives inf / nan as in numpy
# instead of a Python exception, which drops a per-division check (and lets LLVM vectorise
# interval_periods). The one zero divisor that can occur, 1 / dt for two sync tags with the
# same timestamp in build_sync_table, belongs to an interval that is rejected (steps == 0)
# before inv_dt is used, as in the reference.

# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True, error_model="numpy")
def build_sync_table(
    timestamps_ps, channels, sync_channel, period0_ps, smoothing, max_fraction, pad=0
):
    """Number the sync tags of the stream: count sync periods between successive sync tags,
    tolerating gaps, drift changes and glitches.

    Each interval to the last accepted tag is divided by a running period estimate and rounded.
    A tag less than half a period after the last one, or about one period after it but farther
    than max_fraction of a period from the grid, is a glitch and is skipped. A tag after a gap
    (two or more periods) is always accepted and flagged uncertain when off the grid by more
    than max_fraction: the count across a long gap may then be wrong, but rejecting it would
    make every later tag look off-grid too. The estimate is kept as a frequency (periods per
    ps), exponentially smoothed over the per-interval frequencies with weight ``smoothing`` so
    that it follows drift; a frequency leaves no division on the loop-carried chain.

    Returns (table_ps, table_count, n_syncs, max_abs_residual_ps, gap_rows, gap_uncertain): the
    accepted sync tags, their sync counts from the first tag, the number of sync tags seen,
    the largest |residual| among accepted tags, the table rows that follow a gap (count step
    > 1) and whether each gap's count is uncertain. With ``pad`` = 1 the two tables carry one
    unfilled row before and after the accepted ones (table rows are then table_ps[1:-1]), for
    the caller's virtual extrapolation rows without a copy of the table; gap_rows still
    number the accepted tags from 0.

    Speed: when an interval is one sync period (steps == 1, the usual case) the frequency
    update is freq * keep + smoothing * inv_dt, where smoothing * inv_dt is off the
    loop-carried chain; it is bit-identical to the general (smoothing * steps) * inv_dt
    because smoothing * 1.0 == smoothing exactly. The general update sits in the (rare, hence
    well predicted) gap branch, so the chain from one frequency to the next is one multiply
    and one add instead of waiting for the rounding of x.
    """
    n = 0
    for c in channels:
        n += c == sync_channel
    # branch-free extraction first (sync tags sit at random among detections, so a branch on
    # the channel would be mispredicted twice per sync); slot j is overwritten until a sync
    table_ps = np.empty(n + 1 + 2 * pad, dtype=np.int64)
    j = pad
    for i in range(len(timestamps_ps)):
        table_ps[j] = timestamps_ps[i]
        j += channels[i] == sync_channel
    table_count = np.empty(n + 2 * pad, dtype=np.int64)
    gap_rows = np.empty(n, dtype=np.int64)
    gap_uncertain = np.empty(n, dtype=np.bool_)
    n_gaps = 0
    m = 0
    max_res = 0.0
    freq = 1.0 / period0_ps
    keep = 1.0 - smoothing
    last_t = 0
    last_count = 0
    for i in range(n):
        t = table_ps[i + pad]  # m <= i: the accepted tags are compacted in place
        if m == 0:
            table_count[pad] = 0
            last_t = t
            m = 1
            continue
        dt = np.float64(t - last_t)
        inv_dt = 1.0 / dt  # off the loop-carried chain (dt does not depend on freq)
        x = dt * freq
        steps = np.floor(x + 0.5)
        off = abs(x - steps)
        if steps < 1.0 or (steps < 1.5 and off > max_fraction):
            continue
        max_res = max(max_res, off / freq)
        last_count += np.int64(steps)
        next_freq = freq * keep + smoothing * inv_dt  # steps == 1 (see the docstring)
        if steps > 1.5:
            gap_rows[n_gaps] = m
            gap_uncertain[n_gaps] = off > max_fraction
            n_gaps += 1
            next_freq = freq * keep + (smoothing * steps) * inv_dt
        table_ps[m + pad] = t
        table_count[m + pad] = last_count
        m += 1
        last_t = t
        freq = next_freq
    return (
        table_ps[: m + 2 * pad],
        table_count[: m + 2 * pad],
        n,
        max_res,
        gap_rows[:n_gaps],
        gap_uncertain[:n_gaps],
    )


@njit(cache=True, nogil=True, error_model="numpy")
def interval_periods(table_ps, table_pulse):
    """Pulse period in each of the len(table) - 1 table intervals."""
    m = len(table_ps)
    out = np.empty(max(m - 1, 0), dtype=np.float64)
    for i in range(m - 1):
        out[i] = (table_ps[i + 1] - table_ps[i]) / np.float64(table_pulse[i + 1] - table_pulse[i])
    return out


@njit(cache=True, nogil=True)
def first_tags(timestamps_ps, channels, channel, limit):
    """The first ``limit`` timestamps on ``channel`` (fewer if the stream has fewer)."""
    out = np.empty(limit, dtype=np.int64)
    j = 0
    for i in range(len(timestamps_ps)):
        if j == limit:
            break
        if channels[i] == channel:
            out[j] = timestamps_ps[i]
            j += 1
    return out[:j]


# ---------------------------------------------------------------------------------------------
# Pulse assignment
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def count_detector_tags(channels, sync_channel, n_channels):
    """Number of tags with channel != sync_channel and channel < n_channels."""
    n = 0
    for c in channels:
        n += (c != sync_channel) & (c < n_channels)
    return n


@njit(cache=True, nogil=True, error_model="numpy")
def nearest_pulse(
    timestamps_ps,
    channels,
    sync_channel,
    delays_ps,
    search_delay_ps,
    table_ps,
    table_pulse,
    table_period_ps,
    t_first,
    t_last,
    pulse,
    residual,
    det_ch,
    outside_table,
):
    """Nearest pulse index and residual (ps) of every detector tag, by sync-table interpolation.

    Detector tags are those with channel != sync_channel and channel < len(delays_ps). The
    table interval k is the one containing t_raw - search_delay_ps (clamped to the first/last
    interval); one forward-only pointer finds it because the stream is sorted. The tag's pulse
    time t' = t_raw - delay[channel] is then placed with interval k's period: when t' falls
    just outside interval k (by at most the spread of the channel delays around
    search_delay_ps) the interval's line is extrapolated, which differs from the neighbouring
    interval's line by (delay spread) x (period change), far below a ps. The caller pads the
    table with a virtual row far before the first and after the last sync tag, on the
    extrapolation lines (see timing.kernel_table), so no tag needs special handling here;
    outside_table flags t' outside [t_first, t_last], the span of the real sync tags.
    Fills the outputs, one entry per detector tag in stream order (size: count_detector_tags).
    """
    n_ch = len(delays_ps)
    last_interval = len(table_ps) - 2
    k = 0
    j = 0
    for i in range(len(timestamps_ps)):
        c = channels[i]
        if c == sync_channel or c >= n_ch:
            continue
        raw = timestamps_ps[i]
        while k < last_interval and table_ps[k + 1] <= raw - search_delay_ps:
            k += 1
        t = raw - delays_ps[c]
        p = table_period_ps[k]
        dt = t - table_ps[k]
        step = np.floor(dt / p + 0.5)
        pulse[j] = table_pulse[k] + np.int64(step)
        outside_table[j] = (t < t_first) | (t > t_last)
        residual[j] = dt - step * p
        det_ch[j] = c
        j += 1


@njit(cache=True, nogil=True, error_model="numpy")
def assign_pulses_gated(
    timestamps_ps,
    channels,
    sync_channel,
    delays_ps,
    search_delay_ps,
    table_ps,
    table_pulse,
    table_period_ps,
    t_first,
    t_last,
    half_gate_ps,
    pulse,
    det_ch,
):
    """Pulse index of every detector tag whose residual lies in [-half_gate, +half_gate), else -1.

    Same interpolation as nearest_pulse, fused with the gate, and written for the full-rate
    path: every tag is processed and written at slot j, and j only advances on detector tags
    (so a sync tag's slot is overwritten by the next detection); the outputs need one spare
    slot. This avoids a branch on the channel, which is unpredictable (syncs are interleaved
    at random among detections). Returns (n_outside_per_channel, n_outside_table, n_written),
    n_written being the number of detector tags (so the caller may pass buffers of
    len(timestamps_ps) + 1 without counting them first).

    Per-tag work is kept small: the current interval's start, period and pulse, and the raw
    time at which the next interval begins, stay in registers and are reloaded only when a
    tag passes that time (about once per sync); delays and the detector flag come from
    256-entry tables indexed by the raw channel (0 delay and not a detector beyond n_ch),
    without clamping the channel.
    """
    n_ch = len(delays_ps)
    delay = np.zeros(256, dtype=np.int64)
    is_det = np.zeros(256, dtype=np.int64)
    for c in range(n_ch):
        delay[c] = delays_ps[c]
        is_det[c] = c != sync_channel
    outside = np.zeros(256, dtype=np.int64)  # by raw channel: no test of the channel needed
    n_outside_table = 0
    last_interval = len(table_ps) - 2
    no_next = np.iinfo(np.int64).max
    k = 0
    base = table_ps[0]
    p = table_period_ps[0]
    base_pulse = table_pulse[0]
    # interval k holds the tags with raw - search_delay_ps < table_ps[k + 1]
    next_raw = table_ps[1] + search_delay_ps if last_interval > 0 else no_next
    j = 0
    for i in range(len(timestamps_ps)):
        c = channels[i]
        raw = timestamps_ps[i]
        if raw >= next_raw:
            while k < last_interval and table_ps[k + 1] <= raw - search_delay_ps:
                k += 1
            base = table_ps[k]
            p = table_period_ps[k]
            base_pulse = table_pulse[k]
            next_raw = table_ps[k + 1] + search_delay_ps if k < last_interval else no_next
        t = raw - delay[c]
        dt = t - base
        step = np.floor(dt / p + 0.5)
        r = dt - step * p
        inside = (r >= -half_gate_ps) & (r < half_gate_ps)
        pulse[j] = base_pulse + np.int64(step) if inside else -1
        det_ch[j] = c
        if not inside:
            outside[c] += 1
        d = is_det[c]
        n_outside_table += d & ((t < t_first) | (t > t_last))
        j += d
    n_outside = outside[:n_ch].copy()
    if sync_channel < n_ch:
        n_outside[sync_channel] = 0
    return n_outside, n_outside_table, j


# ---------------------------------------------------------------------------------------------
# Sifting
# ---------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _sift_result(hist, stats, code):
    """(n, d, m, stats, code) from the outcome histogram of sift_counts."""
    h = hist.reshape(6, 2, 2, 2)  # [basis * 3 + class, match, disclosed, error]
    n = (h[:, 1, 0, 0] + h[:, 1, 0, 1] + h[:, 1, 1, 0] + h[:, 1, 1, 1]).reshape(2, 3)
    d = (h[:, 1, 1, 0] + h[:, 1, 1, 1]).reshape(2, 3)
    m = h[:, 1, 1, 1].copy().reshape(2, 3)
    stats[4] = h[:, 0].sum()
    return n, d, m, stats, code


@njit(cache=True, nogil=True)
def sift_counts(pulse, channel, basis, intensity, bit, seed):
    """Per-(basis, class) counts from detections sorted by pulse index, with squashing.

    Rows with pulse < 0 are skipped. Returns (n, d, m, stats, error_row): n/d/m are int64
    [2, 3] (basis-matched detections, disclosed among them, errors among disclosed); stats is
    int64 [5] = (unassigned rows, multi-click pulses, cross-basis multi-clicks, same-basis
    conflicting multi-clicks, basis-mismatched pulses); error_row is the first row with an
    invalid channel or answer, -2 if the pulses are not sorted (the caller sorts and calls
    again), or -1. Single clicks take a branch-free path (basis matches and disclosures are
    coin flips a branch predictor cannot learn) that increments one bin of an outcome
    histogram per pulse; multi-clicks are rare and take the slow path.
    """
    hist = np.zeros(48, dtype=np.int64)  # [basis * 3 + class, match, disclosed, error]
    stats = np.zeros(5, dtype=np.int64)
    rows = len(pulse)
    prev = np.int64(-1)
    i = 0
    while i < rows:
        p = pulse[i]
        if p < 0:
            stats[0] += 1
            i += 1
            continue
        if p <= prev:
            return _sift_result(hist, stats, -2)
        prev = p
        c = np.int64(channel[i]) - 1
        a_basis = np.int64(basis[i])
        a_class = np.int64(intensity[i])
        a_bit = np.int64(bit[i])
        if (c < 0) | (c > 3) | (a_basis > 1) | (a_class > 2) | ((a_bit > 1) & (a_bit != 255)):
            return _sift_result(hist, stats, i)
        if i + 1 < rows and pulse[i + 1] == p:
            # clicks seen per (basis, bit), as a 4-bit mask: bit (2 * basis + value)
            seen = 0
            j = i
            while j < rows and pulse[j] == p:
                cj = np.int64(channel[j]) - 1
                if cj < 0 or cj > 3:
                    return _sift_result(hist, stats, j)
                seen |= 1 << cj
                j += 1
            stats[1] += 1
            z_seen = seen & 3
            x_seen = (seen >> 2) & 3
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
        else:
            b_basis = c >> 1
            b_bit = c & 1
            i += 1
        outcome = (
            (a_basis * 3 + a_class) * 8
            + np.int64(b_basis == a_basis) * 4
            + np.int64(a_bit != 255) * 2
            + np.int64(a_bit != b_bit)
        )
        hist[outcome] += 1
    return _sift_result(hist, stats, -1)
