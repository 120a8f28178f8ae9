"""Numba kernels behind hil.analysis.timing and hil.analysis.sifting.

Each kernel is small, takes and returns arrays, and has a plain numpy or pure-Python reference in
tests/analysis/reference.py that the tests check it against. Input validation and the choice of
conventions live in the public wrappers; kernels assume validated inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hil.analysis import _simd

# error_model="numpy" on the float kernels: a division by zero gives inf / nan as in numpy
# instead of a Python exception, which drops a per-division check (and lets LLVM vectorise
# interval_periods). The one zero divisor that can occur, 1 / dt for two sync tags with the
# same timestamp in number_sync_tags, belongs to an interval that is rejected (steps == 0)
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


@njit(cache=True, nogil=True)
def count_channel(channels, channel):
    """Number of tags on ``channel``."""
    n = 0
    for c in channels:
        n += c == channel
    return n


@njit(cache=True, nogil=True)
def count_channel_simd(channels, channel):
    """count_channel with AVX-512 (call only when _simd.AVAILABLE), 64 tags per step."""
    n = 0
    i = 0
    while i + 64 <= len(channels):
        n += _simd.count_block(channels, i, np.int64(channel))
        i += 64
    for r in range(i, len(channels)):
        n += channels[r] == channel
    return n


@njit(cache=True, nogil=True)
def sync_tags_into(timestamps_ps, channels, sync_channel, out, pad):
    """Write the timestamps on sync_channel to out[pad:] (out: at least their number + 1 +
    pad entries; one past them is overwritten)."""
    # branch-free extraction (sync tags sit at random among detections, so a branch on the
    # channel would be mispredicted twice per sync); slot j is overwritten until a sync
    j = np.uint64(pad)  # unsigned: no negative-index wraparound on the store
    for i in range(len(timestamps_ps)):
        out[j] = timestamps_ps[i]
        j += np.uint64(channels[i] == sync_channel)


@njit(cache=True, nogil=True)
def sync_tags_into_simd(timestamps_ps, channels, sync_channel, out, pad):
    """sync_tags_into with AVX-512 (call only when _simd.AVAILABLE): 16 tags per step, the
    sync tags among them packed by a compress (_simd.extract_block); the same result. out
    needs _simd.BLOCK entries more than sync_tags_into (whole-vector stores)."""
    j = np.int64(pad)
    i = 0
    while i + _simd.BLOCK <= len(timestamps_ps):
        j += _simd.extract_block(timestamps_ps, channels, i, out, j, np.int64(sync_channel))
        i += _simd.BLOCK
    for r in range(i, len(timestamps_ps)):
        out[j] = timestamps_ps[r]
        j += channels[r] == sync_channel


@njit(cache=True, nogil=True, error_model="numpy")
def number_sync_tags(
    table_ps, table_count, n, pad, period0_ps, smoothing, max_fraction, origin_ps, divider, period
):
    """timing.build_sync_table's numbering of the n sync tags at table_ps[pad:pad + n]
    (compacted in place to the accepted ones; table_count: n + 2 pad entries for their
    numbers); returns build_sync_table's result, with table_count holding
    (first + count) * divider instead of the counts, where first = floor(t / origin_ps + 0.5)
    for the first accepted tag t (first = 0 when origin_ps is 0): recover_clock's absolute
    pulse indices, written here rather than by two more passes over the table. ``period``
    (None, or n + 2 pad - 1 entries) receives interval_periods' result for the intervals
    between accepted tags (entries pad .. pad + m - 2), also without another pass.

    Speed: when an interval is one sync period (steps == 1, the usual case) the frequency
    update is freq * keep + smoothing * inv_dt, where smoothing * inv_dt is off the
    loop-carried chain; it is bit-identical to the general (smoothing * steps) * inv_dt
    because smoothing * 1.0 == smoothing exactly. The general update sits in the (rare, hence
    well predicted) gap branch, so the chain from one frequency to the next is one multiply
    and one add instead of waiting for the rounding of x."""
    gap_rows = np.empty(n, dtype=np.int64)
    gap_uncertain = np.empty(n, dtype=np.bool_)
    n_gaps = 0
    m = 0
    max_res = 0.0
    freq = 1.0 / period0_ps
    keep = 1.0 - smoothing
    last_t = 0
    last_count = 0
    first = np.int64(0)
    for i in range(n):
        t = table_ps[i + pad]  # m <= i: the accepted tags are compacted in place
        if m == 0:
            if origin_ps > 0.0:
                first = np.int64(np.floor(t / origin_ps + 0.5))
            table_count[pad] = first * divider
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
        table_count[m + pad] = (first + last_count) * divider
        if period is not None:  # as interval_periods: (t - last_t) / float(pulse difference)
            period[m + pad - 1] = (t - last_t) / np.float64(np.int64(steps) * divider)
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
def interval_periods(table_ps, table_pulse, out):
    """Pulse period in each of the len(table) - 1 table intervals, into ``out``; returns it."""
    m = len(table_ps)
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

    Same interval choice and line as nearest_pulse, written for the full-rate path, with one
    difference: the nearest pulse is step = floor(dt * (1 / period) + 0.5), a multiplication
    by the interval's reciprocal period instead of a division per tag (the two can differ
    only when dt / period lies within a rounding error of a half-integer, i.e. a tag exactly
    between two pulses); the residual dt - step * period and the gate stay in ps, so tags
    exactly on a gate edge are decided exactly when the arithmetic is. Every tag is processed and
    written at slot j, and j only advances on detector tags (so a sync tag's slot is
    overwritten by the next detection); the outputs need one spare slot. This avoids a branch
    on the channel, which is unpredictable (syncs are interleaved at random among
    detections). Returns (n_outside_per_channel, n_outside_table, n_written), n_written being
    the number of detector tags (so the caller may pass buffers of len(timestamps_ps) + 1
    without counting them first).

    Per-tag work is kept small (measured 4.4 against 6.0 ns per tag for the first version):
    the current interval's start, period, reciprocal period and pulse, and the raw time at
    which the next interval begins, stay in registers and are reloaded only when a tag
    passes that time (about once per sync); delays, the detector flag and the outside counts
    share one table indexed by the raw channel (one base register; 0 delay and not a
    detector beyond n_ch), and the output slot is unsigned, which spares the negative-index
    wraparound on each store. Detections whose pulse time lies outside the span of the real
    sync tags can only be within the delay spread of either end of the sorted stream; they
    are counted there, after the main loop.
    """
    tab = _gated_table(delays_ps, sync_channel)
    m = len(table_ps)
    inv_period = np.empty(m - 1)
    for q in range(m - 1):
        inv_period[q] = 1.0 / table_period_ps[q]
    last_interval = m - 2
    no_next = np.iinfo(np.int64).max
    k = 0
    base = table_ps[0]
    ip = inv_period[0]
    p = table_period_ps[0]
    base_pulse = table_pulse[0]
    # interval k holds the tags with raw - search_delay_ps < table_ps[k + 1]
    next_raw = table_ps[1] + search_delay_ps if last_interval > 0 else no_next
    j = np.uint64(0)
    for i in range(len(timestamps_ps)):
        c = np.uint64(channels[i])
        raw = timestamps_ps[i]
        if raw >= next_raw:
            while k < last_interval and table_ps[k + 1] <= raw - search_delay_ps:
                k += 1
            base = table_ps[k]
            ip = inv_period[k]
            p = table_period_ps[k]
            base_pulse = table_pulse[k]
            next_raw = table_ps[k + 1] + search_delay_ps if k < last_interval else no_next
        dt = np.float64(raw - tab[c] - base)
        step = np.floor(dt * ip + 0.5)
        r = dt - step * p
        inside = (r >= -half_gate_ps) & (r < half_gate_ps)
        pulse[j] = base_pulse + np.int64(step) if inside else -1
        det_ch[j] = channels[i]
        if not inside:
            tab[_U512 + c] += 1
        j += np.uint64(tab[_U256 + c])
    n_outside_table = _outside_table(timestamps_ps, channels, delays_ps, tab, t_first, t_last)
    return _outside_gates(tab, len(delays_ps), sync_channel), n_outside_table, np.int64(j)


_U256 = np.uint64(256)
_U512 = np.uint64(512)


@njit(cache=True, nogil=True, error_model="numpy")
def _gated_tags(
    start, stop, timestamps_ps, channels, tab, search_delay_ps, table, half_gate_ps, k, j
):
    """assign_pulses_gated's loop over tags start .. stop - 1, plainly written (interval k and
    output slot j in and out): the scalar part of assign_pulses_gated_simd."""
    table_ps, table_pulse, table_period_ps = table
    pulse, det_ch = tab[1], tab[2]
    lut = tab[0]
    last_interval = len(table_ps) - 2
    for i in range(start, stop):
        c = np.uint64(channels[i])
        raw = timestamps_ps[i]
        while k < last_interval and table_ps[k + 1] <= raw - search_delay_ps:
            k += 1
        dt = np.float64(raw - lut[c] - table_ps[k])
        step = np.floor(dt * (1.0 / table_period_ps[k]) + 0.5)
        r = dt - step * table_period_ps[k]
        inside = (r >= -half_gate_ps) & (r < half_gate_ps)
        pulse[j] = table_pulse[k] + np.int64(step) if inside else -1
        det_ch[j] = channels[i]
        if not inside:
            lut[_U512 + c] += 1
        j += np.uint64(lut[_U256 + c])
    return k, j


@njit(cache=True, nogil=True, error_model="numpy")
def assign_pulses_gated_simd(
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
    """assign_pulses_gated with AVX-512 (call only when _simd.AVAILABLE): the same outputs bit
    for bit, about twice as fast (benchmarks/bench_analysis.py).

    Blocks of 32 tags go through _simd.assign_block when their sync intervals lie within 8
    from the block's first (at most 7 sync tags among 32: the usual case while detections
    outnumber syncs); the other blocks, the stream's last tags and the table's last 9
    intervals go through the scalar loop, as do all tags when there are more than 8 delay
    entries. A block writes whole vectors (garbage past its last row, overwritten by the
    next): the vector path stops where the output buffers have less than ASSIGN_BLOCK slots
    left, so any buffer of count_detector_tags + 1 slots is safe, and len(timestamps_ps) + 1
    or count_detector_tags + ASSIGN_BLOCK keep the vector path to the end."""
    n_ch = len(delays_ps)
    lut = _gated_table(delays_ps, sync_channel)
    luts = np.zeros(16, dtype=np.int64)  # _simd.assign_block's: delay, is detector
    for c in range(min(n_ch, 8)):
        luts[c] = delays_ps[c]
        luts[8 + c] = c != sync_channel
    tab = (lut, pulse, det_ch)
    table = (table_ps, table_pulse, table_period_ps)
    last_interval = len(table_ps) - 2
    n = len(timestamps_ps)
    k = 0
    j = np.uint64(0)
    i = 0
    if n_ch <= 8:
        # a block's stores end before j + ASSIGN_BLOCK: whole vectors from each quarter's
        # first row (the scalar loop takes the rest when the buffers have less room)
        room = min(len(pulse), len(det_ch))
        while i + _simd.ASSIGN_BLOCK <= n and j + np.uint64(_simd.ASSIGN_BLOCK) <= room:
            while k < last_interval and table_ps[k + 1] <= timestamps_ps[i] - search_delay_ps:
                k += 1
            if k + 9 > last_interval:
                break  # the interval window would reach past the table
            res = _simd.assign_block(
                timestamps_ps,
                channels,
                i,
                pulse,
                det_ch,
                np.int64(j),
                table_ps,
                table_pulse,
                table_period_ps,
                k,
                last_interval,
                search_delay_ps,
                luts,
                half_gate_ps,
            )
            if res >> 62:  # more than 7 sync intervals in the block
                k, j = _gated_tags(
                    i,
                    i + _simd.ASSIGN_BLOCK,
                    timestamps_ps,
                    channels,
                    tab,
                    search_delay_ps,
                    table,
                    half_gate_ps,
                    k,
                    j,
                )
            else:
                j += np.uint64(res & 0xFF)
                k += (res >> 8) & 0xFF
                miss = (res >> 16) & 0xFFFFFFFF
                if miss:  # rare: detections outside their gate, per channel
                    for q in range(_simd.ASSIGN_BLOCK):
                        if (miss >> q) & 1:
                            lut[_U512 + np.uint64(channels[i + q])] += 1
            i += _simd.ASSIGN_BLOCK
    k, j = _gated_tags(
        i, n, timestamps_ps, channels, tab, search_delay_ps, table, half_gate_ps, k, j
    )
    n_outside_table = _outside_table(timestamps_ps, channels, delays_ps, lut, t_first, t_last)
    return _outside_gates(lut, n_ch, sync_channel), n_outside_table, np.int64(j)


@njit(cache=True, nogil=True)
def _gated_table(delays_ps, sync_channel):
    """The gated kernels' table by raw channel: [0:256] delay, [256:512] 1 for a detector
    channel, [512:768] detections outside every gate (counted by the kernel)."""
    tab = np.zeros(768, dtype=np.int64)
    for c in range(len(delays_ps)):
        tab[c] = delays_ps[c]
        tab[256 + c] = c != sync_channel
    return tab


@njit(cache=True, nogil=True)
def _outside_gates(tab, n_ch, sync_channel):
    """Detections outside every gate by channel 0 .. n_ch - 1 (none for the sync channel)."""
    n_outside = tab[512 : 512 + n_ch].copy()
    if sync_channel < n_ch:
        n_outside[sync_channel] = 0
    return n_outside


@njit(cache=True, nogil=True)
def _outside_table(timestamps_ps, channels, delays_ps, lut, t_first, t_last):
    """Detector tags whose pulse time (raw - delay) lies outside [t_first, t_last]: they can
    only be within the delay spread of either end of the sorted stream."""
    n_outside_table = 0
    d_min = delays_ps.min()
    d_max = delays_ps.max()
    i = 0
    while i < len(timestamps_ps) and timestamps_ps[i] < t_first + d_max:
        c = np.uint64(channels[i])
        n_outside_table += lut[_U256 + c] & (timestamps_ps[i] - lut[c] < t_first)
        i += 1
    i = len(timestamps_ps) - 1
    while i >= 0 and timestamps_ps[i] > t_last + d_min:
        c = np.uint64(channels[i])
        n_outside_table += lut[_U256 + c] & (timestamps_ps[i] - lut[c] > t_last)
        i -= 1
    return n_outside_table


# ---------------------------------------------------------------------------------------------
# Sifting
# ---------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_U8 = np.uint64(8)
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
def _sift_result(hist4, stats, code):
    """(n, d, m, stats, code) from the four outcome histograms of sift_counts."""
    # [basis * 3 + class, match, disclosed, error]
    h = hist4.reshape(4, 48).sum(axis=0).reshape(6, 2, 2, 2)
    n = (h[:, 1, 0, 0] + h[:, 1, 0, 1] + h[:, 1, 1, 0] + h[:, 1, 1, 1]).reshape(2, 3)
    d = (h[:, 1, 1, 0] + h[:, 1, 1, 1]).reshape(2, 3)
    m = h[:, 1, 1, 1].copy().reshape(2, 3)
    stats[4] = h[:, 0].sum()
    return n, d, m, stats, code


@njit(cache=True, nogil=True)
def _outcome_tables():
    """Lookup tables of sift_counts' outcome bins (both paths): the bin of a detection is
    out[a[(basis << 8) | class] | b[bit] | c[channel]], the three uint8 tables filling
    disjoint bit fields (cell = basis * 3 + class in bits 4-6, answer bit 0 / 1 / 255 as
    0 / 1 / 2 in bits 2-3, channel 1..4 as 0..3 = 2 * Bob's basis + Bob's bit in bits 0-1);
    an invalid basis, class, bit or channel sets bit 7, where ``out`` holds the sentinel 255.

    Bins: [basis * 3 + class, match, disclosed, error] flattened (48), as _sift_result reads
    them. Three byte loads and two ORs replace about 15 instructions of arithmetic (and
    measured faster than adding int64 table entries)."""
    invalid = np.uint8(0x80)
    a = np.full(1 << 16, invalid, dtype=np.uint8)
    for basis in range(2):
        for cls in range(3):
            a[(basis << 8) | cls] = (basis * 3 + cls) << 4
    b = np.full(256, invalid, dtype=np.uint8)
    b[0] = 0
    b[1] = 1 << 2
    b[255] = 2 << 2
    c = np.full(256, invalid, dtype=np.uint8)
    for ch in range(1, 5):
        c[ch] = ch - 1
    out = np.full(256, 255, dtype=np.uint8)
    for basis in range(2):
        for cls in range(3):
            for code, a_bit in enumerate((0, 1, 255)):
                for cc in range(4):
                    out[((basis * 3 + cls) << 4) | (code << 2) | cc] = (
                        (basis * 3 + cls) * 8
                        + np.int64((cc >> 1) == basis) * 4
                        + np.int64(a_bit != 255) * 2
                        + np.int64(a_bit != (cc & 1))
                    )
    return a, b, c, out


@njit(cache=True, nogil=True)
def _sift_singles(pulse, channel, basis, intensity, bit, start, prev, hist4, stats, tables):
    """sift_counts' fast path from row ``start``: count single clicks into hist4 while each
    row's pulse lies strictly between the last counted pulse and the next row's (or the next
    row is unassigned), and unassigned rows (pulse < 0) into stats[0], as the general path
    would. Returns (the first row not counted, which the general path takes, or -row - 1
    for an invalid row; the last pulse counted). Unassigned rows are taken here because
    real captures have them every few tens of rows (dark counts, afterpulses): each return
    to the general path costs about 100 ns.

    The counts go to a histogram allocated here and are added to hist4 at the end: the
    compiler cannot tell that a histogram passed in does not overlap the input arrays."""
    lut_a, lut_b, lut_c, lut_out = tables
    local = np.zeros(4 * 48, dtype=np.int64)
    # views from start, indexed from 0: a loop index the compiler knows is >= 0 needs no
    # negative-index wraparound on each of the six loads (measured 3.0 against 2.0 ns)
    pulse = pulse[start:]
    channel = channel[start:]
    basis = basis[start:]
    intensity = intensity[start:]
    bit = bit[start:]
    stop = max(len(pulse) - 1, 0)
    unassigned = 0
    for r in range(len(pulse) - 1):
        p = pulse[r]
        if p < 0:
            unassigned += 1
            continue
        nxt = pulse[r + 1]
        if not ((p > prev) & ((nxt > p) | (nxt < 0))):
            stop = r
            break
        key = (
            lut_a[(np.uint64(basis[r]) << _U8) | np.uint64(intensity[r])]
            | lut_b[bit[r]]
            | lut_c[channel[r]]
        )
        outcome = lut_out[key]
        if outcome >= 48:
            stop = -r - 1
            break
        local[(r & 3) * 48 + outcome] += 1
        prev = p
    hist4 += local
    stats[0] += unassigned
    return (stop + start if stop >= 0 else stop - start), prev


@njit(cache=True, nogil=True)
def _sift_singles_simd(
    pulse, channel, basis, intensity, bit, start, prev, hist4, stats, pairs, pair_bins, tables
):
    """_sift_singles with AVX-512 (call only when _simd.AVAILABLE): the same contract and
    counts; blocks of 16 plain single clicks take _simd.sift_block, which gives their outcome
    bins at once (counted by pairs of bins into ``pairs``), and the rest goes through the
    scalar test row by row (up to 16 rows before the next block is tried)."""
    lut_a, lut_b, lut_c, lut_out = tables
    local = np.zeros(4 * 48, dtype=np.int64)
    unassigned = 0
    n = len(pulse) - 1  # rows that may be counted here: each needs the next row's pulse
    r = start
    stop = max(n, start)
    while r < n:
        while r + _simd.BLOCK <= n:
            res = _simd.sift_block(pulse, channel, basis, intensity, bit, r, prev, pair_bins)
            if res == 0:
                break
            for q in range(_simd.BLOCK // 2):
                pairs[pair_bins[q]] += 1
            unassigned += res >> 1
            last = r + _simd.BLOCK - 1
            while pulse[last] < 0 and last > r:  # the block's last counted pulse
                last -= 1
            prev = max(prev, pulse[last])
            r += _simd.BLOCK
        end = min(r + _simd.BLOCK, n)
        while r < end:
            p = pulse[r]
            if p < 0:
                unassigned += 1
                r += 1
                continue
            nxt = pulse[r + 1]
            if not ((p > prev) & ((nxt > p) | (nxt < 0))):
                hist4 += local
                stats[0] += unassigned
                return r, prev
            key = (
                lut_a[(np.uint64(basis[r]) << _U8) | np.uint64(intensity[r])]
                | lut_b[bit[r]]
                | lut_c[channel[r]]
            )
            outcome = lut_out[key]
            if outcome >= 48:
                hist4 += local
                stats[0] += unassigned
                return -r - 1, prev
            local[np.uint64((r & 3) * 48) + np.uint64(outcome)] += 1
            prev = p
            r += 1
    hist4 += local
    stats[0] += unassigned
    return stop, prev


@njit(cache=True, nogil=True)
def _add_pairs(hist4, pairs):
    """Add both bins of every pair counted in pairs[49 * a + b] to the histogram (bin 48,
    _simd.NO_BIN, is an unassigned row, counted apart)."""
    for a in range(48):
        for b in range(49):
            hist4[a] += pairs[49 * a + b]
    for b in range(48):
        for a in range(49):
            hist4[b] += pairs[49 * a + b]


@njit(cache=True, nogil=True)
def _sift_group(pulse, channel, basis, intensity, bit, i, prev, seed, hist4, stats, tables):
    """sift_counts' general path for the group of rows starting at row i (an unassigned row,
    a multi-click, or a single click the fast path left): returns (next row, last counted
    pulse, code), code -1 to go on, else sift_counts' error_row."""
    rows = len(pulse)
    p = pulse[i]
    if p < 0:
        stats[0] += 1
        return i + 1, prev, -1
    if p <= prev:
        return i, prev, -2
    prev = p
    c = np.int64(channel[i]) - 1
    a_basis = np.int64(basis[i])
    a_class = np.int64(intensity[i])
    a_bit = np.int64(bit[i])
    if (c < 0) | (c > 3) | (a_basis > 1) | (a_class > 2) | ((a_bit > 1) & (a_bit != 255)):
        return i, prev, i
    if i + 1 < rows and pulse[i + 1] == p:
        # clicks seen per (basis, bit), as a 4-bit mask: bit (2 * basis + value)
        seen = 0
        j = i
        while j < rows and pulse[j] == p:
            cj = np.int64(channel[j]) - 1
            if cj < 0 or cj > 3:
                return j, prev, j
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
    # the same outcome tables as the fast path, Bob's (basis, bit) as the channel code
    lut_a, lut_b, _, lut_out = tables
    key = lut_a[(a_basis << 8) | a_class] | lut_b[a_bit] | (2 * b_basis + b_bit)
    hist4[lut_out[key]] += 1
    return i, prev, -1


@njit(cache=True, nogil=True)
def sift_counts(pulse, channel, basis, intensity, bit, seed):
    """Per-(basis, class) counts from detections sorted by pulse index, with squashing.

    Rows with pulse < 0 are skipped. Returns (n, d, m, stats, error_row): n/d/m are int64
    [2, 3] (basis-matched detections, disclosed among them, errors among disclosed); stats is
    int64 [5] = (unassigned rows, multi-click pulses, cross-basis multi-clicks, same-basis
    conflicting multi-clicks, basis-mismatched pulses); error_row is the first row with an
    invalid channel or answer, -2 if the pulses are not sorted (the caller sorts and calls
    again), or -1.

    Speed: the common row (a single click whose pulse lies strictly between its neighbours'
    pulses) takes a fast path with one well-predicted test, four table loads and one
    histogram increment; the histogram has four copies used in turn, so that runs of one
    outcome do not chain each increment on the store of the previous one. Everything else
    (unassigned rows, multi-clicks, unsorted input, the last row) takes the general path.
    """
    tables = _outcome_tables()
    hist4 = np.zeros(4 * 48, dtype=np.int64)  # 4 copies of [basis*3+class, match, disc., err]
    stats = np.zeros(5, dtype=np.int64)
    prev = np.int64(-1)  # last assigned pulse counted
    i = 0
    while i < len(pulse):
        # fast path; stops at the first row that is not a plain single click
        stop, prev = _sift_singles(
            pulse, channel, basis, intensity, bit, i, prev, hist4, stats, tables
        )
        if stop < 0:  # invalid row -stop - 1
            return _sift_result(hist4, stats, -stop - 1)
        if stop >= len(pulse):
            break
        i, prev, code = _sift_group(
            pulse, channel, basis, intensity, bit, stop, prev, seed, hist4, stats, tables
        )
        if code != -1:
            return _sift_result(hist4, stats, code)
    return _sift_result(hist4, stats, -1)


@njit(cache=True, nogil=True)
def sift_counts_simd(pulse, channel, basis, intensity, bit, seed):
    """sift_counts with the AVX-512 fast path (call only when _simd.AVAILABLE): the same
    results, about twice as fast on long runs of single clicks."""
    tables = _outcome_tables()
    hist4 = np.zeros(4 * 48, dtype=np.int64)
    pairs = np.zeros(49 * 49, dtype=np.int64)  # the vector blocks' counts, by pair of bins
    pair_bins = np.empty(_simd.BLOCK // 2, dtype=np.uint16)
    stats = np.zeros(5, dtype=np.int64)
    prev = np.int64(-1)
    i = 0
    code = -1
    while i < len(pulse):
        stop, prev = _sift_singles_simd(
            pulse, channel, basis, intensity, bit, i, prev, hist4, stats, pairs, pair_bins, tables
        )
        if stop < 0:
            code = -stop - 1
            break
        if stop >= len(pulse):
            break
        i, prev, code = _sift_group(
            pulse, channel, basis, intensity, bit, stop, prev, seed, hist4, stats, tables
        )
        if code != -1:
            break
    _add_pairs(hist4, pairs)
    return _sift_result(hist4, stats, code)
