"""Fused analysis chain: from raw tags and the source's answers straight to sifted counts, in one
pass without per-tag output; the same numbers as recover_clock + assign_pulses + sift.

``count_classes`` is for a caller that already holds the source's answers for (a superset of)
the pulses that will be detected, e.g. a second pass over a capture, or an emulated source
whose choices are known. It needs no per-tag buffers (the three-stage chain writes 9 bytes per
detection). Measured by benchmarks/bench_analysis.py, it is about as fast as the three stages
with reused buffers: the chain is bound by per-tag instructions (division, rounding, the
once-per-sync interval change, the per-pulse histogram update), not by memory traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hil.analysis import _kernels as k
from hil.analysis import sifting, timing


@dataclass(frozen=True)
class ChainCounts:
    """What count_classes measures: the sifted counts plus the figures a monitor needs.

    ``n_outside`` / ``n_outside_table`` are those of timing.PulseAssignment; ``n_syncs``,
    ``n_rejected``, ``n_gaps`` and ``n_gaps_uncertain`` those of timing.SyncStatus (n_gaps_uncertain
    = number of True in gap_uncertain). ``fused`` is False when the one-pass kernel handed over
    to the three-stage chain (in-gate detections not in pulse order, e.g. long per-channel delay
    differences; the numbers are the same, only slower).
    """

    sift: sifting.SiftCounts
    n_outside: np.ndarray
    n_outside_table: int
    n_syncs: int
    n_rejected: int
    n_gaps: int
    n_gaps_uncertain: int
    fused: bool


def _answer_lookup(answer_pulse, pulse, answers):
    """Answers of the rows ``pulse`` (-1 rows get 0); a pulse without an answer is an error."""
    pos = np.searchsorted(answer_pulse, pulse)
    pos_c = np.minimum(pos, max(len(answer_pulse) - 1, 0))
    valid = pulse >= 0
    found = (
        (pos < len(answer_pulse)) & (answer_pulse[pos_c] == pulse)
        if len(answer_pulse)
        else (np.zeros(len(pulse), dtype=bool))
    )
    missing = valid & ~found
    if np.any(missing):
        raise _no_answer(int(pulse[np.argmax(missing)]))
    return [
        np.where(valid, a[pos_c], 0).astype(np.uint8) if len(a) else np.zeros(len(pulse), np.uint8)
        for a in answers
    ]


def _no_answer(pulse: int) -> ValueError:
    return ValueError(
        f"no answer for detected pulse {pulse}: answer_pulse must be strictly increasing and "
        "list every pulse detected inside a gate"
    )


def count_classes(
    timestamps_ps: np.ndarray,
    channels: np.ndarray,
    sync_divider: int,
    clock_hz: float,
    answer_pulse: np.ndarray,
    basis: np.ndarray,
    intensity: np.ndarray,
    bit: np.ndarray,
    delays_ps: Sequence[int] | np.ndarray | None = None,
    gate_width_ps: float | None = None,
    seed: int = 0,
    sync_channel: int = timing.SYNC_CHANNEL,
    smoothing: float = 1.0 / 16.0,
    max_residual_fraction: float = 0.25,
) -> ChainCounts:
    """Sifted counts of a capture in one pass: equivalent to

        clock = recover_clock(timestamps_ps, channels, sync_divider, clock_hz, sync_channel,
                              smoothing, max_residual_fraction)
        pulses = assign_pulses(timestamps_ps, channels, clock, delays_ps, gate_width_ps,
                               sync_channel)
        sift(pulses.pulse_index, pulses.channels, <answers of those pulses>, seed=seed)

    with identical counts (same sync numbering, gap and glitch handling, extrapolation beyond
    the sync table, gate edges and multi-click squashing) and the same errors for unusable
    sync or invalid channels / answers. The source's answers are rows: ``answer_pulse``
    (int64, strictly increasing) with ``basis``, ``intensity`` and ``bit`` (uint8, conventions
    of sifting.sift); they must cover every pulse detected inside a gate and may list others.
    """
    timestamps_ps, channels = timing._check_stream(timestamps_ps, channels)
    if sync_divider < 1:
        raise ValueError(f"sync_divider must be >= 1, got {sync_divider}")
    if clock_hz <= 0:
        raise ValueError(f"clock_hz must be positive, got {clock_hz}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in 0 .. 2**63 - 1, got {seed}")
    ans = [np.asarray(a) for a in (answer_pulse, basis, intensity, bit)]
    if len({len(a) for a in ans}) != 1 or any(a.ndim != 1 for a in ans):
        raise ValueError(
            "answer_pulse, basis, intensity and bit must be 1-D arrays of equal length"
        )
    for name, a in zip(("basis", "intensity", "bit"), ans[1:], strict=True):
        if a.dtype != np.uint8 and len(a) and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"{name} must hold uint8 values (0..255)")
    ans_pulse = ans[0].astype(np.int64, copy=False)
    ans_b, ans_c, ans_bit = (a.astype(np.uint8, copy=False) for a in ans[1:])
    delays = timing._delays(delays_ps, timing.DETECTOR_CHANNELS)
    nominal_pulse_ps = 1e12 / clock_hz
    if gate_width_ps is None:
        gate_width_ps = nominal_pulse_ps
    if not 0 < gate_width_ps <= nominal_pulse_ps * (1 + 1e-3):
        raise ValueError(
            f"gate_width_ps ({gate_width_ps}) must be positive and at most the pulse period "
            f"({nominal_pulse_ps:.1f} ps)"
        )
    first = k.first_tags(timestamps_ps, channels, sync_channel, 1025)
    if len(first) < 2:
        raise ValueError(
            f"clock recovery needs at least 2 sync tags on channel {sync_channel}, found "
            f"{len(first)}: check the sync cable and the sync channel number"
        )
    period0 = timing._initial_sync_period(first, sync_divider * 1e12 / clock_hz)
    hist, stats, n_outside, n_outside_table, info, code, code_pulse = k.fused_chain_counts(
        timestamps_ps,
        channels,
        sync_channel,
        period0,
        smoothing,
        max_residual_fraction,
        sync_divider,
        delays,
        timing._search_delay(delays, sync_channel),
        gate_width_ps / 2.0,
        ans_pulse,
        ans_b,
        ans_c,
        ans_bit,
        seed,
    )
    if code == -3:
        raise ValueError("fewer than 2 sync tags lie on a common period grid: sync is unusable")
    if code == -4:
        raise _no_answer(int(code_pulse))
    if code == -2:
        return _three_stage(
            timestamps_ps,
            channels,
            sync_divider,
            clock_hz,
            ans_pulse,
            (ans_b, ans_c, ans_bit),
            delays,
            gate_width_ps,
            seed,
            sync_channel,
            smoothing,
            max_residual_fraction,
        )
    n, d, m, stats, _ = k._sift_result(hist, stats, -1)
    return ChainCounts(
        sift=sifting.SiftCounts(
            n=n,
            d=d,
            m=m,
            n_unassigned=int(stats[0]),
            n_multi_click=int(stats[1]),
            n_cross_basis=int(stats[2]),
            n_conflicting=int(stats[3]),
            n_basis_mismatch=int(stats[4]),
        ),
        n_outside=n_outside,
        n_outside_table=int(n_outside_table),
        n_syncs=int(info[0]),
        n_rejected=int(info[1] - info[0]),
        n_gaps=int(info[2]),
        n_gaps_uncertain=int(info[3]),
        fused=True,
    )


def _three_stage(
    timestamps_ps,
    channels,
    sync_divider,
    clock_hz,
    ans_pulse,
    answers,
    delays,
    gate_width_ps,
    seed,
    sync_channel,
    smoothing,
    max_residual_fraction,
) -> ChainCounts:
    """The chain count_classes is equivalent to, as separate stages (also its fallback)."""
    clock = timing.recover_clock(
        timestamps_ps,
        channels,
        sync_divider,
        clock_hz,
        sync_channel,
        smoothing,
        max_residual_fraction,
    )
    pulses = timing.assign_pulses(
        timestamps_ps, channels, clock, delays, gate_width_ps, sync_channel
    )
    looked_up = _answer_lookup(ans_pulse, pulses.pulse_index, answers)
    counts = sifting.sift(pulses.pulse_index, pulses.channels, *looked_up, seed=seed)
    st = clock.status
    return ChainCounts(
        sift=counts,
        n_outside=pulses.n_outside,
        n_outside_table=pulses.n_outside_table,
        n_syncs=st.n_syncs,
        n_rejected=st.n_rejected,
        n_gaps=st.n_gaps,
        n_gaps_uncertain=int(np.count_nonzero(st.gap_uncertain)),
        fused=False,
    )
