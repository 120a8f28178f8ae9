"""Link monitor: windowed analysis over a running capture, and the link state it implies.

Each window of link time gets count rates, sync status, QBER per basis (from the disclosed
bits), a secure-key-rate estimate and a state:

- DOWN: no usable sync, or the detection rate is below ``down_rate_hz`` (fiber cut, laser off,
  dead detectors) — no key can come out;
- ABORTED: the QBER is above the abort threshold with confidence (the lower 5-sigma binomial
  bound exceeds it) — the security check forbids key (intercept-resend gives 25 %);
- DEGRADED: light and sync but the QBER is above ``degraded_qber`` or the key-rate estimate
  below ``key_rate_floor_bps``;
- UP: otherwise.

The monitor only knows a window's state when the window has closed, so a transition is
reported at the end of the window that first shows it (``Transition.time_s``). When the count
rate of the detectors or of the sync channel stepped between that window and the one before,
the transition is also dated inside them from the tags themselves (``Transition.estimate_s``,
with its standard uncertainty ``uncertainty_s``): the maximum-likelihood change point of a
Poisson process (:func:`rate_change_point`), finer than the window by orders of magnitude.
A change that shows only in the QBER keeps the window's resolution (``uncertainty_s`` = one
window). Usable from tests (``feed`` chunks, e.g. ``acquire(..., on_chunk=monitor.feed)``), over a
finished or growing capture file (``watch_file``), and from ``hil monitor`` on a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .analysis.keyrate import two_decoy_estimate
from .analysis.timing import SYNC_CHANNEL, recover_clock
from .postprocess import (
    DETECTOR_CHANNELS,
    KeyParameters,
    LinkSettings,
    Sifter,
    analyse_tags,
)
from .telemetry.events import emit

# Called as observer(monitor, window_status, window_channels) after every window of every
# monitor closes (the metrics exporter, hil.telemetry.metrics, registers here); observers must
# be quick and must not raise.
WINDOW_OBSERVERS: list[Callable] = []


class LinkState(str, Enum):
    UP = "UP"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"
    ABORTED = "ABORTED"


@dataclass
class Thresholds:
    """When the monitor calls the link DOWN, ABORTED or DEGRADED."""

    down_rate_hz: float = 20e3  # total detector rate below this: no light on the receiver
    abort_qber: float = 0.11  # BB84 one-way limit with ideal error correction (GLLP)
    degraded_qber: float = 0.05
    key_rate_floor_bps: float = 0.0
    sigmas: float = 5.0  # confidence of the abort decision (binomial, normal approximation)


@dataclass
class WindowStatus:
    t_start_s: float
    t_stop_s: float
    state: LinkState
    reason: str
    detector_rate_hz: float
    sync_rate_hz: float
    in_sync: bool
    qber_z: float
    qber_x: float
    key_rate_estimate_bps: float
    finite_key_bits: int
    sync_residual_s: float = math.nan  # largest |residual| of an accepted sync tag (telemetry)

    def line(self) -> str:
        return (
            f"{self.t_start_s:9.3f}-{self.t_stop_s:9.3f} s {self.state.value:8s} "
            f"det {self.detector_rate_hz / 1e3:9.1f} kHz  QBER Z {self.qber_z * 100:6.2f} % "
            f"X {self.qber_x * 100:6.2f} %  key~{self.key_rate_estimate_bps / 1e3:9.2f} "
            f"kbit/s  {self.reason}"
        )


@dataclass
class Transition:
    """A change of state: reported at ``time_s`` (the close of the window that first shows
    it); ``estimate_s`` +- ``uncertainty_s`` is when it happened in the tag stream."""

    time_s: float
    old: LinkState | None
    new: LinkState
    reason: str
    estimate_s: float | None = None  # change point in the count stream (None: window only)
    uncertainty_s: float | None = None  # standard uncertainty of estimate_s (s)
    stream: str = "window"  # what dated it: "detectors", "sync" or "window" (the close time)
    window_s: float = 0.0  # the monitor window (the resolution without an estimate)

    @property
    def best_s(self) -> float:
        """The transition time to measure latencies from: the estimate inside the window when
        there is one, else the window's close (the conservative bound)."""
        return self.time_s if self.estimate_s is None else self.estimate_s

    @property
    def best_uncertainty_s(self) -> float:
        """Standard uncertainty of ``best_s``; without an estimate, one window (the change
        happened at most one window before the close that shows it)."""
        return self.uncertainty_s if self.uncertainty_s is not None else self.window_s


# -- change point of a Poisson rate: when the count rate stepped --------------------------------
# A single step of the rate of a Poisson process observed on [a, b), rates unknown: for a
# step at tau with n1 events before and n2 after, the profile log-likelihood is
#     l(tau) = n1 ln(n1 / (tau - a)) + n2 ln(n2 / (b - tau))        (+ constants)
# (the rates' maximum-likelihood values n1/(tau-a), n2/(b-tau) put back in). Between two
# events n1 is fixed and l is convex in tau, so its maximum lies on an event time: the MLE is
# found by evaluating l at every event (Raftery & Akman, Biometrika 73, 85 (1986), Poisson
# process with a change point; Worsley, Biometrika 73, 91 (1986), the MLE and its spread for
# exponential families).
#
# Its error: with the rates known, moving tau by d from the true step t0 changes l by a
# compound-Poisson random walk. Past t0 (into the rate-l2 region) each event adds
# L = ln(l1/l2) and time subtracts D = l1 - l2 per s; before t0 each event (rate l1) subtracts
# L and time adds D. The MLE error is the argmax of this two-sided walk: its drifts per s,
# -(l2 (r - 1 - ln r)) and -(l1 (ln r - 1 + 1/r)) with r = l1/l2, are the Kullback-Leibler
# rates, and its spread is ~1/|l1 - l2| when one rate dominates (a cut: the MLE is the last
# event before it, an Exp(l1) gap early) and ~4 l / (l1 - l2)^2 for a small step (the
# Brownian limit, Hinkley, Biometrika 57, 1 (1970)). No closed form covers every ratio, so
# change_point_spread simulates that walk with the estimated rates (a parametric bootstrap,
# Efron & Tibshirani 1993, ch. 6 and 10): the estimate is corrected by the walk's mean error
# (the bias, e.g. 1/l1 early for a cut) and its standard uncertainty is the walk's standard
# deviation.


def _xlogy_ratio(n: np.ndarray, length: np.ndarray) -> np.ndarray:
    """n ln(n / length), 0 where n = 0 (the limit)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, n * np.log(n / length), 0.0)


def rate_change_point(times_s: np.ndarray, a_s: float, b_s: float) -> tuple[float, float, float]:
    """Maximum-likelihood time of a single step in the rate of the events ``times_s`` (sorted,
    within [a_s, b_s)), and the rates before and after it (Hz). Plain numpy, O(n)."""
    t = np.asarray(times_s, dtype=np.float64) - a_s
    span = b_s - a_s
    n = len(t)
    if n == 0 or span <= 0:
        raise ValueError("a change point needs events in a non-empty interval")
    # n1 = k events before tau, for tau on [t[k-1], t[k]] (t[-1] = a, t[n] = b): both ends
    k = np.arange(n + 1, dtype=np.float64)
    left = np.concatenate(([0.0], t))  # t[k-1]
    right = np.concatenate((t, [span]))  # t[k]
    tiny = 1e-12  # 1 ps: an event exactly on a bound must not give an infinite likelihood
    best_l, best_tau, best_k = -np.inf, 0.0, 0
    for tau in (left, right):
        l1 = np.maximum(tau, tiny)
        l2 = np.maximum(span - tau, tiny)
        ll = _xlogy_ratio(k, l1) + _xlogy_ratio(n - k, l2)
        # tau on a bound with events beyond it is not a change point inside the interval
        ll[(k > 0) & (tau <= 0)] = -np.inf
        ll[(k < n) & (tau >= span)] = -np.inf
        i = int(np.argmax(ll))
        if ll[i] > best_l:
            best_l, best_tau, best_k = float(ll[i]), float(tau[i]), i
    before = best_k / max(best_tau, tiny)
    after = (n - best_k) / max(span - best_tau, tiny)
    return a_s + best_tau, before, after


def change_point_spread(
    rate_before_hz: float, rate_after_hz: float, n_walks: int = 400, seed: int = 0
) -> tuple[float, float]:
    """(mean, standard deviation) in s of the change-point MLE's error for a step between
    these rates: the argmax of the two-sided random walk described above, simulated
    ``n_walks`` times (seeded: the same rates give the same answer)."""
    l1, l2 = float(rate_before_hz), float(rate_after_hz)
    if l1 < 0 or l2 < 0 or l1 == l2:
        raise ValueError(f"a step needs two different rates, got {l1:g} and {l2:g} Hz")
    rng = np.random.default_rng(seed)
    d = l1 - l2
    log_r = math.log(l1 / l2) if l1 > 0 and l2 > 0 else math.copysign(math.inf, d)
    # time each side of the walk must cover: many times its spread, so the argmax is inside
    scales = [1.0 / abs(d)]
    if math.isfinite(log_r) and log_r:
        for lam, drift in ((l2, l2 * log_r - d), (l1, d - l1 * log_r)):
            if drift < 0:
                scales.append(lam * log_r**2 / drift**2)
                scales.append(1.0 / -drift)
    horizon = 40.0 * max(scales)
    best = np.zeros(n_walks)
    best_val = np.zeros(n_walks)
    for lam, sign in ((l2, 1.0), (l1, -1.0)):  # after t0 (events at l2), before it (l1)
        if lam == 0:
            continue  # no event on this side: the walk only drifts down from 0
        n_ev = int(lam * horizon + 6 * math.sqrt(lam * horizon) + 10)
        if n_ev > MAX_WALK_EVENTS:
            raise ValueError(
                f"rates {l1:g} and {l2:g} Hz are too close for a change point to be dated"
            )
        e = np.cumsum(rng.exponential(1.0 / lam, size=(n_walks, n_ev)), axis=1)
        j = np.arange(n_ev + 1, dtype=np.float64)  # events passed: 0 .. n_ev
        # passing an event adds +log_r after t0 and -log_r before it (an infinite log_r: a
        # side with no events at all, whose events cannot be passed); 0 passed adds nothing
        per_event = sign * log_r
        if math.isfinite(log_r):
            jumps = j * per_event
        else:
            jumps = np.where(j == 0, 0.0, per_event)
        drift = -sign * d * e  # after t0: -d per s; before it: +d per s
        # the walk just before event i has passed i - 1 events, just after it i
        vals = np.maximum(jumps[None, :-1] + drift, jumps[None, 1:] + drift)
        i = np.argmax(vals, axis=1)
        v = vals[np.arange(n_walks), i]
        take = v > best_val
        best = np.where(take, sign * e[np.arange(n_walks), i], best)
        best_val = np.where(take, v, best_val)
    return float(best.mean()), float(best.std())


MAX_WALK_EVENTS = 20_000  # per walk and side: beyond this the step is too small to date
MIN_STEP_SIGMAS = 5.0  # a rate step is dated only when the windows' rates differ this clearly


def date_rate_step(
    times_s: np.ndarray, a_s: float, split_s: float, b_s: float
) -> tuple[float, float] | None:
    """Date a step of the event rate on [a_s, b_s) whose two windows [a_s, split_s) and
    [split_s, b_s) differ in rate by more than ``MIN_STEP_SIGMAS`` (counting statistics);
    returns (bias-corrected change point, standard uncertainty) in s, or None."""
    t = np.asarray(times_s, dtype=np.float64)
    n_a = int(np.searchsorted(t, split_s))
    n_b = len(t) - n_a
    d_a, d_b = split_s - a_s, b_s - split_s
    if d_a <= 0 or d_b <= 0 or not len(t):
        return None
    sigma = math.sqrt(n_a / d_a**2 + n_b / d_b**2)
    if abs(n_a / d_a - n_b / d_b) <= MIN_STEP_SIGMAS * sigma:
        return None
    tau, before, after = rate_change_point(t, a_s, b_s)
    if before == after:
        return None
    try:
        bias, spread = change_point_spread(before, after)
    except ValueError:
        return None
    return tau - bias, spread


def key_rate_estimate(counts, link: LinkSettings, duration_s: float, f_ec: float) -> float:
    """Asymptotic secure-key-rate estimate of one window in bit/s.

    The general two-decoy bounds of Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005) on the Z-basis
    gains Q_k = n_Z,k / (N p_k p_Z) and the Z error rates of the disclosed sample; the rate per
    Z pulse (q = 1, efficient BB84) times the Z pulses sent per second. The common factor of
    the receiver's Z split cancels in the decoy bounds. A monitoring estimate, not the
    finite-key figure (which the window's small block would drive to 0).
    """
    p_z = link.p_z
    n_pulses = duration_s * link.clock_hz
    if n_pulses <= 0 or p_z <= 0:
        return 0.0
    q, e = [], []
    for k in range(3):
        sent = n_pulses * link.p_mu[k] * p_z
        q.append(counts.n[0, k] / sent if sent else 0.0)
        d, m = counts.d[0, k], counts.m[0, k]
        e.append(m / d if d else 0.5)
    mu = link.mu
    if not (mu[1] > mu[2] >= 0 and mu[0] > mu[1] + mu[2]) or q[0] <= 0:
        return 0.0
    est = two_decoy_estimate(
        mu[0], mu[1], mu[2], q[0], e[0], q[1], e[1], q[2], e[2], f_ec=f_ec, q=1.0
    )
    rate = est.rate_per_pulse
    if not math.isfinite(rate) or rate <= 0:
        return 0.0
    return rate * n_pulses * p_z


class LinkMonitor:
    """Windowed monitor over a tag stream (chunks in time order)."""

    def __init__(
        self,
        link: LinkSettings,
        sifter: Sifter | None,
        *,
        window_s: float = 0.25,
        thresholds: Thresholds | None = None,
        key_params: KeyParameters | None = None,
        t0_s: float | None = None,
        on_window: Callable[[WindowStatus], None] | None = None,
    ):
        self.link = link
        self.sifter = sifter
        self.window_ps = int(window_s * 1e12)
        self.th = thresholds or Thresholds()
        self.kp = key_params or KeyParameters()
        self.windows: list[WindowStatus] = []
        self.transitions: list[Transition] = []
        self.on_window = on_window
        self._ts: list[np.ndarray] = []
        self._ch: list[np.ndarray] = []
        self._w0 = None if t0_s is None else int(t0_s * 1e12)
        self.frame_shift: int | None = None  # found in the previous window, tried first
        # the last window's bounds (ps) and its detector and sync tag times (s): a transition
        # is dated on the tags of the window that shows it and of this one
        self._last_streams: tuple[int, int, np.ndarray, np.ndarray] | None = None

    _warm = False  # the analysis kernels are compiled or loaded in this process

    @classmethod
    def warm(cls, link: LinkSettings | None = None) -> None:
        """Compile (or load from numba's cache) every analysis kernel a window needs, on a
        tiny synthetic window, before a capture's clock starts: a cold compile takes ~10 s
        (more on a busy machine) and would otherwise happen in the first window, mid-capture.
        The synthetic tags and the source's answers are made up here and consistent with each
        other; only the array types matter to the compiler. Once per process."""
        if cls._warm:
            return
        link = link or LinkSettings(1e9, 10_000, (0.5, 0.1, 2e-4), (0.7, 0.2, 0.1), 0.5)
        ts, ch, sifter = _synthetic_window(link)
        mon = cls(link, sifter, window_s=1.0)
        mon.analyse_window(ts, ch, int(ts[0]), int(ts[-1]) + 1)
        cls._warm = True

    # -- input -----------------------------------------------------------------------------
    def feed(self, timestamps_ps: np.ndarray, channels: np.ndarray) -> list[WindowStatus]:
        """Add a chunk of tags; returns the windows it completed."""
        if len(timestamps_ps) == 0:
            return []
        if self._w0 is None:
            self._w0 = int(timestamps_ps[0])
        self._ts.append(np.asarray(timestamps_ps, dtype=np.int64))
        self._ch.append(np.asarray(channels, dtype=np.uint8))
        done = []
        last = int(timestamps_ps[-1])
        while last >= self._w0 + self.window_ps:
            done.append(self._close_window(self._w0 + self.window_ps))
        return done

    def flush(self, t_stop_s: float | None = None) -> list[WindowStatus]:
        """Close the last (possibly partial) window at ``t_stop_s``."""
        if self._w0 is None:
            return []
        stop = int(t_stop_s * 1e12) if t_stop_s is not None else None
        done = []
        while stop is not None and stop >= self._w0 + self.window_ps:
            done.append(self._close_window(self._w0 + self.window_ps))
        if stop is not None and stop > self._w0 + self.window_ps // 10:
            done.append(self._close_window(stop))
        return done

    # -- analysis --------------------------------------------------------------------------
    def _take(self, w1: int) -> tuple[np.ndarray, np.ndarray]:
        ts = np.concatenate(self._ts) if self._ts else np.empty(0, np.int64)
        ch = np.concatenate(self._ch) if self._ch else np.empty(0, np.uint8)
        cut = int(np.searchsorted(ts, w1, side="left"))
        self._ts, self._ch = [ts[cut:]], [ch[cut:]]
        return ts[:cut], ch[:cut]

    def _close_window(self, w1: int) -> WindowStatus:
        w0 = self._w0
        ts, ch = self._take(w1)
        self._w0 = w1
        status = self.analyse_window(ts, ch, w0, w1)
        streams = (
            w0,
            w1,
            ts[np.isin(ch, DETECTOR_CHANNELS)] * 1e-12,
            ts[ch == SYNC_CHANNEL] * 1e-12,
        )
        prev, self._last_streams = self._last_streams, streams
        self._record(status, prev, streams)
        for observer in WINDOW_OBSERVERS:
            observer(self, status, ch)
        return status

    @staticmethod
    def _date(prev, cur) -> tuple[float, float, str] | None:
        """Date a transition between the windows ``prev`` and ``cur`` by the stream whose
        rate stepped most clearly (detectors: cut, laser off, loss; sync: sync lost)."""
        if prev is None or prev[1] != cur[0]:
            return None
        a, split, b = prev[0] * 1e-12, cur[0] * 1e-12, cur[1] * 1e-12
        best = None
        for name, i in (("detectors", 2), ("sync", 3)):
            t = np.concatenate((prev[i], cur[i]))
            dated = date_rate_step(t, a, split, b)
            if dated is not None and (best is None or dated[1] < best[1]):
                best = (dated[0], dated[1], name)
        return best

    def analyse_window(self, ts: np.ndarray, ch: np.ndarray, w0: int, w1: int) -> WindowStatus:
        dur = (w1 - w0) * 1e-12
        det = int(np.isin(ch, DETECTOR_CHANNELS).sum())
        n_sync = int((ch == 0).sum())
        det_rate, sync_rate = det / dur, n_sync / dur
        nan = float("nan")
        in_sync = False
        residual_s = nan
        clock_ok = n_sync >= 2
        if clock_ok:
            try:
                clock = recover_clock(ts, ch, self.link.sync_divider, self.link.clock_hz)
                in_sync = clock.status.in_sync
                residual_s = clock.status.max_residual_ps * 1e-12
            except ValueError:
                clock_ok = False
        base = dict(
            t_start_s=w0 * 1e-12,
            t_stop_s=w1 * 1e-12,
            detector_rate_hz=det_rate,
            sync_rate_hz=sync_rate,
            in_sync=in_sync,
            sync_residual_s=residual_s,
        )

        def down(reason: str) -> WindowStatus:  # no key can come out of this window
            return WindowStatus(
                **base,
                state=LinkState.DOWN,
                reason=reason,
                qber_z=nan,
                qber_x=nan,
                key_rate_estimate_bps=0.0,
                finite_key_bits=0,
            )

        if not clock_ok or not in_sync:
            return down("sync lost")
        if det_rate < self.th.down_rate_hz:
            return down(f"detector rate below {self.th.down_rate_hz:g} Hz")
        if self.sifter is None:
            return WindowStatus(
                **base,
                state=LinkState.UP,
                reason="light and sync (no sifting)",
                qber_z=nan,
                qber_x=nan,
                key_rate_estimate_bps=nan,
                finite_key_bits=0,
            )
        try:
            analysis = analyse_tags(
                ts,
                ch,
                self.link,
                self.sifter,
                t_start_ps=w0,
                t_stop_ps=w1,
                key_params=self.kp,
                frame_hint=self.frame_shift,
            )
        except ValueError as exc:  # no frame alignment: nothing can be sifted
            return down(str(exc).split(":")[0])
        self.frame_shift = analysis.frame_shift
        res = analysis.total
        c = res.counts
        qz, qx = res.qber_z, res.qber_x
        rate = key_rate_estimate(c, self.link, dur, self.kp.f_ec)
        state, reason = LinkState.UP, "key"
        d_all = int(c.d.sum())
        m_all = int(c.m.sum())
        if d_all:
            q_all = m_all / d_all
            sigma = math.sqrt(max(q_all * (1 - q_all), 1e-12) / d_all)
            if q_all - self.th.sigmas * sigma > self.th.abort_qber:
                state, reason = (
                    LinkState.ABORTED,
                    (
                        f"QBER {q_all * 100:.2f} % above the abort threshold "
                        f"{self.th.abort_qber * 100:g} %"
                    ),
                )
        if state is LinkState.UP:
            worst = max(x for x in (qz, qx) if math.isfinite(x)) if d_all else 0.5
            if worst > self.th.degraded_qber:
                state, reason = (
                    LinkState.DEGRADED,
                    f"QBER {worst * 100:.2f} % above {self.th.degraded_qber * 100:g} %",
                )
            elif rate <= self.th.key_rate_floor_bps:
                state, reason = LinkState.DEGRADED, "key-rate estimate at or below the floor"
        if state is LinkState.ABORTED:
            rate = 0.0  # no key from an aborted window
        return WindowStatus(
            **base,
            state=state,
            reason=reason,
            qber_z=qz,
            qber_x=qx,
            key_rate_estimate_bps=rate,
            finite_key_bits=res.key.key_length,
        )

    def _record(self, w: WindowStatus, prev_streams=None, streams=None) -> None:
        prev = self.windows[-1].state if self.windows else None
        self.windows.append(w)
        if w.state is not prev:
            t = Transition(w.t_stop_s, prev, w.state, w.reason, window_s=self.window_ps * 1e-12)
            dated = self._date(prev_streams, streams) if prev is not None and streams else None
            if dated is not None:
                t.estimate_s, t.uncertainty_s, t.stream = dated
            self.transitions.append(t)
            emit(
                "state",
                link_time_s=t.time_s,
                old=prev.value if prev else None,
                new=w.state.value,
                reason=w.reason,
                estimate_s=t.estimate_s,
            )
        if self.on_window is not None:
            self.on_window(w)

    # -- questions tests ask -----------------------------------------------------------------
    def first(self, state: LinkState, after_s: float = -math.inf) -> Transition | None:
        """The first transition into ``state`` dated after ``after_s``."""
        for t in self.transitions:
            if t.new is state and t.time_s > after_s:
                return t
        return None

    def states(self) -> list[tuple[float, float, str]]:
        return [(w.t_start_s, w.t_stop_s, w.state.value) for w in self.windows]

    def summary(self) -> dict:
        return {
            "window_s": self.window_ps * 1e-12,
            "thresholds": self.th.__dict__,
            "transitions": [
                {
                    "time_s": t.time_s,
                    "from": t.old.value if t.old else None,
                    "to": t.new.value,
                    "reason": t.reason,
                    "estimate_s": t.estimate_s,
                    "uncertainty_s": t.uncertainty_s,
                    "dated_by": t.stream,
                }
                for t in self.transitions
            ],
            "windows": [
                {**{k: (v.value if isinstance(v, LinkState) else v) for k, v in w.__dict__.items()}}
                for w in self.windows
            ],
        }


def _synthetic_window(link: LinkSettings, n_syncs: int = 40, n_det: int = 3000, seed: int = 0):
    """A short window of made-up tags (sync every ``sync_divider`` pulses, single clicks in
    random bases) and a sifter answering consistently for them: input for :meth:`warm`."""
    rng = np.random.default_rng(seed)
    period_ps = 1e12 / link.clock_hz
    div = link.sync_divider
    sync_pulse = np.arange(1, n_syncs + 1, dtype=np.int64) * div
    det_pulse = np.sort(rng.choice(np.arange(div, n_syncs * div), n_det, replace=False))
    basis = rng.integers(0, 2, n_det).astype(np.uint8)
    bit = rng.integers(0, 2, n_det).astype(np.uint8)
    det = (1 + 2 * basis + bit).astype(np.uint8)  # H, V (Z) and D, A (X): channels 1..4
    ts = np.concatenate(
        (np.round(sync_pulse * period_ps), np.round((det_pulse + 0.1) * period_ps))
    ).astype(np.int64)
    ch = np.concatenate((np.full(n_syncs, SYNC_CHANNEL, np.uint8), det))
    order = np.argsort(ts, kind="stable")

    def sifter(idx: np.ndarray):
        pos = np.clip(np.searchsorted(det_pulse, idx), 0, n_det - 1)
        b, bt = basis[pos].copy(), bit[pos].copy()
        bt[1::2] = 255  # every other bit kept back, as the source does with its sample
        return b, (np.arange(len(idx)) % 3).astype(np.uint8), bt

    return ts[order], ch[order], sifter


def follow_capture(
    path, *, follow: bool = False, poll_s: float = 0.2, chunk: int = 1 << 20
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the tags of a capture file in chunks; with ``follow``, keep reading while its
    writer adds to it (SWMR) until it is closed complete."""
    import time

    from .store import open_capture

    pos = 0
    with open_capture(path) as cap:
        while True:
            n = cap.n_tags  # refreshes the SWMR view
            if n > pos:
                yield from cap.iter_chunks(chunk, start=pos, stop=n)
                pos = n
                continue
            if not follow or cap.complete:
                return
            time.sleep(poll_s)
