"""Plain numpy / pure-Python references for the numba kernels in hil.analysis._kernels.

Written independently of the kernels (vectorised where the algorithm allows, a Python loop
where it is sequential by nature) so that tests compare two implementations, and used by
benchmarks/bench_analysis.py as the numpy baseline.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1


def merge_sorted_streams(runs, labels):
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in runs] + [np.empty(0, np.int64)])
    lab = np.concatenate(
        [np.full(len(r), c, dtype=np.uint8) for r, c in zip(runs, labels, strict=True)]
        + [np.empty(0, np.uint8)]
    )
    order = np.argsort(flat, kind="stable")  # stable: ties keep concatenation (run) order
    return flat[order], lab[order]


def rate_histogram(timestamps_ps, channels, n_channels, start_ps, bin_width_ps, n_bins):
    b = (timestamps_ps - start_ps) // bin_width_ps
    keep = (timestamps_ps >= start_ps) & (b < n_bins) & (channels < n_channels)
    flat = b[keep] * n_channels + channels[keep].astype(np.int64)
    return np.bincount(flat, minlength=n_bins * n_channels).reshape(n_bins, n_channels)


def first_tags(timestamps_ps, channels, channel, limit):
    return timestamps_ps[channels == channel][:limit]


def count_coincidences(a_ps, b_ps, window_ps):
    hi = np.searchsorted(b_ps, a_ps + window_ps, side="right")
    lo = np.searchsorted(b_ps, a_ps - window_ps, side="left")
    return int(np.sum(hi - lo))


def correlation_histogram(start_ps, click_ps, range_ps, bin_width_ps, n_bins):
    """All pairwise differences (fine for test sizes), binned with np.histogram."""
    diff = (click_ps[None, :] - start_ps[:, None]).ravel()
    edges = -range_ps + bin_width_ps * np.arange(n_bins + 1, dtype=np.int64)
    # np.histogram closes the last bin on the right; the kernel's range is half-open
    diff = diff[(diff >= -range_ps) & (diff < range_ps)]
    return np.histogram(diff, bins=edges)[0].astype(np.int64)


def number_sync_tags(sync_ps, period0_ps, smoothing, max_fraction):
    """Sequential by nature (the period estimate follows each accepted interval): Python loop.

    Returns (count, residual_ps, accepted, uncertain) per sync tag."""
    n = len(sync_ps)
    count = np.zeros(n, dtype=np.int64)
    residual = np.zeros(n)
    accepted = np.zeros(n, dtype=bool)
    uncertain = np.zeros(n, dtype=bool)
    if n == 0:
        return count, residual, accepted, uncertain
    accepted[0] = True
    freq = 1.0 / float(period0_ps)  # sync periods per ps
    last_t = int(sync_ps[0])
    last_count = 0
    for i in range(1, n):
        dt = float(int(sync_ps[i]) - last_t)
        x = dt * freq
        steps = np.floor(x + 0.5)
        off = abs(x - steps)
        residual[i] = off / freq
        if steps == 0 or (steps == 1 and off > max_fraction):
            count[i] = last_count
            continue
        accepted[i] = True
        uncertain[i] = steps >= 2 and off > max_fraction
        last_count += int(steps)
        count[i] = last_count
        last_t = int(sync_ps[i])
        freq = freq * (1.0 - smoothing) + (smoothing * steps) * (1.0 / dt)
    return count, residual, accepted, uncertain


def build_sync_table(timestamps_ps, channels, sync_channel, period0_ps, smoothing, max_fraction):
    sync = timestamps_ps[channels == sync_channel]
    count, residual, accepted, uncertain = number_sync_tags(
        sync, period0_ps, smoothing, max_fraction
    )
    gap_rows = np.flatnonzero(np.diff(count[accepted]) > 1) + 1
    max_res = float(np.max(residual[accepted])) if len(sync) else 0.0
    return (
        sync[accepted],
        count[accepted],
        len(sync),
        max_res,
        gap_rows,
        uncertain[accepted][gap_rows],
    )


def interval_periods(table_ps, table_pulse):
    return np.diff(table_ps) / np.diff(table_pulse).astype(np.float64)


def _detector_intervals(timestamps_ps, channels, sync_channel, delays_ps, search_delay, table_ps):
    """(channel, pulse time t = raw - delay, table interval) of each detector tag: the interval
    is the one containing raw - search_delay, clamped to the first and last."""
    det = (channels != sync_channel) & (channels < len(delays_ps))
    ch = channels[det]
    raw = timestamps_ps[det]
    t = raw - delays_ps[ch.astype(np.intp)]
    k = np.searchsorted(table_ps, raw - search_delay, side="right") - 1
    return ch, t, np.clip(k, 0, len(table_ps) - 2)


def nearest_pulse(
    timestamps_ps,
    channels,
    sync_channel,
    delays_ps,
    search_delay,
    table_ps,
    table_pulse,
    period,
    t_first,
    t_last,
):
    ch, t, k = _detector_intervals(
        timestamps_ps, channels, sync_channel, delays_ps, search_delay, table_ps
    )
    dt = (t - table_ps[k]).astype(np.float64)
    step = np.floor(dt / period[k] + 0.5)
    pulse = table_pulse[k] + step.astype(np.int64)
    residual = dt - step * period[k]
    return pulse, residual, ch, (t < t_first) | (t > t_last)


def assign_pulses_gated(
    timestamps_ps,
    channels,
    sync_channel,
    delays_ps,
    search_delay,
    table_ps,
    table_pulse,
    period,
    t_first,
    t_last,
    half_gate,
):
    """The gated assignment as the kernel defines it: as nearest_pulse, but the nearest pulse
    is found with the reciprocal period, floor(dt * (1 / period) + 0.5)."""
    ch, t, k = _detector_intervals(
        timestamps_ps, channels, sync_channel, delays_ps, search_delay, table_ps
    )
    dt = (t - table_ps[k]).astype(np.float64)
    step = np.floor(dt * (1.0 / period[k]) + 0.5)
    residual = dt - step * period[k]
    inside = (residual >= -half_gate) & (residual < half_gate)
    pulse = np.where(inside, table_pulse[k] + step.astype(np.int64), -1)
    n_outside = np.bincount(ch[~inside].astype(np.intp), minlength=len(delays_ps))
    outside_table = (t < t_first) | (t > t_last)
    return pulse, ch, n_outside, int(np.count_nonzero(outside_table))


def splitmix_bit(seed, pulse, salt):
    """Same hash as the kernel, in numpy uint64 arithmetic (wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (
            np.asarray(pulse).astype(np.uint64) * np.uint64(2) + np.uint64(salt + 1)
        ) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(1)).astype(np.int64)


def splitmix_bit_python(seed, pulse, salt):
    """Pure-Python splitmix64 finaliser with explicit masking, to check the numpy one."""
    z = (seed + (pulse * 2 + salt + 1) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) & 1


def sift_counts(pulse, channel, basis, intensity, bit, seed):
    """Vectorised sifting: group rows by pulse (stable sort), OR the click masks per group.

    Returns (n, d, m, stats) like the kernel, for valid inputs.
    """
    if np.any(pulse[1:] < pulse[:-1]):  # sort only when needed, like the kernel's caller
        order = np.argsort(pulse, kind="stable")
        pulse, channel = pulse[order], channel[order]
        basis, intensity, bit = basis[order], intensity[order], bit[order]
    unassigned = int(np.count_nonzero(pulse < 0))
    keep = pulse >= 0
    pulse, channel = pulse[keep], channel[keep]
    basis, intensity, bit = basis[keep], intensity[keep], bit[keep]
    stats = np.zeros(5, dtype=np.int64)
    stats[0] = unassigned
    n = np.zeros((2, 3), dtype=np.int64)
    d = np.zeros((2, 3), dtype=np.int64)
    m = np.zeros((2, 3), dtype=np.int64)
    if len(pulse) == 0:
        return n, d, m, stats
    first = np.flatnonzero(np.r_[True, pulse[1:] != pulse[:-1]])
    size = np.diff(np.r_[first, len(pulse)])
    seen = np.bitwise_or.reduceat(np.left_shift(1, channel.astype(np.int64) - 1), first)
    p = pulse[first]
    a_basis = basis[first].astype(np.int64)
    a_class = intensity[first].astype(np.int64)
    a_bit = bit[first].astype(np.int64)
    z_seen, x_seen = seen & 3, (seen >> 2) & 3
    cross = (z_seen != 0) & (x_seen != 0)
    b_basis = np.where(z_seen != 0, 0, 1)
    b_basis[cross] = splitmix_bit(seed, p[cross], 0)  # hash only the few multi-clicks
    in_basis = np.where(b_basis == 0, z_seen, x_seen)
    conflict = in_basis == 3
    b_bit = in_basis >> 1
    b_bit[conflict] = splitmix_bit(seed, p[conflict], 1)
    stats[1] = np.count_nonzero(size > 1)
    stats[2] = np.count_nonzero(cross)
    stats[3] = np.count_nonzero(conflict)
    match = b_basis == a_basis
    stats[4] = np.count_nonzero(~match)
    cell = a_basis * 3 + a_class
    disclosed = match & (a_bit != 255)
    n = np.bincount(cell[match], minlength=6).reshape(2, 3)
    d = np.bincount(cell[disclosed], minlength=6).reshape(2, 3)
    m = np.bincount(cell[disclosed & (a_bit != b_bit)], minlength=6).reshape(2, 3)
    return n, d, m, stats
