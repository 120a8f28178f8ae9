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

The monitor only knows a window's state when the window has closed, so a transition is dated
at the end of the window that first shows it (the conservative choice for detection latency).
Usable from tests (``feed`` chunks, e.g. ``acquire(..., on_chunk=monitor.feed)``), over a
finished or growing capture file (``watch_file``), and from ``hil monitor`` on a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .analysis.keyrate import two_decoy_estimate
from .analysis.timing import recover_clock
from .postprocess import (
    DETECTOR_CHANNELS,
    KeyParameters,
    LinkSettings,
    Sifter,
    analyse_tags,
)


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

    def line(self) -> str:
        return (
            f"{self.t_start_s:9.3f}-{self.t_stop_s:9.3f} s {self.state.value:8s} "
            f"det {self.detector_rate_hz / 1e3:9.1f} kHz  QBER Z {self.qber_z * 100:6.2f} % "
            f"X {self.qber_x * 100:6.2f} %  key~{self.key_rate_estimate_bps / 1e3:9.2f} "
            f"kbit/s  {self.reason}"
        )


@dataclass
class Transition:
    time_s: float
    old: LinkState | None
    new: LinkState
    reason: str


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
        self._record(status)
        return status

    def analyse_window(self, ts: np.ndarray, ch: np.ndarray, w0: int, w1: int) -> WindowStatus:
        dur = (w1 - w0) * 1e-12
        det = int(np.isin(ch, DETECTOR_CHANNELS).sum())
        n_sync = int((ch == 0).sum())
        det_rate, sync_rate = det / dur, n_sync / dur
        nan = float("nan")
        in_sync = False
        clock_ok = n_sync >= 2
        if clock_ok:
            try:
                clock = recover_clock(ts, ch, self.link.sync_divider, self.link.clock_hz)
                in_sync = clock.status.in_sync
            except ValueError:
                clock_ok = False
        base = dict(
            t_start_s=w0 * 1e-12,
            t_stop_s=w1 * 1e-12,
            detector_rate_hz=det_rate,
            sync_rate_hz=sync_rate,
            in_sync=in_sync,
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

    def _record(self, w: WindowStatus) -> None:
        prev = self.windows[-1].state if self.windows else None
        self.windows.append(w)
        if w.state is not prev:
            self.transitions.append(Transition(w.t_stop_s, prev, w.state, w.reason))
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
                }
                for t in self.transitions
            ],
            "windows": [
                {**{k: (v.value if isinstance(v, LinkState) else v) for k, v in w.__dict__.items()}}
                for w in self.windows
            ],
        }


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
