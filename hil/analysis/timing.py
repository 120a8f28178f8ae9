"""Timing analysis over time-tag arrays: stream merging, count rates, rate time series,
coincidences, cross-correlation, clock recovery from the sync channel and pulse assignment.

Conventions (see DESIGN.md, Data): timestamps are int64 picoseconds sorted ascending, channels
uint8; channel 0 carries one sync tag every ``sync_divider`` pulses, channels 1..4 are the
detectors H, V, D, A. All functions are pure: arrays in, arrays or dataclasses out.

Typical chain from a capture to pulse indices::

    clock = recover_clock(timestamps_ps, channels, sync_divider, clock_hz)
    pulses = assign_pulses(timestamps_ps, channels, clock, delays_ps, gate_width_ps)
    index, channel = pulses.assigned()          # ask the source about `index`, then sifting.sift
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from hil.analysis import _kernels as k
from hil.analysis import _simd

SYNC_CHANNEL = 0  # hil.roles.SYNC_CHANNEL (a test checks they agree)
EDGE_INTERVALS = 1024  # sync intervals averaged for extrapolation beyond the table's ends
_VIRTUAL_PULSES = 2**32  # distance of the virtual extrapolation rows from the table's ends
# the number of link channels, 0 (sync) .. 4 (A): the length of a per-channel delay array
# (hil.roles.LINK_CHANNELS; hil.analysis imports only numpy and numba)
N_LINK_CHANNELS = 5


def _check_stream(timestamps_ps: np.ndarray, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    timestamps_ps = np.asarray(timestamps_ps)
    channels = np.asarray(channels)
    if timestamps_ps.ndim != 1 or channels.ndim != 1:
        raise ValueError("timestamps_ps and channels must be one-dimensional arrays")
    if len(timestamps_ps) != len(channels):
        raise ValueError(
            f"timestamps_ps ({len(timestamps_ps)}) and channels ({len(channels)}) differ in length"
        )
    if (
        channels.dtype != np.uint8
        and len(channels)
        and (channels.min() < 0 or channels.max() > 255)
    ):
        raise ValueError("channels must lie in 0..255 (uint8); map falling-edge channels first")
    return timestamps_ps.astype(np.int64, copy=False), channels.astype(np.uint8, copy=False)


# ---------------------------------------------------------------------------------------------
# Streams and rates
# ---------------------------------------------------------------------------------------------


def merge_channels(
    per_channel_ps: Sequence[np.ndarray], channel_ids: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-channel sorted timestamp arrays into one sorted (timestamps_ps, channels) stream.

    ``channel_ids[r]`` labels run r (default: its position). The merge is stable: tags with equal
    timestamps appear in the order of ``per_channel_ps``.
    """
    runs = [np.asarray(a, dtype=np.int64) for a in per_channel_ps]
    if channel_ids is None:
        channel_ids = list(range(len(runs)))
    if len(channel_ids) != len(runs):
        raise ValueError(f"channel_ids has {len(channel_ids)} entries for {len(runs)} arrays")
    labels = np.asarray(channel_ids, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("channel_ids must lie in 0..255 (channels are uint8)")
    for r, a in enumerate(runs):
        if a.ndim != 1 or (len(a) > 1 and np.any(a[1:] < a[:-1])):
            raise ValueError(f"per_channel_ps[{r}] must be a sorted one-dimensional array")
    lengths = np.array([len(a) for a in runs], dtype=np.int64)
    starts = np.zeros(len(runs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    flat = np.concatenate(runs) if runs else np.empty(0, dtype=np.int64)
    out_ps = np.empty(len(flat), dtype=np.int64)
    out_ch = np.empty(len(flat), dtype=np.uint8)
    k.merge_sorted_streams(flat, starts, labels.astype(np.uint8), out_ps, out_ch)
    return out_ps, out_ch


def count_rates(
    timestamps_ps: np.ndarray, channels: np.ndarray, n_channels: int, duration_ps: int
) -> np.ndarray:
    """Measure the mean count rate per channel in Hz over a capture of ``duration_ps``.

    Channels at or above ``n_channels`` are ignored. Returns float64 of length ``n_channels``.
    """
    if duration_ps <= 0:
        raise ValueError(f"duration_ps must be positive, got {duration_ps}")
    if len(timestamps_ps) != len(channels):
        raise ValueError("timestamps_ps and channels differ in length")
    counts = np.bincount(np.asarray(channels, dtype=np.intp), minlength=n_channels)[:n_channels]
    return counts / (duration_ps * 1e-12)


def rate_timeseries(
    timestamps_ps: np.ndarray,
    channels: np.ndarray,
    n_channels: int,
    bin_width_ps: int,
    start_ps: int | None = None,
    stop_ps: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Count tags per channel in consecutive time bins of width ``bin_width_ps``.

    Bins start at ``start_ps`` (default: first tag) and cover up to ``stop_ps`` (default: last
    tag, included); a last partial bin is kept. Returns (bin_start_ps int64 [n_bins],
    counts int64 [n_bins, n_channels]); divide counts by the bin width in s for rates.
    """
    timestamps_ps, channels = _check_stream(timestamps_ps, channels)
    if bin_width_ps <= 0:
        raise ValueError(f"bin_width_ps must be positive, got {bin_width_ps}")
    if start_ps is None:
        start_ps = int(timestamps_ps[0]) if len(timestamps_ps) else 0
    if stop_ps is None:
        stop_ps = int(timestamps_ps[-1]) + 1 if len(timestamps_ps) else start_ps
    n_bins = max(0, -(-(stop_ps - start_ps) // bin_width_ps))
    counts = k.rate_histogram(timestamps_ps, channels, n_channels, start_ps, bin_width_ps, n_bins)
    return start_ps + bin_width_ps * np.arange(n_bins, dtype=np.int64), counts


def coincidences(a_ps: np.ndarray, b_ps: np.ndarray, window_ps: int) -> int:
    """Count pairs of tags (one from each sorted array) with |t_b - t_a| <= window_ps."""
    if window_ps < 0:
        raise ValueError(f"window_ps must be >= 0, got {window_ps}")
    return int(
        k.count_coincidences(
            np.asarray(a_ps, dtype=np.int64), np.asarray(b_ps, dtype=np.int64), window_ps
        )
    )


@dataclass(frozen=True)
class Correlation:
    """Cross-correlation histogram: bin k covers [lag_ps[k], lag_ps[k] + bin_width_ps)."""

    lag_ps: np.ndarray  # int64 left bin edges
    counts: np.ndarray  # int64 raw pair counts
    normalised: np.ndarray  # float64, 1 for uncorrelated streams
    bin_width_ps: int


def cross_correlation(
    start_ps: np.ndarray,
    click_ps: np.ndarray,
    bin_width_ps: int,
    range_ps: int,
    duration_ps: int | None = None,
) -> Correlation:
    """Histogram of t_click - t_start over [-range_ps, +range_ps) in bins of ``bin_width_ps``.

    Normalised as the Swabian ``Correlation`` measurement: counts / (bin_width * N_start *
    N_click / duration), so that two uncorrelated Poisson streams give 1 in every bin. The
    duration defaults to the span from the first to the last tag of either stream. The sign is
    click minus start; check it against the vendor manual before comparing with a Swabian file.
    """
    start_ps = np.asarray(start_ps, dtype=np.int64)
    click_ps = np.asarray(click_ps, dtype=np.int64)
    if bin_width_ps <= 0 or range_ps <= 0 or range_ps % bin_width_ps:
        raise ValueError(
            f"range_ps ({range_ps}) must be a positive multiple of bin_width_ps ({bin_width_ps})"
        )
    n_bins = 2 * range_ps // bin_width_ps
    counts = k.correlation_histogram(start_ps, click_ps, range_ps, bin_width_ps, n_bins)
    if duration_ps is None:
        both = [a for a in (start_ps, click_ps) if len(a)]
        duration_ps = max(int(a[-1]) for a in both) - min(int(a[0]) for a in both) if both else 0
    expected = bin_width_ps * len(start_ps) * len(click_ps) / duration_ps if duration_ps else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = counts / expected if expected else np.full(n_bins, np.nan)
    lags = -range_ps + bin_width_ps * np.arange(n_bins, dtype=np.int64)
    return Correlation(lags, counts, normalised, bin_width_ps)


# ---------------------------------------------------------------------------------------------
# Clock recovery
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncStatus:
    """What a monitor needs to flag loss of sync.

    A gap is a pair of successive accepted sync tags more than one sync period apart;
    ``gap_missing[g]`` sync tags are missing between ``gap_start_ps[g]`` and ``gap_end_ps[g]``.
    ``gap_uncertain[g]`` is True when the tag ending the gap was off the period grid by more
    than the tolerance, so ``gap_missing[g]`` (and every pulse index after it) may be wrong by
    a whole number of sync periods: a monitor should treat the link as out of sync from there.
    ``n_rejected`` counts sync tags off the period grid by more than the tolerance (glitches),
    which were ignored. ``max_residual_ps`` is the largest |deviation| of an accepted sync tag
    from the grid predicted by the preceding ones (jitter plus unmodelled drift changes).
    """

    n_syncs: int
    n_rejected: int
    gap_start_ps: np.ndarray
    gap_end_ps: np.ndarray
    gap_missing: np.ndarray
    gap_uncertain: np.ndarray
    max_residual_ps: float

    @property
    def n_gaps(self) -> int:
        return len(self.gap_start_ps)

    @property
    def in_sync(self) -> bool:
        """True when at least two syncs were seen, none missing and none rejected."""
        return self.n_syncs >= 2 and self.n_gaps == 0 and self.n_rejected == 0


@dataclass(frozen=True)
class ClockRecovery:
    """Recovered tagger clock: a table of sync tags with their absolute pulse indices.

    ``table_ps[i]`` is the tagger time of pulse ``table_pulse[i]``; ``table_period_ps[i]`` is the
    pulse period between table rows i and i + 1. ``edge_period_ps`` holds the pulse periods
    averaged over the first and the last EDGE_INTERVALS intervals, used to extrapolate before
    the first and after the last sync tag. Summary figures: ``period_ps`` and ``drift_ppm``
    are averages over the whole table; ``offset_ps`` is the tagger time of pulse 0
    extrapolated with the sync period estimated over the first (up to 1024) sync intervals.
    """

    table_ps: np.ndarray
    table_pulse: np.ndarray
    table_period_ps: np.ndarray
    edge_period_ps: np.ndarray
    clock_hz: float
    sync_divider: int
    period_ps: float
    offset_ps: float
    drift_ppm: float
    status: SyncStatus
    # kernel_table() built by recover_clock around the same memory as table_ps (which is a
    # view of its rows 1..-2): saves copying the table; None for a table built elsewhere
    padded_table: tuple[np.ndarray, np.ndarray, np.ndarray, int, int] | None = field(
        default=None, repr=False, compare=False
    )

    @cached_property
    def kernel_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """The table the pulse kernels use: see kernel_table()."""
        if self.padded_table is not None:
            return self.padded_table
        return kernel_table(self.table_ps, self.table_pulse, self.edge_period_ps)

    def local_drift_ppm(self, window_syncs: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """Drift in ppm over windows of ``window_syncs`` table rows: (window start ps, drift).

        Long windows average the sync jitter down (single intervals are too noisy to show
        drift), short ones resolve a change of drift in time.
        """
        step = max(1, int(window_syncs))
        idx = np.arange(0, len(self.table_ps), step)
        if len(idx) < 2 or idx[-1] != len(self.table_ps) - 1:
            idx = np.append(idx, len(self.table_ps) - 1)
        dt = np.diff(self.table_ps[idx]).astype(np.float64)
        dn = np.diff(self.table_pulse[idx]).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            drift = (dt / dn / (1e12 / self.clock_hz) - 1.0) * 1e6
        return self.table_ps[idx[:-1]], drift


def kernel_table(
    table_ps: np.ndarray, table_pulse: np.ndarray, edge_period_ps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Pad the sync table with one virtual row 2**32 pulses before its first and after its
    last row, on the extrapolation lines of slope edge_period_ps[0] / [1]. The kernels then
    extrapolate beyond the real sync tags with these long-baseline periods without any special
    case in their inner loop. Returns (rows_ps, rows_pulse, interval_period_ps, t_first,
    t_last), the last two being the span of the real sync tags.
    """
    rows_ps = np.empty(len(table_ps) + 2, dtype=np.int64)
    rows_pulse = np.empty(len(table_ps) + 2, dtype=np.int64)
    rows_ps[1:-1] = table_ps
    rows_pulse[1:-1] = table_pulse
    return _pad_rows(rows_ps, rows_pulse, edge_period_ps)


def _pad_rows(
    rows_ps: np.ndarray,
    rows_pulse: np.ndarray,
    edge_period_ps: np.ndarray,
    period: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Fill the virtual first and last rows of a padded table (rows 1..-2 hold the real
    table) in place and compute the interval periods: kernel_table's result. ``period``:
    the real intervals' periods already computed (entries 1..-2), then only the two
    virtual intervals' are."""
    rows_ps[0] = rows_ps[1] - int(round(_VIRTUAL_PULSES * edge_period_ps[0]))
    rows_ps[-1] = rows_ps[-2] + int(round(_VIRTUAL_PULSES * edge_period_ps[1]))
    rows_pulse[0] = rows_pulse[1] - _VIRTUAL_PULSES
    rows_pulse[-1] = rows_pulse[-2] + _VIRTUAL_PULSES
    if period is None:
        period = k.interval_periods(rows_ps, rows_pulse, np.empty(len(rows_ps) - 1))
    else:
        k.interval_periods(rows_ps[:2], rows_pulse[:2], period[:1])
        k.interval_periods(rows_ps[-2:], rows_pulse[-2:], period[-1:])
    return rows_ps, rows_pulse, period, int(rows_ps[1]), int(rows_ps[-2])


def _initial_sync_period(sync_ps: np.ndarray, nominal_ps: float) -> float:
    """Median tagger sync period over the first intervals (robust to a few gaps and glitches)."""
    dt = np.diff(sync_ps[:1025]).astype(np.float64)
    steps = np.floor(dt / nominal_ps + 0.5)
    good = steps >= 1
    if not np.any(good):
        raise ValueError(
            "sync tags are closer than half the nominal sync period: check clock_hz and "
            "sync_divider"
        )
    return float(np.median(dt[good] / steps[good]))


def build_sync_table(
    timestamps_ps: np.ndarray,
    channels: np.ndarray,
    sync_channel: int,
    period0_ps: float,
    smoothing: float,
    max_fraction: float,
    pad: int = 0,
    origin_ps: float = 0.0,
    divider: int = 1,
) -> tuple:
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

    ``origin_ps`` and ``divider`` turn the counts into absolute pulses (see
    _kernels.number_sync_tags); the seventh result holds the interval periods between
    consecutive rows (interval_periods' values; the two around the padding unfilled).
    The arrays are allocated here by numpy, which asks the kernel for huge pages on large
    arrays (numba's allocations do not: page faults on fresh table memory were a third of
    clock recovery), and the sync tags are extracted with AVX-512 when the CPU has it.
    """
    if _simd.AVAILABLE:
        n = k.count_channel_simd(channels, sync_channel)
        table_ps = np.empty(n + 1 + 2 * pad + _simd.BLOCK, dtype=np.int64)
        k.sync_tags_into_simd(timestamps_ps, channels, sync_channel, table_ps, pad)
    else:
        n = k.count_channel(channels, sync_channel)
        table_ps = np.empty(n + 1 + 2 * pad, dtype=np.int64)
        k.sync_tags_into(timestamps_ps, channels, sync_channel, table_ps, pad)
    period = np.empty(max(n + 2 * pad - 1, 0))
    result = k.number_sync_tags(
        table_ps,
        np.empty(n + 2 * pad, dtype=np.int64),
        n,
        pad,
        period0_ps,
        smoothing,
        max_fraction,
        origin_ps,
        divider,
        period,
    )
    return (*result, period[: max(len(result[0]) - 1, 0)])


def recover_clock(
    timestamps_ps: np.ndarray,
    channels: np.ndarray,
    sync_divider: int,
    clock_hz: float,
    sync_channel: int = SYNC_CHANNEL,
    smoothing: float = 1.0 / 16.0,
    max_residual_fraction: float = 0.25,
) -> ClockRecovery:
    """Recover the pulse clock from the sync channel: table of (tagger time, pulse index).

    Design: the tagger time of a pulse is interpolated linearly between the two neighbouring
    sync tags instead of being taken from one global linear fit. A change of drift mid-capture
    then only affects the interval in which it happens, and the timing error of a pulse stays
    below the jitter of its two sync tags whatever the capture length; a global fit would
    accumulate (change of drift) x (time) into the residuals.

    Sync tags are numbered sequentially: each interval is divided by a running estimate of the
    sync period (exponentially smoothed with weight ``smoothing``, so it follows drift) and
    rounded, so a gap of missing syncs adds the right number of periods as long as the timing
    error accumulated over the gap (period estimate error and drift change, times the gap
    length) stays below half a sync period; above ``max_residual_fraction`` of a period the
    gap is flagged uncertain. Isolated tags off the grid by more than that are rejected as
    glitches and counted. The absolute
    index of the first sync is round(t_first / sync period): valid when the offset is below
    half a sync period (data convention in DESIGN.md) and the drift was constant before it.
    """
    timestamps_ps, channels = _check_stream(timestamps_ps, channels)
    if sync_divider < 1:
        raise ValueError(f"sync_divider must be >= 1, got {sync_divider}")
    if clock_hz <= 0:
        raise ValueError(f"clock_hz must be positive, got {clock_hz}")
    first = k.first_tags(timestamps_ps, channels, sync_channel, 1025)
    if len(first) < 2:
        raise ValueError(
            f"clock recovery needs at least 2 sync tags on channel {sync_channel}, found "
            f"{len(first)}: check the sync cable and the sync channel number"
        )
    period0 = _initial_sync_period(first, sync_divider * 1e12 / clock_hz)
    # pad = 1: the table comes with room for kernel_table's virtual rows (no copy of it later)
    # and pulses (round(first sync tag / sync period) + sync count) * divider
    rows_ps, rows_pulse, n_seen, max_res, gap_rows, gap_uncertain, period = build_sync_table(
        timestamps_ps,
        channels,
        sync_channel,
        period0,
        smoothing,
        max_residual_fraction,
        pad=1,
        origin_ps=period0,
        divider=sync_divider,
    )
    table_ps = rows_ps[1:-1]
    if len(table_ps) < 2:
        raise ValueError("fewer than 2 sync tags lie on a common period grid: sync is unusable")
    table_pulse = rows_pulse[1:-1]
    steps = (table_pulse[gap_rows] - table_pulse[gap_rows - 1]) // sync_divider
    edge = min(EDGE_INTERVALS, len(table_ps) - 1)
    edge_period = np.array(
        [
            (table_ps[edge] - table_ps[0]) / float(table_pulse[edge] - table_pulse[0]),
            (table_ps[-1] - table_ps[-1 - edge]) / float(table_pulse[-1] - table_pulse[-1 - edge]),
        ]
    )
    padded = _pad_rows(rows_ps, rows_pulse, edge_period, period)
    status = SyncStatus(
        n_syncs=len(table_ps),
        n_rejected=int(n_seen - len(table_ps)),
        gap_start_ps=table_ps[gap_rows - 1],
        gap_end_ps=table_ps[gap_rows],
        gap_missing=steps - 1,
        gap_uncertain=gap_uncertain,
        max_residual_ps=float(max_res),
    )
    period = float(table_ps[-1] - table_ps[0]) / float(table_pulse[-1] - table_pulse[0])
    return ClockRecovery(
        table_ps=table_ps,
        table_pulse=table_pulse,
        table_period_ps=padded[2][1:-1],
        edge_period_ps=edge_period,
        clock_hz=float(clock_hz),
        sync_divider=int(sync_divider),
        period_ps=period,
        offset_ps=float(table_ps[0] - table_pulse[0] * (period0 / sync_divider)),
        drift_ppm=(period * clock_hz * 1e-12 - 1.0) * 1e6,
        status=status,
        padded_table=padded,
    )


def recover_clock_from_sync(
    sync_ps: np.ndarray,
    sync_divider: int,
    clock_hz: float,
    smoothing: float = 1.0 / 16.0,
    max_residual_fraction: float = 0.25,
) -> ClockRecovery:
    """As recover_clock, from the sync tags' timestamps alone (sorted int64 ps)."""
    sync_ps = np.asarray(sync_ps, dtype=np.int64)
    return recover_clock(
        sync_ps,
        np.zeros(len(sync_ps), dtype=np.uint8),
        sync_divider,
        clock_hz,
        sync_channel=0,
        smoothing=smoothing,
        max_residual_fraction=max_residual_fraction,
    )


# ---------------------------------------------------------------------------------------------
# Pulse assignment
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PulseAssignment:
    """Pulse index per detection (in stream order), -1 for detections outside every gate.

    ``n_outside[c]`` counts channel c's detections outside every gate window (noise: dark
    counts, afterpulses, stray light); they are kept in ``pulse_index`` as -1, never dropped.
    ``n_outside_table`` counts detections before the first or after the last usable sync
    tag, whose pulse index was extrapolated (a monitor may treat them as out of sync).
    """

    pulse_index: np.ndarray  # int64 [n_detections]
    channels: np.ndarray  # uint8 [n_detections]
    n_outside: np.ndarray  # int64 [n_channels]
    n_outside_table: int

    def assigned(self) -> tuple[np.ndarray, np.ndarray]:
        """(pulse_index, channel) of the detections inside a gate window."""
        keep = self.pulse_index >= 0
        return self.pulse_index[keep], self.channels[keep]


def _delays(delays_ps: Sequence[int] | np.ndarray | None, n_channels: int) -> np.ndarray:
    if delays_ps is None:
        return np.zeros(n_channels, dtype=np.int64)
    delays = np.asarray(delays_ps, dtype=np.int64)
    if delays.ndim != 1 or len(delays) < 2:
        raise ValueError("delays_ps must list one delay per channel, index = channel number")
    return delays


def _search_delay(delays: np.ndarray, sync_channel: int) -> int:
    """Delay used to pick a detection's sync interval: the middle of the detector delays, so
    that no channel's pulse time lies farther outside its interval than half their spread."""
    det = np.delete(delays, sync_channel) if sync_channel < len(delays) else delays
    return int((det.min() + det.max()) // 2) if len(det) else 0


def assign_pulses(
    timestamps_ps: np.ndarray,
    channels: np.ndarray,
    clock: ClockRecovery,
    delays_ps: Sequence[int] | np.ndarray | None = None,
    gate_width_ps: float | None = None,
    sync_channel: int = SYNC_CHANNEL,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> PulseAssignment:
    """Give each detector tag the absolute index of the pulse whose gate window contains it.

    ``delays_ps[c]`` is channel c's delay relative to the sync (index = channel number, the
    sync's own entry is unused; default zeros for channels 0..4); channels at or beyond
    ``len(delays_ps)`` are ignored (markers). Delays may be long (fibre): the sync interval of
    a tag is looked up with the middle of the channel delays (see _kernels.nearest_pulse).
    Pulse i's window is [t_i - gate/2, t_i + gate/2) around its interpolated tagger time t_i
    plus the delay. The gate defaults to the full pulse period; it may not exceed it (windows
    would overlap).

    ``out`` = (int64 array, uint8 array), each of at least len(timestamps_ps) + 1 elements,
    lets a caller that analyses capture after capture reuse its buffers: the result's
    pulse_index and channels are then views of them (valid until the next call that reuses
    them). Fresh arrays of a few hundred MB cost more in first-touch page faults than the
    assignment itself.
    """
    timestamps_ps, channels = _check_stream(timestamps_ps, channels)
    delays = _delays(delays_ps, N_LINK_CHANNELS)
    nominal_pulse_ps = 1e12 / clock.clock_hz
    if gate_width_ps is None:
        gate_width_ps = nominal_pulse_ps
    if not 0 < gate_width_ps <= nominal_pulse_ps * (1 + 1e-3):
        raise ValueError(
            f"gate_width_ps ({gate_width_ps}) must be positive and at most the pulse period "
            f"({nominal_pulse_ps:.1f} ps)"
        )
    if out is None:
        # outputs sized by a counting pass and allocated here: the kernel allocates nothing
        n_det = k.count_detector_tags(channels, sync_channel, len(delays))
        # spare slots: 1 for the scalar kernel, a block for the vector one's vector stores
        pulse = np.empty(n_det + _simd.ASSIGN_BLOCK, dtype=np.int64)
        det_ch = np.empty(n_det + _simd.ASSIGN_BLOCK, dtype=np.uint8)
    else:
        pulse, det_ch = out
        if (
            not isinstance(pulse, np.ndarray)
            or not isinstance(det_ch, np.ndarray)
            or pulse.dtype != np.int64
            or det_ch.dtype != np.uint8
            or pulse.ndim != 1
            or det_ch.ndim != 1
            or min(len(pulse), len(det_ch)) < len(timestamps_ps) + 1
        ):
            raise ValueError(
                "out must be (int64 array, uint8 array), one-dimensional, each of at least "
                f"len(timestamps_ps) + 1 = {len(timestamps_ps) + 1} elements"
            )
    kernel = k.assign_pulses_gated_simd if _simd.AVAILABLE else k.assign_pulses_gated
    n_outside, n_outside_table, n_det = kernel(
        timestamps_ps,
        channels,
        sync_channel,
        delays,
        _search_delay(delays, sync_channel),
        *clock.kernel_table,
        gate_width_ps / 2.0,
        pulse,
        det_ch,
    )
    return PulseAssignment(pulse[:n_det], det_ch[:n_det], n_outside, int(n_outside_table))


def pulse_residuals(
    timestamps_ps: np.ndarray,
    channels: np.ndarray,
    clock: ClockRecovery,
    delays_ps: Sequence[int] | np.ndarray | None = None,
    sync_channel: int = SYNC_CHANNEL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest pulse index, residual to that pulse's time (ps, in [-period/2, period/2)) and
    channel of every detector tag, ungated; for timing histograms and delay calibration."""
    timestamps_ps, channels = _check_stream(timestamps_ps, channels)
    delays = _delays(delays_ps, N_LINK_CHANNELS)
    n_det = k.count_detector_tags(channels, sync_channel, len(delays))
    pulse = np.empty(n_det, dtype=np.int64)
    residual = np.empty(n_det, dtype=np.float64)
    det_ch = np.empty(n_det, dtype=np.uint8)
    k.nearest_pulse(
        timestamps_ps,
        channels,
        sync_channel,
        delays,
        _search_delay(delays, sync_channel),
        *clock.kernel_table,
        pulse,
        residual,
        det_ch,
        np.empty(n_det, dtype=np.bool_),
    )
    return pulse, residual, det_ch


def estimate_delays(
    timestamps_ps: np.ndarray,
    channels: np.ndarray,
    clock: ClockRecovery,
    n_channels: int = N_LINK_CHANNELS,
    bin_width_ps: int = 10,
    refine_half_width_ps: float = 100.0,
    sync_channel: int = SYNC_CHANNEL,
) -> np.ndarray:
    """Estimate each channel's delay modulo the pulse period from its residual histogram peak.

    With zero delays every detection's residual to its nearest pulse is histogrammed over one
    period (bins of ``bin_width_ps``); the estimate is the mean residual within
    ``refine_half_width_ps`` of the peak bin (taken on the circle, so a peak at +-period/2
    is not split), which is finer than a bin and insensitive to a flat-topped peak. Only the
    fraction of a period is observable: a delay of whole pulses (fibre length) needs a
    correlation with the source's answers. Result in [-period/2, period/2); channels without
    detections (and the sync) get 0. int64 [n_channels].
    """
    _, residual, det_ch = pulse_residuals(
        timestamps_ps, channels, clock, np.zeros(n_channels, dtype=np.int64), sync_channel
    )
    period = clock.period_ps
    n_bins = max(1, int(np.ceil(period / bin_width_ps)))
    delays = np.zeros(n_channels, dtype=np.int64)
    for c in range(n_channels):
        r = residual[det_ch == c]
        if c == sync_channel or len(r) == 0:
            continue
        hist = np.bincount(
            np.clip(((r + period / 2) // bin_width_ps).astype(np.int64), 0, n_bins - 1),
            minlength=n_bins,
        )
        peak = -period / 2 + (int(np.argmax(hist)) + 0.5) * bin_width_ps
        around = (r - peak + period / 2) % period - period / 2  # circular distance to the peak
        near = np.abs(around) <= refine_half_width_ps
        estimate = peak + around[near].mean()
        delays[c] = int(round((estimate + period / 2) % period - period / 2))
    return delays
