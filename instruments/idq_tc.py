"""ID Quantique ID900 / ID1000 Time Controller driver (tagger role), no vendor library.

Control is SCPI over ZeroMQ REQ/REP (the Time Controller's ``tcp://<ip>:5555``): one request,
one reply; a setter's reply is empty and an error's reply contains ``SCPI_ERR_``. Time stamps
come from IDQ's DataLinkTargetService (DLT, a program on the capture PC, ``tcp://localhost:6060``):
``start-stream --address <tc ip> --channel <n> --stream-port <port>`` answers ``{"id": ...}``
and the DLT then pushes input n's time stamps on a ZeroMQ PAIR socket at that port, as raw
little-endian int64 ps; an empty message ends an acquisition's data on that stream.

Resource string: ``tcp://<tc host>:<port>[?dlt=<dlt host>:<port>]`` (DLT default
``localhost:6060``).

Inputs map onto the channel map of hil.roles through ``INPUTS``: input 1 the source's sync,
inputs 2..5 detectors H, V, D, A (change it in a subclass for another wiring). The per-input
streams are merged into one time-ordered stream: a tag is given out once every open stream has
delivered a later one (or ended), so the merge never reorders; what waits is bounded by
``MAX_PENDING_TAGS`` -- beyond it the oldest pending tags are given out, and a tag that then
arrives earlier than what was given out is dropped and counted (``loss_counts``), like the
Time Controller's own RAW errors.

Software markers (``mark``) are inserted into the merged stream by the driver at the link time
the capture acts at (the Time Controller has no marker input). Hold points and the link clock
(``EMUL:...``) exist on the emulated Time Controller only; on a real one ``link_time_ps`` is the
last time stamp received and ``set_holds`` raises.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import zmq
from numba import njit

from hil.roles import MARKER_CHANNEL

from .base import (
    InstrumentError,
    InstrumentTimeout,
    InstrumentUnreachable,
    ThreadDeadlines,
    strict_range,
)
from .tagger import parse_link_time_ps

_RESOURCE = re.compile(
    r"^tcp://(?P<host>[A-Za-z0-9_.\-]+):(?P<port>\d{1,5})"
    r"(?:\?dlt=(?P<dhost>[A-Za-z0-9_.\-]+):(?P<dport>\d{1,5}))?$"
)
WAIT_SLICE_S = 0.2  # waits run in slices so that Ctrl-C and close() get through
MAX_PENDING_TAGS = 4_000_000  # merge memory bound (36 MB)
END_QUIET_S = 0.5  # real Time Controller: stopped and this long without data = drained


def parse_resource(resource: str) -> tuple[str, str, str]:
    """``tcp://host:port[?dlt=host:port]`` -> (SCPI endpoint, DLT endpoint, TC host)."""
    m = _RESOURCE.match(resource or "")
    if not m:
        raise ValueError(
            f"{resource!r} is not a Time Controller resource (tcp://<host>:5555 or "
            "tcp://<host>:5555?dlt=<host>:6060)"
        )
    dhost, dport = m["dhost"] or "localhost", m["dport"] or "6060"
    return f"tcp://{m['host']}:{m['port']}", f"tcp://{dhost}:{dport}", m["host"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now (the DLT binds the stream port the client names)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@njit(cache=True, nogil=True)
def _merge2(ta, ca, tb, cb):  # pragma: no cover - compiled
    """Two-pointer merge of two time-sorted (ts, ch) runs; ties keep ``a`` first. Branch-free
    in the loop (selects, not jumps): which run a tag comes from is a coin flip for the CPU's
    branch predictor when two detectors count alike."""
    na, nb = len(ta), len(tb)
    n = na + nb
    out_t = np.empty(n, np.int64)
    out_c = np.empty(n, np.uint8)
    top = np.iinfo(np.int64).max
    i = j = 0
    for k in range(n):
        a = ta[min(i, na - 1)] if i < na else top
        b = tb[min(j, nb - 1)] if j < nb else top
        take_b = b < a
        out_t[k] = b if take_b else a
        out_c[k] = cb[min(j, nb - 1)] if take_b else ca[min(i, na - 1)]
        j += take_b
        i += 1 - take_b
    return out_t, out_c


def merge_blocks(parts: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge time-sorted (timestamps, channel) runs into one time-ordered block (stable: at
    equal times, the order of ``parts``): two-way merges of neighbouring runs, level by level
    (each tag is moved about log2(k) times, ~2 ns each)."""
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.uint8)
    runs = [(np.ascontiguousarray(ts, np.int64), np.full(len(ts), c, np.uint8)) for ts, c in parts]
    while len(runs) > 1:
        nxt = [_merge2(*runs[i], *runs[i + 1]) for i in range(0, len(runs) - 1, 2)]
        if len(runs) % 2:
            nxt.append(runs[-1])
        runs = nxt
    return runs[0]


class _ChannelQueue:
    """Time stamps received on one stream and not yet given out."""

    def __init__(self, channel: int):
        self.channel = channel
        self.parts: list[np.ndarray] = []
        self.n = 0
        self.last = -(2**62)  # latest time stamp received
        self.ended = False  # the stream's end-of-acquisition arrived
        self.received = 0  # in this acquisition

    def take_upto(self, t: int) -> np.ndarray:
        """Remove and return the time stamps <= t."""
        if not self.parts:
            return np.empty(0, np.int64)
        arr = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        k = int(np.searchsorted(arr, t, side="right"))
        out, rest = arr[:k], arr[k:]
        self.parts = [rest] if len(rest) else []
        self.n = len(rest)
        return out


class IDQTimeController(ThreadDeadlines):
    """ID900/ID1000 Time Controller: tagger role over ZeroMQ (see the module docstring)."""

    roles = ("tagger",)
    name: str
    resource_name: str
    # hil.roles channel -> Time Controller input
    INPUTS: dict[int, int] = {0: 1, 1: 2, 2: 3, 3: 4, 4: 5}
    round_trip_query = "*IDN?"

    def __init__(
        self,
        resource: str,
        name: str | None = None,
        *,
        timeout_s: float = 5.0,
        check_errors: bool = True,
        on_action: Callable[[str, str], None] | None = None,
        **options: Any,
    ):
        if options:
            raise ValueError(f"IDQTimeController takes no options, got {sorted(options)}")
        self.name = name or "tagger"
        self.resource_name = resource
        self._timeout_s = float(timeout_s)
        self.on_action = on_action
        self.scpi_endpoint, self.dlt_endpoint, self.tc_host = parse_resource(resource)
        self._ctx = zmq.Context()
        self._lock = threading.RLock()
        self._local = threading.local()
        self._lost: str | None = None
        self._closing = False
        self._req: zmq.Socket | None = None
        self._dlt: zmq.Socket | None = None
        self._streams: dict[int, tuple[int, zmq.Socket]] = {}  # input -> (DLT id, PAIR)
        self._queues: dict[int, _ChannelQueue] = {}
        self._emulated: bool | None = None
        self._held_ps: int | None = None
        self._marks: list[int] = []  # markers to give out (link times)
        self._emitted_ps = -(2**62)  # the merged stream has been given out up to here
        self._last_ps = 0  # the latest time stamp received
        self.out_of_order = 0
        self._lost_flag = False
        self._running = False
        self.idn  # noqa: B018 - opening is answering *IDN? (the bench's probe)

    # -- transport -----------------------------------------------------------------------------
    def _socket(self, kind: int, endpoint: str) -> zmq.Socket:
        s = self._ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        return s

    def _end(self) -> float:
        return self._until(time.monotonic() + self._timeout_s)

    def _request(self, which: str, command: str, payload: bytes) -> bytes:
        """One REQ/REP exchange within the timeout; a REQ socket that timed out is replaced
        (ZeroMQ's REQ cannot send again before its reply)."""
        if self._lost is not None:
            raise InstrumentUnreachable(self.name, command, self._lost, self._lost)
        endpoint = self.scpi_endpoint if which == "scpi" else self.dlt_endpoint
        with self._lock:
            attr = "_req" if which == "scpi" else "_dlt"
            sock = getattr(self, attr)
            if sock is None:
                sock = self._socket(zmq.REQ, endpoint)
                setattr(self, attr, sock)
            start = time.monotonic()
            end = self._end()
            sock.send(payload)
            while True:
                left = end - time.monotonic()
                if left <= 0 or self._closing:
                    sock.close(0)
                    setattr(self, attr, None)
                    waited = time.monotonic() - start
                    if self._closing:
                        cause = "the connection was closed by this program"
                        raise InstrumentUnreachable(self.name, command, cause, cause)
                    cause = f"no answer from {endpoint} within {waited:.3g} s"
                    raise InstrumentTimeout(self.name, command, cause, cause)
                if sock.poll(int(min(left, WAIT_SLICE_S) * 1000) + 1, zmq.POLLIN):
                    return sock.recv()

    def query(self, command: str) -> str:
        """Send one SCPI request; its reply (an ``SCPI_ERR_`` reply raises InstrumentError)."""
        reply = self._request("scpi", command, command.encode("ascii")).decode("utf-8", "replace")
        if "SCPI_ERR_" in reply:
            raise InstrumentError(self.name, command, reply.strip()[:200])
        return reply.strip()

    def write(self, command: str) -> None:
        if self.on_action is not None:
            self.on_action(self.name, command)
        self.query(command)

    set_checked = write  # every request is answered: an error is always seen

    def dlt(self, request: str) -> dict:
        """One DataLinkTargetService request; its JSON answer (an error answer raises)."""
        raw = self._request("dlt", request, request.encode("utf-8"))
        try:
            answer = json.loads(raw)
        except ValueError:
            raise InstrumentError(
                self.name, request, f"DataLinkTargetService answer {raw[:60]!r} is not JSON"
            ) from None
        if isinstance(answer, dict) and "error" in answer:
            err = answer["error"]
            text = err.get("description", err) if isinstance(err, dict) else err
            raise InstrumentError(self.name, request, f"DataLinkTargetService: {text}")
        return answer

    # -- Driver --------------------------------------------------------------------------------
    @property
    def idn(self) -> str:
        """Get the identification string (``*IDN?``)."""
        return self.query("*IDN?")

    @property
    def unreachable(self) -> str | None:
        return self._lost

    @property
    def emulated(self) -> bool:
        """Whether the Time Controller answers the emulator's own commands (hold points)."""
        if self._emulated is None:
            try:
                self.query("EMUL:STAT?")
                self._emulated = True
            except InstrumentTimeout:
                raise
            except InstrumentError:
                self._emulated = False
        return self._emulated

    def round_trip_s(self, n: int = 100) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.query(self.round_trip_query)
            times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]

    def settings(self) -> dict:
        return {
            "resolution_ps": int(self.query("DEVI:RES:BWID?")),
            "inputs": {str(c): self.input_settings(c) for c in self.INPUTS},
        }

    def safe_state(self) -> None:
        """Stop a recording."""
        self.stop()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        with self._lock:
            self._closing = False  # the DLT stop requests below still need answers
            for ident, sock in list(self._streams.values()):
                with contextlib.suppress(Exception), self.deadline(1.0):
                    self.dlt(f"stop --id {ident}")
                sock.close(0)
            self._streams.clear()
            self._closing = True
            self._lost = self._lost or "the connection was closed by this program"
            for s in (self._req, self._dlt):
                if s is not None:
                    s.close(0)
            self._req = self._dlt = None
        self._ctx.term()

    def __repr__(self) -> str:
        return f"<IDQTimeController {self.name} at {self.resource_name}>"

    # -- inputs --------------------------------------------------------------------------------
    def _input(self, channel: int) -> int:
        if channel not in self.INPUTS:
            raise ValueError(f"channel {channel} has no Time Controller input (INPUTS)")
        return self.INPUTS[channel]

    def set_input(
        self,
        channel: int,
        *,
        enabled: bool | None = None,
        threshold_v: float | None = None,
        delay_s: float | None = None,
    ) -> None:
        """Set a channel's input: enable, threshold (V, -2..3), delay (s, within 1 us)."""
        n = self._input(channel)
        if enabled is not None:
            self.write(f"INPU{n}:ENAB {'ON' if enabled else 'OFF'}")
        if threshold_v is not None:
            strict_range(threshold_v, (-2.0, 3.0))
            self.write(f"INPU{n}:THRE {threshold_v:.4f}")
        if delay_s is not None:
            strict_range(delay_s, (-1e-6, 1e-6))
            self.write(f"INPU{n}:DELAY {round(delay_s * 1e12):d}")

    def input_settings(self, channel: int) -> dict:
        n = self._input(channel)
        return {
            "enabled": self.query(f"INPU{n}:ENAB?").upper() in ("1", "ON", "TRUE"),
            "threshold_v": float(self.query(f"INPU{n}:THRE?")),
            "delay_s": float(self.query(f"INPU{n}:DELAY?")) * 1e-12,
        }

    @property
    def resolution_s(self) -> float:
        return int(self.query("DEVI:RES:BWID?")) * 1e-12

    def counts(self, channel: int, integration_ms: int = 100) -> int:
        """Counts of a channel's input over ``integration_ms`` (its own counter)."""
        n = self._input(channel)
        self.write(f"INPU{n}:COUN:INTE {integration_ms:d}")
        return int(self.query(f"INPU{n}:COUN?"))

    # -- clock and holds -----------------------------------------------------------------------
    def link_time_ps(self) -> int:
        """The link clock in ps: the emulator's clock; on a real Time Controller the latest
        time stamp received."""
        if self.emulated:
            return parse_link_time_ps(self.query("EMUL:TIME?"))
        return self._last_ps

    def link_time_s(self) -> float:
        return self.link_time_ps() * 1e-12

    def _need_emulated(self, what: str) -> None:
        if not self.emulated:
            raise InstrumentError(
                self.name, what, "hold points exist on the emulated Time Controller only"
            )

    def set_holds(self, offsets_s: Iterable[float], timeout_s: float | None = None) -> None:
        """Hold points of the next acquisition (emulated Time Controller only)."""
        self._need_emulated("EMUL:HOLD")
        self.write("EMUL:HOLD:CLE")
        if timeout_s is not None:
            strict_range(timeout_s, (0.01, 3600.0))
            self.write(f"EMUL:HOLD:TIM {timeout_s:.6g}")
        for offset in offsets_s:
            strict_range(offset, (0.0, 86400.0))
            self.write(f"EMUL:HOLD {offset:.12f}")

    def held_time_ps(self) -> int:
        return parse_link_time_ps(self.query("EMUL:HOLD:TIME?"))

    def resume(self) -> None:
        self._held_ps = None
        self.write("EMUL:CONT")

    def hold_expired(self) -> bool:
        return self.query("EMUL:HOLD:EXP?").strip() in ("1", "ON")

    # -- acquisition ---------------------------------------------------------------------------
    def _open_streams(self) -> None:
        """One DLT stream per mapped input, kept across acquisitions."""
        for channel, n in self.INPUTS.items():
            if n in self._streams:
                continue
            dlt_host = self.dlt_endpoint.split("//", 1)[1].rsplit(":", 1)[0]
            host = "127.0.0.1" if dlt_host == "localhost" else dlt_host
            port = free_port(host) if host in ("127.0.0.1", "::1") else 4241 + n
            answer = self.dlt(
                f"start-stream --address {self.tc_host} --channel {n} --stream-port {port}"
            )
            pair = self._socket(zmq.PAIR, f"tcp://{dlt_host}:{port}")
            pair.setsockopt(zmq.RCVHWM, 64)
            self._streams[n] = (int(answer["id"]), pair)
            self._queues[n] = _ChannelQueue(channel)

    def start(self, duration_s: float, pace: float | None = None) -> None:
        """Record ``duration_s`` s. ``pace``: emulated Time Controller only (link time per
        wall time; 0 = as fast as possible)."""
        strict_range(duration_s, (1e-6, 86400.0))
        self._open_streams()
        self._drain_stale()
        for q in self._queues.values():
            q.parts, q.n, q.ended, q.received, q.last = [], 0, False, 0, -(2**62)
        self._marks, self._held_ps, self.out_of_order, self._lost_flag = [], None, 0, False
        self._emitted_ps = -(2**62)
        for n in self._streams:
            self.write(f"RAW{n}:ERRORS:CLEAR")
            self.write(f"RAW{n}:SEND ON")
        self.write("REC:TRIG:ARM:MODE MANU")
        self.write("REC:ENAB ON")
        self.write("REC:NUM 1")
        self.write(f"REC:DUR {round(duration_s * 1e12):d}")
        if pace is not None and self.emulated:
            self.write(f"EMUL:PACE {pace:.6g}")
        self.write("REC:PLAY")
        self._running = True

    def _drain_stale(self) -> None:
        """Drop what an earlier, abandoned acquisition left on the streams."""
        for _, sock in self._streams.values():
            while sock.poll(0, zmq.POLLIN):
                sock.recv()

    def stop(self) -> None:
        self.write("REC:STOP")

    def status(self) -> str:
        if self.emulated:
            return self.query("EMUL:STAT?")
        return "RUNNING" if self.query("REC:STAG?").upper().startswith("PLAY") else "DONE"

    def mark(self) -> None:
        """A marker tag (MARKER_CHANNEL) at the current link time (at a hold: the held time)."""
        t = self._held_ps if self._held_ps is not None else self.link_time_ps()
        self._marks.append(int(t))

    def data_lost(self) -> bool:
        """Whether the last acquisition lost tags (RAW errors, the emulator's buffer, merge)."""
        lost = self._lost_flag or self.out_of_order > 0
        lost = lost or any(int(self.query(f"RAW{n}:ERRORS?")) for n in self._streams)
        if self.emulated:
            lost = lost or self.query("EMUL:LOSS?").strip() in ("1", "ON")
        return lost

    def loss_counts(self) -> dict[str, int]:
        return {
            "missed_events": sum(int(self.query(f"RAW{n}:ERRORS?")) for n in self._streams),
            "out_of_order": self.out_of_order,
        }

    def _receive(self, wait_s: float) -> int:
        """Receive what the streams have (waiting up to ``wait_s`` for the first message);
        returns the number of messages."""
        poller = zmq.Poller()
        for _, sock in self._streams.values():
            poller.register(sock, zmq.POLLIN)
        got = 0
        events = dict(poller.poll(int(wait_s * 1000)))
        while events:
            for n, (_, sock) in self._streams.items():
                if sock not in events:
                    continue
                q = self._queues[n]
                for _ in range(64):  # bounded per socket per round: the others get their turn
                    try:
                        msg = sock.recv(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    got += 1
                    buf = msg.buffer
                    if len(buf) == 0:
                        q.ended = True
                        continue
                    if len(buf) % 8:
                        self._lost_flag = True  # not int64 time stamps: dropped, counted
                        continue
                    ts = np.frombuffer(buf, dtype="<i8").astype(np.int64, copy=False)
                    q.received += len(ts)
                    if ts[0] <= self._emitted_ps:  # older than what was given out
                        late = int(np.searchsorted(ts, self._emitted_ps, side="right"))
                        self.out_of_order += late
                        ts = ts[late:]
                        if not len(ts):
                            continue
                    q.parts.append(ts)
                    q.n += len(ts)
                    q.last = int(ts[-1])
                    self._last_ps = max(self._last_ps, q.last)
            events = dict(poller.poll(0))
            if events and sum(q.n for q in self._queues.values()) > MAX_PENDING_TAGS:
                break  # give out what waits before reading more
        return got

    def _give_out(self, upto: int | None) -> tuple[np.ndarray, np.ndarray] | None:
        """Merge and remove every pending tag <= ``upto`` (None: up to the watermark, the
        earliest latest time stamp of the streams not ended), markers included."""
        if upto is None:
            open_q = [q for q in self._queues.values() if not q.ended]
            upto = min(q.last for q in open_q) if open_q else 2**62
            if sum(q.n for q in self._queues.values()) > MAX_PENDING_TAGS:
                # bounded memory: give out the older half of what waits
                upto = max(upto, max(q.last for q in self._queues.values()) - 1)
        parts = []
        for n in sorted(self._queues):
            q = self._queues[n]
            ts = q.take_upto(upto)
            if len(ts):
                parts.append((ts, q.channel))
        marks = [t for t in self._marks if t <= upto]
        if marks:
            self._marks = [t for t in self._marks if t > upto]
            parts.append((np.asarray(sorted(marks), np.int64), MARKER_CHANNEL))
        if not parts:
            return None
        ts, ch = merge_blocks(parts)
        self._emitted_ps = max(self._emitted_ps, int(ts[-1]))
        return ts, ch

    def _catch_up(self, command: str) -> None:
        """Emulated: receive until every stream has delivered what the emulator pushed."""
        sent = [int(x) for x in self.query("EMUL:SENT?").split(",")]
        end = self._end()
        while True:
            behind = [
                n for n, q in self._queues.items() if n <= len(sent) and q.received < sent[n - 1]
            ]
            if not behind:
                return
            if time.monotonic() > end:
                cause = f"streams of inputs {behind} did not deliver what was pushed"
                raise InstrumentTimeout(self.name, command, cause, cause)
            self._receive(WAIT_SLICE_S)

    def stream(
        self,
        poll_s: float = 0.002,
        max_poll_s: float = 0.016,
        on_hold: Callable[[], None] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield merged tag blocks of the running acquisition until it is over and drained.

        ``on_hold()`` (emulated) is called at a hold point once every tag before it has been
        yielded; markers it asks for are at the held link time."""
        emulated = self.emulated
        quiet_since = None
        wait = poll_s
        while True:
            got = self._receive(wait)
            if all(q.ended for q in self._queues.values()):
                block = self._give_out(2**62)
                if block is not None:
                    yield block
                break
            block = self._give_out(None)
            if block is not None:
                yield block
            if got:
                wait, quiet_since = poll_s, None
                continue
            wait = min(2 * wait, max_poll_s)
            status = self.status()
            if status == "HELD" and on_hold is not None:
                self._catch_up("EMUL:SENT?")
                held = self.held_time_ps()
                block = self._give_out(held - 1)  # everything before the hold
                if block is not None:
                    yield block
                self._held_ps = held
                on_hold()
                self._held_ps = None
                block = self._give_out(held)  # the markers placed at the hold
                if block is not None:
                    yield block
                continue
            if not emulated and status != "RUNNING":
                # a real DLT may not end its streams: quiet after the recording = drained
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > END_QUIET_S:
                    block = self._give_out(2**62)
                    if block is not None:
                        yield block
                    break
            elif status not in ("RUNNING", "HELD"):
                # emulated: every stream ends itself; bounded by the timeout from here on
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > self._timeout_s:
                    cause = "streams did not end after the recording ended"
                    raise InstrumentTimeout(self.name, "(stream)", cause, cause)
        self._running = False

    # -- self-test -----------------------------------------------------------------------------
    def self_test(self, period_ps: int = 10_000_000, duration_s: float = 0.01) -> dict:
        """Route the on-board generator to the sync input for ``duration_s`` and check that its
        pulses come back at ``period_ps`` apart; the input's own link afterwards."""
        n = self.INPUTS[0]
        self.write(f"GEN1:ENAB ON;PPER {period_ps:d};PWID 20000;PNUM INF;PLAY;TRIG:LINK NONE")
        self.write(f"TSCO{n}:FIR:LINK GEN1")
        try:
            self.start(duration_s, pace=0.0 if self.emulated else None)
            ts = np.concatenate([t[c == 0] for t, c in self.stream()] or [np.empty(0, np.int64)])
        finally:
            self.write(f"TSCO{n}:FIR:LINK INPU{n}")
            self.write("GEN1:STOP")
        d = np.diff(ts)
        expected = int(duration_s * 1e12 // period_ps)
        ok = len(ts) >= max(expected - 1, 1) and bool(len(d) == 0 or np.all(d == period_ps))
        return {"ok": ok, "pulses": int(len(ts)), "expected": expected, "period_ps": period_ps}
