"""Time tagger driver: channel settings, acquisitions, tags fetched in bounded binary blocks.

Record layout of ``FETC:TAGS? <max>``: one definite-length block holding N little-endian int64
timestamps (ps) followed by N uint8 channel numbers (9 bytes per tag).

Hold points (emulated tagger, ``ACQ:HOLD``): the link clock stops at exact link times of an
acquisition until ``ACQ:CONT``, so that a client can act at that link time whatever its own
speed; :meth:`TimeTagger.stream` hands each hold to a callback once the tags before it are
drained.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal, InvalidOperation

import numpy as np

from .base import Instrument, _raise_recv_size, strict_range, to_bool

MAX_FETCH_TAGS = 1_000_000
RECV_BYTES = 1 << 20  # per socket recv on pyvisa-py sessions (its default is 4096)


def parse_tag_block(payload: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    """Split a tag block into (timestamps int64, channels uint8): views of ``payload``, no
    copy (read-only when ``payload`` is)."""
    if len(payload) % 9:
        raise ValueError(f"tag block of {len(payload)} bytes is not a whole number of 9-byte tags")
    n = len(payload) // 9
    ts = np.frombuffer(payload, dtype="<i8", count=n).astype(np.int64, copy=False)
    ch = np.frombuffer(payload, dtype=np.uint8, offset=8 * n, count=n)
    return ts, ch


def parse_link_time_ps(text: str) -> int:
    """Link time in s (exact decimal or any float notation) -> integer ps, without the float
    rounding of ``float(text) * 1e12``."""
    try:
        return int((Decimal(text.strip()) * 10**12).to_integral_value())
    except InvalidOperation:
        raise ValueError(f"not a link time in s: {text[:40]!r}") from None


class TimeTagger(Instrument):
    """Time tagger with inputs 0..8 (0 = sync from the source, 8 = software marker)."""

    N_INPUTS = 9
    SYNC, MARKER = 0, 8

    def __init__(self, resource: str, name: str | None = None, **kw):
        super().__init__(resource, name, **kw)
        self.session.chunk_size = 4 * 1024 * 1024  # fetch blocks are up to 9 MB
        _raise_recv_size(self.session, RECV_BYTES)

    def _checked(self, command: str) -> None:
        self.set_checked(command)  # one exchange: a mark's SYST:ERR? never meets a fetch

    def set_input(
        self,
        channel: int,
        *,
        enabled: bool | None = None,
        threshold_v: float | None = None,
        delay_s: float | None = None,
    ) -> None:
        """Set an input's enable state, threshold (V, -2.5..2.5) and delay (s, -1e-6..1e-6)."""
        strict_range(channel, (0, self.N_INPUTS - 1))
        if enabled is not None:
            self._checked(f"INP{channel}:ENAB {int(bool(enabled))}")
        if threshold_v is not None:
            strict_range(threshold_v, (-2.5, 2.5))
            self._checked(f"INP{channel}:THR {threshold_v:.4f}")
        if delay_s is not None:
            strict_range(delay_s, (-1e-6, 1e-6))
            self._checked(f"INP{channel}:DEL {delay_s * 1e12:.1f}PS")

    def input_settings(self, channel: int) -> dict:
        return {
            "enabled": to_bool(self.query(f"INP{channel}:ENAB?")),
            "threshold_v": float(self.query(f"INP{channel}:THR?")),
            "delay_s": float(self.query(f"INP{channel}:DEL?")),
        }

    @property
    def resolution_s(self) -> float:
        """Get the timing resolution in s."""
        return float(self.query("DEV:RES?"))

    def link_time_s(self) -> float:
        """Get the tagger's current time in s (link time)."""
        return float(self.query("ACQ:TIME?"))

    def link_time_ps(self) -> int:
        """Get the tagger's current time in ps (link time), exactly as the tagger gives it."""
        return parse_link_time_ps(self.query("ACQ:TIME?"))

    # -- hold points (emulated tagger) -----------------------------------------------------
    def set_holds(self, offsets_s: Iterable[float], timeout_s: float | None = None) -> None:
        """Set the hold points of the next acquisition: link-time offsets in s after its start
        at which the link clock stops until :meth:`resume`. ``timeout_s``: wall-clock s a hold
        waits for :meth:`resume` before the tagger ends the acquisition (a client that died
        must not hold the bench)."""
        self._checked("ACQ:HOLD:CLE")
        if timeout_s is not None:
            strict_range(timeout_s, (0.01, 3600.0))
            self._checked(f"ACQ:HOLD:TIM {timeout_s:.6g}")
        for offset in offsets_s:
            strict_range(offset, (0.0, 86400.0))
            self._checked(f"ACQ:HOLD {offset:.12f}")  # to the ps

    def held_time_ps(self) -> int:
        """Get the link time (ps) at which the clock stands: the hold point reached last."""
        return parse_link_time_ps(self.query("ACQ:HOLD:TIME?"))

    def resume(self) -> None:
        """Let the link clock run on from a hold point."""
        self._checked("ACQ:CONT")

    def hold_expired(self) -> bool:
        """Get whether the last acquisition ended because a hold waited too long."""
        return to_bool(self.query("ACQ:HOLD:EXP?"))

    def start(self, duration_s: float, pace: float | None = None) -> None:
        """Start an acquisition of ``duration_s`` s. ``pace``: emulated benches only (link
        time per wall time; 0 = as fast as possible)."""
        strict_range(duration_s, (1e-6, 86400.0))
        self._checked(f"ACQ:DUR {duration_s:.9g}")
        if pace is not None:
            self._checked(f"ACQ:PACE {pace:.6g}")
        self._checked("ACQ:STAR")

    def stop(self) -> None:
        self.write("ACQ:STOP")

    def status(self) -> str:
        return self.query("ACQ:STAT?").strip()

    def data_lost(self) -> bool:
        """Get the data-loss flag of the last acquisition."""
        return to_bool(self.query("ACQ:LOSS?"))

    def mark(self) -> None:
        """Insert a software marker tag (input 8) at the current link time."""
        self._checked("ACQ:MARK")

    def fetch(self, max_tags: int = MAX_FETCH_TAGS) -> tuple[np.ndarray, np.ndarray]:
        """Fetch up to ``max_tags`` buffered tags."""
        strict_range(max_tags, (1, MAX_FETCH_TAGS))
        return parse_tag_block(self.query_block(f"FETC:TAGS? {max_tags:d}", copy=False))

    def stream(
        self,
        poll_s: float = 0.002,
        max_poll_s: float = 0.016,
        on_hold: Callable[[], None] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield tag chunks of the running acquisition until it is done and drained.

        One query per chunk while tags keep coming; the status is asked only after an empty
        fetch (and, once the acquisition is over, one more fetch drains what arrived between
        the empty fetch and the status). Empty polls back off from ``poll_s`` to
        ``max_poll_s``: each costs both processes a round trip, and a consumer faster than
        the acquisition otherwise spends more on them than on the tags.

        ``on_hold()`` is called when the acquisition stands at a hold point and every tag
        before it has been yielded; it is expected to :meth:`resume`. Without it a hold is
        waited out like a running acquisition."""
        wait = poll_s
        stopped = False  # the last status said the acquisition is over
        held = False  # the last status said HELD: the clock stands, nothing new is generated
        while True:
            ts, ch = self.fetch()
            if len(ts):
                wait, stopped = poll_s, False
                yield ts, ch
                continue
            if stopped:
                return  # empty after the acquisition was over: drained
            if held:  # empty after HELD: every tag before the hold point is out
                held, wait = False, poll_s
                on_hold()
                continue
            status = self.status()
            if status == "HELD" and on_hold is not None:
                held = True  # one more fetch drains what arrived before the hold
                continue
            if status not in ("RUNNING", "HELD"):  # no tag is generated after this answer
                stopped = True  # one more fetch drains what arrived before it
                continue
            time.sleep(wait)
            wait = min(2 * wait, max_poll_s)

    def safe_state(self) -> None:
        """Stop a running acquisition."""
        self.stop()

    def settings(self) -> dict:
        return {
            "resolution_s": self.resolution_s,
            "inputs": {str(c): self.input_settings(c) for c in range(self.N_INPUTS)},
        }
