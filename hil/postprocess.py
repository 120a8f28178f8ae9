"""From a capture to a secure key rate: clock recovery, pulse assignment, the sifting exchange
with the source, per-class counts, QBER and the finite-key length.

The numbers come from ``hil.analysis`` (pure functions); this module only feeds them: it reads
the tags from the capture file and asks the source (through its driver) for the basis,
intensity and disclosed bits of the detected pulses. Disclosed Z-basis bits are public after
the exchange, so they are removed from the key block; undisclosed key bits never leave the
source and are not seen here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from .analysis.finitekey import FiniteKeyResult, finite_key_three_intensity, lim_bounds_core
from .analysis.sifting import SiftCounts, sift
from .analysis.timing import (
    SYNC_CHANNEL,
    ClockRecovery,
    assign_pulses,
    estimate_delays,
    recover_clock,
)
from .roles import DETECTOR_CHANNELS  # the channel map (re-exported for the monitor)

# Sifter: (unique sorted pulse indices) -> (basis, intensity class, bit or 255)
Sifter = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class LinkSettings:
    """What post-processing must know of the source (read from its driver)."""

    clock_hz: float
    sync_divider: int
    mu: tuple[float, float, float]
    p_mu: tuple[float, float, float]
    p_z: float  # probability that the source prepares the key basis Z

    @classmethod
    def from_source(cls, source) -> LinkSettings:
        return cls(
            float(source.clock_hz),
            int(source.sync_divider),
            tuple(source.intensities),
            tuple(source.probabilities),
            float(source.z_probability),
        )


@dataclass
class KeyParameters:
    """Security parameters of the finite-key bound (Lim et al., PRA 89, 022307 (2014))."""

    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    f_ec: float = 1.16

    @classmethod
    def from_conditions(cls, conditions: dict) -> KeyParameters:
        """The parameters a criterion's conditions state (``eps_sec``, ``eps_cor``, ``f_ec``);
        the defaults above for those it leaves out."""
        d = cls()
        return cls(
            float(conditions.get("eps_sec", d.eps_sec)),
            float(conditions.get("eps_cor", d.eps_cor)),
            float(conditions.get("f_ec", d.f_ec)),
        )

    def as_conditions(self) -> dict:
        """The parameters as verdict conditions (a report shows the ones actually used)."""
        return asdict(self)


@dataclass
class WindowResult:
    """Post-processing of one span of link time."""

    t_start_ps: int
    t_stop_ps: int
    counts: SiftCounts
    key: FiniteKeyResult
    detections: int
    outside_gate: int
    # what the key was computed with (for its uncertainty); None on results built by hand
    link: LinkSettings | None = field(default=None, repr=False)
    key_params: KeyParameters | None = field(default=None, repr=False)

    @property
    def duration_s(self) -> float:
        return (self.t_stop_ps - self.t_start_ps) * 1e-12

    @property
    def secure_key_rate(self) -> float:
        """Finite-key secure key rate in bit/s (0 when the bound aborts)."""
        return self.key.key_length / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def secure_key_rate_uncertainty(self) -> float:
        """Standard uncertainty of :attr:`secure_key_rate` from counting statistics (bit/s),
        see :func:`key_length_uncertainty`; NaN when the bound is not finite."""
        if self.duration_s <= 0 or self.link is None:
            return float("nan")
        return key_length_uncertainty(self.counts, self.link, self.key_params) / self.duration_s

    @property
    def qber_z(self) -> float:
        return self.counts.qber_z

    @property
    def qber_x(self) -> float:
        d, m = self.counts.d[1].sum(), self.counts.m[1].sum()
        return float(m / d) if d else float("nan")

    def summary(self) -> dict:
        """JSON-able summary (counts and bounds; no key material)."""
        q = self.counts.qber
        return {
            "t_start_s": self.t_start_ps * 1e-12,
            "t_stop_s": self.t_stop_ps * 1e-12,
            "detections": self.detections,
            "outside_gate": self.outside_gate,
            "n": self.counts.n.tolist(),
            "d": self.counts.d.tolist(),
            "m": self.counts.m.tolist(),
            "qber_per_basis_and_class": np.where(np.isfinite(q), q, -1.0).tolist(),
            "qber_z": self.qber_z,
            "qber_x": self.qber_x,
            "multi_clicks": self.counts.n_multi_click,
            "secure_key_rate_bps": self.secure_key_rate,
            "key": self.key.as_dict(),
        }


@dataclass
class KeyAnalysis:
    """A whole capture analysed: the clock, the gate, per-window and overall results."""

    clock: ClockRecovery
    delays_ps: np.ndarray
    total: WindowResult
    windows: list[WindowResult] = field(default_factory=list)
    frame_shift: int = 0  # sync periods added to the recovered pulse indices
    span_clocks: list[ClockRecovery] = field(default_factory=list)  # one per analysed span
    # the receiver's key frame of this analysis (pulse indices, bits, intensity classes): in
    # memory only, for distillation; never summarised or stored
    key_frame: tuple | None = field(default=None, repr=False)
    distilled: dict | None = None  # distillation of the key (lengths and counts, no bits)

    @property
    def distilled_key_rate(self) -> float:
        """Secure key rate of the distilled key in bit/s (NaN when not distilled)."""
        if self.distilled is None:
            return float("nan")
        d = self.total.duration_s
        return self.distilled["key_bits"] / d if d > 0 else 0.0

    def summary(self) -> dict:
        clocks = self.span_clocks or [self.clock]
        st = [c.status for c in clocks]
        return {
            "clock": {
                "period_ps": self.clock.period_ps,
                "offset_ps": self.clock.offset_ps,
                "drift_ppm": float(np.mean([c.drift_ppm for c in clocks])),
                "n_syncs": sum(x.n_syncs for x in st),
                "sync_gaps": sum(x.n_gaps for x in st),
                "max_residual_ps": max(x.max_residual_ps for x in st),
                "in_sync": all(x.in_sync for x in st),
                "spans": len(clocks),
            },
            "delays_ps": self.delays_ps.tolist(),
            "total": self.total.summary(),
            "windows": [w.summary() for w in self.windows],
            **({"distilled": self.distilled} if self.distilled is not None else {}),
        }


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted unique values; pulse indices arrive almost sorted, where a sort plus a
    neighbour comparison is much faster than np.unique's hash path."""
    if len(values) > 1 and np.any(values[1:] < values[:-1]):
        values = np.sort(values, kind="stable")
    if len(values) == 0:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


MAX_FRAME_SHIFT_SYNCS = 64
FRAME_SAMPLE = 3000
_WRONG_FRAME_ERROR = 0.35  # a right frame shows the link's QBER (< 25 % even under attack)


def _shift_error_rates(sp, sd, shifts, sync_divider, sifter) -> tuple[np.ndarray, np.ndarray]:
    """Error rate on the disclosed, basis-matched bits of the sample ``sp`` (pulse indices) with
    detectors ``sd``, for each candidate frame shift; also the number of such bits."""
    cand = sp[None, :] + np.asarray(shifts)[:, None] * sync_divider
    ok = cand >= 0
    flat = np.where(ok, cand, 0).ravel()
    uniq = _sorted_unique(flat)
    b, _, bit = sifter(uniq)
    pos = np.searchsorted(uniq, flat)
    b, bit = b[pos].reshape(cand.shape), bit[pos].reshape(cand.shape)
    bob_basis = (sd >= 3).astype(np.uint8)[None, :]  # channels 3, 4 = D, A measure X
    bob_bit = ((sd - 1) % 2).astype(np.uint8)[None, :]  # V and A report bit 1
    use = ok & (b == bob_basis) & (bit != 255)
    n = use.sum(axis=1)
    err = np.where(n > 0, ((bit != bob_bit) & use).sum(axis=1) / np.maximum(n, 1), 1.0)
    return err, n


def align_frames(
    pulse: np.ndarray,
    det: np.ndarray,
    sync_divider: int,
    sifter: Sifter,
    *,
    hint: int | None = None,
    max_shift_syncs: int = MAX_FRAME_SHIFT_SYNCS,
) -> int:
    """Find the whole number of sync periods to add to the recovered pulse indices.

    A sample of detections is sifted against the source's answers at every candidate shift:
    the right one shows the link's error rate on the disclosed bits, a wrong one about 50 %
    (bases and bits are independent across pulses). Only the sample's bases and disclosed bits
    are used, nothing of the key. Raises ValueError when no shift within +-``max_shift_syncs``
    gives an error rate below 35 %.
    """
    if len(pulse) == 0:
        return hint or 0
    take = np.linspace(0, len(pulse) - 1, min(FRAME_SAMPLE, len(pulse))).astype(np.int64)
    sp, sd = pulse[take], det[take]

    if hint is not None:
        err, n = _shift_error_rates(sp, sd, [hint], sync_divider, sifter)
        if n[0] and err[0] < _WRONG_FRAME_ERROR:
            return hint
    shifts = np.arange(-max_shift_syncs, max_shift_syncs + 1)
    err, n = _shift_error_rates(sp, sd, shifts, sync_divider, sifter)
    best = int(np.argmin(err))
    if err[best] >= _WRONG_FRAME_ERROR:
        raise ValueError(
            f"no frame alignment within +-{max_shift_syncs} sync periods (best error rate "
            f"{err[best]:.0%} on {int(n[best])} disclosed bits): is the source's pattern seed "
            "the one the capture was made with?"
        )
    return int(shifts[best])


def _window_counts(pulse, det, answers, idx_sorted, seed: int) -> SiftCounts:
    pos = np.searchsorted(idx_sorted, pulse)
    basis, intensity, bit = (a[pos] for a in answers)
    return sift(pulse, det, basis, intensity, bit, seed=seed)


def _key(counts: SiftCounts, link: LinkSettings, kp: KeyParameters) -> FiniteKeyResult:
    # Disclosed Z bits were announced for QBER estimation: they leave the key block.
    n_z_key = counts.n[0] - counts.d[0]
    qber = counts.qber_z
    if not np.isfinite(qber):
        qber = 0.5  # no disclosed sample: assume the worst
    return finite_key_three_intensity(
        n_z_key,
        counts.n_x,
        counts.m_x,
        qber,
        link.mu,
        link.p_mu,
        eps_sec=kp.eps_sec,
        eps_cor=kp.eps_cor,
        f_ec=kp.f_ec,
    )


def key_length_uncertainty(
    counts: SiftCounts, link: LinkSettings, kp: KeyParameters | None = None
) -> float:
    """Standard uncertainty (bits) of the finite-key length bound of ``counts`` from counting
    statistics, by first-order propagation (the delta method).

    The counts that enter the bound are sums of independent Poisson counts: per intensity class
    the undisclosed Z detections (n_Z - d_Z), the X detections without and with an error
    (n_X - m_X, m_X), and over all classes the disclosed Z bits without and with an error (they
    set the QBER of the error-correction leak). Each count c has variance c; the bound's
    variance is sum_c (d ell / d c)^2 c, the derivative taken as the central difference
    (ell(c + sqrt c) - ell(c - sqrt c)) / (2 sqrt c) on the continuous bound (before flooring).
    The derivative is the bound's own, so the uncertainty says how far the same link would
    move the bound between runs, not how far the bound is from the true key length."""
    kp = kp or KeyParameters()
    n, d, m = (np.asarray(a, dtype=float) for a in (counts.n, counts.d, counts.m))
    # independent components: 3 undisclosed Z, 3 X correct, 3 X errors, Z disclosed ok/errors
    base = np.concatenate([n[0] - d[0], n[1] - m[1], m[1], [d[0].sum() - m[0].sum(), m[0].sum()]])
    steps = np.sqrt(base)
    live = np.flatnonzero(steps > 0)  # a zero count has zero variance
    rows = np.repeat(base[None, :], 1 + 2 * len(live), axis=0)
    rows[1 + np.arange(len(live)), live] += steps[live]
    rows[1 + len(live) + np.arange(len(live)), live] -= steps[live]
    n_z, n_x_ok, m_x = rows[:, 0:3], rows[:, 3:6], rows[:, 6:9]
    d_ok, d_err = rows[:, 9], rows[:, 10]
    with np.errstate(divide="ignore", invalid="ignore"):
        qber = np.where(d_ok + d_err > 0, d_err / (d_ok + d_err), 0.5)  # as _key: none -> worst
    bounds = lim_bounds_core(
        n_z,
        n_x_ok + m_x,
        m_x,
        qber,
        np.asarray(link.mu, dtype=float),
        np.asarray(link.p_mu, dtype=float),
        kp.eps_sec,
        kp.eps_cor,
        kp.f_ec,
    )
    ell = np.asarray(bounds["length_bound"], dtype=float)
    if not np.all(np.isfinite(ell)):
        return float("nan")
    k = len(live)
    slope = (ell[1 : 1 + k] - ell[1 + k :]) / (2 * steps[live])
    return float(np.sqrt(np.sum(slope**2 * base[live])))


def analyse_tags(
    timestamps_ps: np.ndarray,
    channels: np.ndarray,
    link: LinkSettings,
    sifter: Sifter,
    *,
    t_start_ps: int | None = None,
    t_stop_ps: int | None = None,
    window_s: float | None = None,
    delays_ps: np.ndarray | None = None,
    gate_width_ps: float | None = None,
    key_params: KeyParameters | None = None,
    seed: int = 0,
    frame_hint: int | None = None,
    max_shift_syncs: int = MAX_FRAME_SHIFT_SYNCS,
) -> KeyAnalysis:
    """Analyse one capture's tags; with ``window_s`` also per window of link time.

    The sync tags give each detection its pulse index up to a whole number of sync periods
    (the tagger's time zero is not the source's pulse 0, and clock drift moves them apart):
    :func:`align_frames` finds that frame shift from the source's answers; ``frame_hint`` (the
    shift found before) is tried first.

    ``sifter`` answers the sifting exchange for sorted unique pulse indices (the source
    driver's ``sift``). ``delays_ps`` per channel default to an estimate from the data; the gate
    defaults to the full pulse period.
    """
    kp = key_params or KeyParameters()
    ts = np.asarray(timestamps_ps, dtype=np.int64)
    ch = np.asarray(channels, dtype=np.uint8)
    if t_start_ps is None:
        t_start_ps = int(ts[0]) if len(ts) else 0
    if t_stop_ps is None:
        t_stop_ps = int(ts[-1]) + 1 if len(ts) else 1
    clock = recover_clock(ts, ch, link.sync_divider, link.clock_hz, sync_channel=SYNC_CHANNEL)
    if delays_ps is None:
        delays_ps = estimate_delays(ts, ch, clock)
    pa = assign_pulses(ts, ch, clock, delays_ps, gate_width_ps)
    det_ts = ts[np.isin(ch, DETECTOR_CHANNELS)]
    pulse, det = pa.pulse_index, pa.channels
    inside = pulse >= 0
    shift = align_frames(
        pulse[inside],
        det[inside],
        link.sync_divider,
        sifter,
        hint=frame_hint,
        max_shift_syncs=max_shift_syncs,
    )
    if shift:
        pulse = np.where(inside, pulse + shift * link.sync_divider, pulse)
    idx_sorted = _sorted_unique(pulse[inside])
    answers = sifter(idx_sorted)
    total_counts = _window_counts(pulse[inside], det[inside], answers, idx_sorted, seed)
    total = WindowResult(
        t_start_ps,
        t_stop_ps,
        total_counts,
        _key(total_counts, link, kp),
        int(len(pulse)),
        int(pa.n_outside.sum()),
        link,
        kp,
    )
    windows = []
    if window_s:
        if len(det_ts) != len(pulse):
            raise RuntimeError("pulse assignment does not cover every detector tag")
        step = int(window_s * 1e12)
        for w0 in range(t_start_ps, t_stop_ps, step):
            w1 = min(w0 + step, t_stop_ps)
            sel = (det_ts >= w0) & (det_ts < w1)
            sel_in = sel & inside
            c = _window_counts(pulse[sel_in], det[sel_in], answers, idx_sorted, seed)
            windows.append(
                WindowResult(
                    w0,
                    w1,
                    c,
                    _key(c, link, kp),
                    int(sel.sum()),
                    int((sel & ~inside).sum()),
                    link,
                    kp,
                )
            )
    return KeyAnalysis(
        clock,
        np.asarray(delays_ps),
        total,
        windows,
        frame_shift=shift,
        key_frame=_key_frame(pulse[inside], det[inside], answers, idx_sorted),
    )


def _key_frame(pulse, det, answers, idx_sorted):
    """The receiver's raw key: single-click pulses detected in Z (H = 0, V = 1) that the
    source sent in Z and did not disclose. Multi-click pulses stay out of the key (their
    squashed bits are random; the finite-key length is computed on this frame's counts)."""
    pos = np.searchsorted(idx_sorted, pulse)
    basis, intensity, bit = (a[pos] for a in answers)
    uniq, first, count = np.unique(pulse, return_index=True, return_counts=True)
    single = np.zeros(len(pulse), bool)
    single[first[count == 1]] = True
    zdet = (det == DETECTOR_CHANNELS[0]) | (det == DETECTOR_CHANNELS[1])
    key = single & zdet & (basis == 0) & (bit == 255)
    return pulse[key], (det[key] == DETECTOR_CHANNELS[1]).astype(np.uint8), intensity[key]


SPAN_S = 2.0  # link time analysed at once: memory stays bounded on captures of any length


@dataclass
class DistilOptions:
    """Distil the capture's key (reconciliation with the source, verification, privacy
    amplification, authenticated transcript) instead of stopping at the bound.

    ``pool``: the pre-shared authentication key (a ``KeyPool``); None draws one from
    os.urandom and loads it into the source (the emulated bench's way; a real pair shares it
    beforehand). ``key_sink(bytes)`` receives the final key; otherwise it is dropped at the
    end of the block (only its length and fingerprint are kept)."""

    schedule: str = "yan"
    pool: object | None = None
    key_sink: Callable[[bytes], None] | None = None
    max_frame_bits: int = 1 << 21  # the source's DIST:FRAM bound

    @classmethod
    def for_bench(cls, bench, **kw) -> DistilOptions:
        """Options with the bench file's pre-shared pool (``auth_key_file``), loaded into an
        emulated source (a real source holds its copy already); none given: drawn later."""
        from pathlib import Path

        from .analysis.distill.hashing import KeyPool

        name = getattr(bench.spec, "auth_key_file", None)
        if not name:
            return cls(**kw)
        path = Path(name) if Path(name).is_absolute() else Path(bench.path).parent / name
        try:
            key = path.read_bytes()[: 1 << 20]
        except OSError as e:
            raise ValueError(f"{bench.path}: auth_key_file: {path}: {e.strerror}") from None
        pool = KeyPool(key)  # raises on a pool shorter than 16 bytes
        if bench.spec.emulator is not None:
            bench.source.load_auth_pool(key)
        del key
        return cls(pool=pool, **kw)


def _distil(source, frame, counts: SiftCounts, link: LinkSettings, kp: KeyParameters, opts):
    """One block's distillation: its summary (counts, lengths, fingerprint; no key bits)."""
    import math
    import os

    from .analysis.distill.hashing import KeyPool
    from .analysis.distill.pipeline import distil_frame

    idx, bob, cls = frame
    n = len(idx)
    bound = _key(counts, link, kp)
    out = {"schedule": opts.schedule, "bits_in": int(n), "f_assumed": kp.f_ec}
    out["bound_key_bits_assumed_f"] = int(bound.key_length)
    if bound.key_length <= 0:  # nothing disclosed: an eavesdropped block stops here
        return {**out, "key_bits": 0, "outcome": f"aborted before reconciliation: "
                f"{bound.abort_reason}"}  # fmt: skip
    if not 0 < n <= opts.max_frame_bits:
        return {**out, "key_bits": 0, "outcome": f"frame of {n} bits outside "
                f"1..{opts.max_frame_bits}: not distilled"}  # fmt: skip
    qber = counts.qber_z if np.isfinite(counts.qber_z) else 0.5
    # the bound is evaluated on the block's key counts (as the assumed-f bound is); the frame
    # leaves multi-click pulses out, and removing k bits removes at most k bits of min-entropy
    n_z = counts.n[0] - counts.d[0]
    omitted = max(0, int(n_z.sum()) - n)
    if opts.pool is None:
        key = os.urandom(4096)
        source.load_auth_pool(key)
        opts.pool = KeyPool(key)
        del key

    def length(leak, ver_bits, auth_bits):
        # the bound already charges log2(2/eps_cor) (Lim14 Eq. (1)); a longer disclosed
        # verification tag and the authentication key consumed are charged on top
        lam = leak + max(0.0, ver_bits - math.log2(2 / kp.eps_cor)) + auth_bits
        r = finite_key_three_intensity(
            n_z, counts.n_x, counts.m_x, qber, link.mu, link.p_mu,
            eps_sec=kp.eps_sec, eps_cor=kp.eps_cor, f_ec=kp.f_ec, lambda_ec=lam,
        )  # fmt: skip
        return r.key_length - omitted

    res, final = distil_frame(
        source, idx, bob, qber, opts.pool, length, schedule=opts.schedule, eps_cor=kp.eps_cor
    )
    if final and opts.key_sink is not None:
        opts.key_sink(final)
    del final
    out["bits_left_out"] = omitted
    return {**out, **res.as_dict(), "auth_pool_bits_left": opts.pool.available_bits}


def analyse_capture(
    path,
    source,
    *,
    window_s: float | None = None,
    key_params: KeyParameters | None = None,
    link: LinkSettings | None = None,
    store_result: bool = True,
    span_s: float = SPAN_S,
    distil: DistilOptions | None = None,
) -> KeyAnalysis:
    """Analyse a capture file with the bench's source answering the sifting exchange, and
    store the summary (counts and bounds, no key material) under /user/qkd/results.

    The file is read span by span (``span_s`` of link time, a whole number of windows), so a
    soak of hours needs no more memory than a few seconds of tags; the sifted counts of all
    spans form one finite-key block. The channel delays found in the first span and the frame
    shift found in each span carry over to the next.
    """
    from .store import CaptureReader

    link = link or LinkSettings.from_source(source)
    kp = key_params or KeyParameters()
    sifter = source.sift
    if window_s:
        span_s = max(1, round(span_s / window_s)) * window_s
    span_ps = int(round(span_s * 1e12))
    parts: list[KeyAnalysis] = []
    with CaptureReader(path) as cap:
        n = cap.n_tags
        if n == 0:
            raise ValueError(f"{path}: the capture holds no tags")
        (first, _), (last, _) = (next(cap.iter_chunks(1, start=i, stop=i + 1)) for i in (0, n - 1))
        t0 = int(first[0])
        t_end = max(t0 + int(cap.duration_s * 1e12), int(last[0]) + 1)
        delays, shift = None, None
        for a in range(t0, t_end, span_ps):
            b = min(a + span_ps, t_end)
            ts, ch = cap.window(a, b)
            if np.count_nonzero(ch == SYNC_CHANNEL) < 2:
                continue  # nothing to number pulses by in this span (sync lost, laser off)
            part = analyse_tags(
                ts,
                ch,
                link,
                sifter,
                t_start_ps=a,
                t_stop_ps=b,
                window_s=window_s,
                delays_ps=delays,
                key_params=kp,
                frame_hint=shift,
            )
            delays, shift = part.delays_ps, part.frame_shift
            parts.append(part)
    if not parts:
        raise ValueError(f"{path}: no span of the capture has sync tags to number pulses by")
    counts = add_counts([p.total.counts for p in parts])
    total = WindowResult(
        t0,
        t_end,
        counts,
        _key(counts, link, kp),
        sum(p.total.detections for p in parts),
        sum(p.total.outside_gate for p in parts),
        link,
        kp,
    )
    result = KeyAnalysis(
        parts[0].clock,
        delays,
        total,
        [w for p in parts for w in p.windows],
        frame_shift=shift,
        span_clocks=[p.clock for p in parts],
    )
    if distil is not None:
        frame = tuple(np.concatenate([p.key_frame[i] for p in parts]) for i in range(3))
        result.distilled = _distil(source, frame, counts, link, kp, distil)
        del frame  # the raw key leaves memory with the block
        _emit_distilled(result.distilled)
    if store_result:
        from .store import store_result as _store

        _store(
            path,
            "key_analysis",
            {"link": asdict(link), "key_params": asdict(kp), **result.summary()},
        )
    return result


def _emit_distilled(d: dict) -> None:
    try:
        from .telemetry.events import emit
    except ImportError:  # the event log is optional
        return
    emit(
        "distillation",
        **{k: d.get(k) for k in ("outcome", "bits_in", "key_bits", "leak_ec_bits", "efficiency")},
    )


def add_counts(parts: list[SiftCounts]) -> SiftCounts:
    """Sum sifted counts of several windows (the block grows as windows are added)."""
    if not parts:
        z = np.zeros((2, 3), dtype=np.int64)
        return SiftCounts(z, z.copy(), z.copy(), 0, 0, 0, 0, 0)
    return SiftCounts(
        n=sum(p.n for p in parts),
        d=sum(p.d for p in parts),
        m=sum(p.m for p in parts),
        n_unassigned=sum(p.n_unassigned for p in parts),
        n_multi_click=sum(p.n_multi_click for p in parts),
        n_cross_basis=sum(p.n_cross_basis for p in parts),
        n_conflicting=sum(p.n_conflicting for p in parts),
        n_basis_mismatch=sum(p.n_basis_mismatch for p in parts),
    )


def time_to_first_key(
    analysis: KeyAnalysis,
    link: LinkSettings,
    t_from_ps: int,
    key_params: KeyParameters | None = None,
) -> tuple[float, int]:
    """Integration time: link time from ``t_from_ps`` until the block accumulated window by
    window first gives a positive finite-key length. Returns (seconds, key bits) or
    (inf, 0) when the capture never gets there."""
    kp = key_params or KeyParameters()
    acc = []
    for w in analysis.windows:
        if w.t_stop_ps <= t_from_ps:
            continue
        acc.append(w.counts)
        key = _key(add_counts(acc), link, kp)
        if key.key_length > 0:
            return (w.t_stop_ps - t_from_ps) * 1e-12, key.key_length
    return float("inf"), 0
