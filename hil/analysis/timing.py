"""Timing analysis over time-tag arrays: count rates (more kernels to come)."""

from __future__ import annotations

import numpy as np


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
