"""ID Quantique Time Controller (ID900/ID1000) personality of the emulated tagger.

Two ZeroMQ services over the same link as the default tagger (one Link, one acquisition
machinery: the same physics and the same tags):

- the Time Controller's SCPI over ZeroMQ REP (the vendor's ``tcp://<ip>:5555``): each request
  is one program message, each gets one reply (a setter's reply is empty); an error's reply
  starts ``SCPI_ERR_`` (``SCPI_ERR_-113: Undefined header``);
- IDQ's DataLinkTargetService over ZeroMQ REP (``tcp://localhost:6060``): JSON-answered text
  requests ``start-stream --address A --channel N --stream-port P [--with-ref-index]``,
  ``list`` and ``stop --id ID``; each stream is a ZeroMQ PAIR socket bound at
  ``tcp://<host>:<P>`` carrying that input's time stamps as raw little-endian int64 ps; an
  empty message ends an acquisition's data on that stream.

Inputs: input 1 carries the source's sync, inputs 2..5 the detectors H, V, D, A (the link's
channels 0..4, one higher). The on-board generator (``GEN1``) replaces an input's tags when a
time-stamping block's first link names it (``TSCO<n>:FIR:LINK GEN1``).

Emulator-only commands (``EMULator:...``, absent from the real instrument): the link clock
(``EMUL:TIME?``), pace, status, loss flag and hold points of the default tagger (see
emulator/README.md), and ``EMUL:SENT?`` (time stamps pushed per stream in this acquisition,
answered once nothing before the link clock is left unpushed), so that a client can act at an
exact link time.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
import time

import numpy as np
import zmq

from .devices import MARKER_CHANNEL, LinkDevice, _seconds
from .link import PS, Link
from .scpi import Bool, Choice, Num, ScpiError

N_INPUTS = 5  # input n carries link channel n - 1 (sync, H, V, D, A)
MAX_REQUEST_BYTES = 64 * 1024
MAX_STREAMS = 16
SEND_STALL_S = 5.0  # a stream whose reader stops this long loses what could not be sent
MAX_MESSAGE_TAGS = 1 << 20  # per stream message (8 MiB)
# tags taken from the tagger per pushing round: every input's share of a round is sent before
# the next round's, so a reader merging the streams waits for little (and holds little)
ROUND_TAGS = 1 << 18


class Word:
    """Character data of any spelling (a link target such as ``TSCO1``, ``GEN1``, ``NONE``,
    a count such as ``INF``): letters, digits and ``_``."""

    def parse(self, tok: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.+-]{1,32}$", tok):
            raise ScpiError(-104, tok[:20])
        return tok


class TimeController(LinkDevice):
    """The Time Controller's SCPI command set (the parts a capture uses), over the default
    tagger device ``tagger`` of the same link."""

    IDN = ("ID Quantique", "ID1000 Time Controller (qkd-hil emulated)", "EMU0007", "1.0")

    def reset(self) -> None:
        self.thresholds_v = [0.4] * N_INPUTS
        self.count_integration_ms = [1000] * N_INPUTS
        self.rec_duration_ps = PS
        self.rec_number = "1"
        self.rec_enabled = False
        self.raw_send = [False] * N_INPUTS
        self.raw_errors = [0] * N_INPUTS
        self.tsco_first = [f"INPU{n}" for n in range(1, N_INPUTS + 1)]
        self.gen_enabled = False
        self.gen_playing = False
        self.gen_period_ps = 10_000_000
        self.gen_width_ps = 20_000

    def __init__(self, link: Link, tagger):
        self.tagger = tagger
        self.seq = 0  # acquisitions started (the stream pusher ends each one once)
        self.play_buf = None  # the tagger buffer of the last REC:PLAY
        self.t0_ps = 0  # link time of the last REC:PLAY
        super().__init__(link)
        c = self.command
        r = {"suffix_range": (1, N_INPUTS)}
        g = {"suffix_range": (1, 1)}
        c("INPUt#:ENABle", self._enable, Bool(), **r)
        c("INPUt#:ENABle?", lambda s: self._enabled(s[0]), **r)
        c("INPUt#:THREshold", self._set_threshold, Num(-2.0, 3.0, unit="V"), **r)
        c("INPUt#:THREshold?", lambda s: float(self.thresholds_v[s[0] - 1]), **r)
        c("INPUt#:DELAY", self._set_delay, Num(-1e6, 1e6, integer=True), **r)
        c("INPUt#:DELAY?", lambda s: int(self.link.get("channel_delay_ps", s[0] - 1)), **r)
        c("INPUt#:COUNter:INTEgration", self._set_integration, Num(1, 60000, integer=True), **r)
        c("INPUt#:COUNter:INTEgration?", lambda s: self.count_integration_ms[s[0] - 1], **r)
        c("INPUt#:COUNter?", lambda s: self._count(s[0]), **r)
        c("DEVIce:RESolution:BWIDth?", lambda s: int(self.link.get("resolution_ps")))
        c("RECord:TRIGger:ARM:MODE", lambda s, v: None, Choice(("MANUal", "AUTO")))
        c("RECord:ENABle", lambda s, v: setattr(self, "rec_enabled", bool(v)), Bool())
        c("RECord:NUMber", self._set_number, Word())
        c("RECord:DURation", self._set_duration, Num(1, 86400 * PS, integer=True))
        c("RECord:DURation?", lambda s: self.rec_duration_ps)
        c("RECord:PLAY", lambda s: self._play())
        c("RECord:STOP", lambda s: self._stop())
        c("RECord:STAGe?", lambda s: self._stage())
        c("RAW#:ERRors:CLEar", lambda s: self.raw_errors.__setitem__(s[0] - 1, 0), **r)
        c("RAW#:ERRors?", lambda s: self.raw_errors[s[0] - 1], **r)
        c("RAW#:SEND", lambda s, v: self.raw_send.__setitem__(s[0] - 1, bool(v)), Bool(), **r)
        c("RAW#:REF:LINK", lambda s, v: None, Word(), **r)
        c("RAW#:STOP:LINK", lambda s, v: None, Word(), **r)
        c("TSCO#:FIRst:LINK", self._tsco_link, Word(), **r)
        c("TSCO#:FIRst:LINK?", lambda s: self.tsco_first[s[0] - 1], **r)
        c("GENerator#:ENABle", lambda s, v: setattr(self, "gen_enabled", bool(v)), Bool(), **g)
        c("GENerator#:PPERiod", self._set_period, Num(1000, 10**12, integer=True), **g)
        c("GENerator#:PWIDth", lambda s, v: setattr(self, "gen_width_ps", v), Num(1, 10**9), **g)
        c("GENerator#:PNUMber", lambda s, v: None, Word(), **g)
        c("GENerator#:PLAY", lambda s: setattr(self, "gen_playing", True), **g)
        c("GENerator#:STOP", lambda s: setattr(self, "gen_playing", False), **g)
        c("GENerator#:TRIGger:LINK", lambda s, v: None, Word(), **g)
        # emulator only: the default tagger's clock, pace, status and hold points
        t = self.tagger
        c("EMULator:TIME?", lambda s: _seconds(self.link.now_ps))
        c("EMULator:PACE", lambda s, v: setattr(t, "pace", v), Num(0.0, 1e6))
        c("EMULator:STATus?", lambda s: t.state)
        c("EMULator:LOSS?", lambda s: bool(t.lost))
        c("EMULator:HOLD", lambda s, v: t._add_hold(s, v), Num(0.0, 86400.0, unit="S"))
        c("EMULator:HOLD:CLEar", lambda s: t._clear_holds())
        c("EMULator:HOLD:TIMeout", lambda s, v: setattr(t, "hold_timeout_s", v), Num(0.01, 3600))
        c("EMULator:HOLD:TIME?", lambda s: t._held_time())
        c("EMULator:HOLD:EXPired?", lambda s: bool(t.hold_expired))
        c("EMULator:CONTinue", lambda s: t._continue_hold())
        c("EMULator:SENT?", lambda s: self.sent_answer())
        self.sent_answer = lambda: ""  # replaced by the stream service

    # -- inputs ------------------------------------------------------------------------------
    def _enabled(self, n: int) -> bool:
        return bool(self.link.get("channel_enabled", n - 1))

    def _enable(self, s, v) -> None:
        self.link.set("channel_enabled", bool(v), s[0] - 1)

    def _set_threshold(self, s, v) -> None:
        self.thresholds_v[s[0] - 1] = v

    def _set_delay(self, s, v) -> None:
        self.link.set("channel_delay_ps", int(v), s[0] - 1)

    def _set_integration(self, s, v) -> None:
        self.count_integration_ms[s[0] - 1] = int(v)

    def _count(self, n: int) -> int:
        """Counts on input ``n`` over one integration time of link time (idle link only)."""
        if self.tagger.state in ("RUNNING", "HELD"):
            raise ScpiError(-221, "counters unavailable while recording")
        t_stop = self.link.now_ps + self.count_integration_ms[n - 1] * PS // 1000
        total = 0
        while self.link.now_ps < t_stop:
            _, ch = self.link.step(t_stop)
            total += int(np.count_nonzero(ch == n - 1))
        return total

    # -- recording ---------------------------------------------------------------------------
    def _set_number(self, s, v: str) -> None:
        if v.upper() not in ("1", "INF", "INFINITY"):
            raise ScpiError(-224, "the emulated Time Controller records 1 or INF times")
        self.rec_number = "INF" if v.upper().startswith("INF") else "1"

    def _set_duration(self, s, v) -> None:
        self.rec_duration_ps = int(v)

    def _play(self) -> None:
        t = self.tagger
        with t.lock:
            t.duration_s = 86400.0 if self.rec_number == "INF" else self.rec_duration_ps / PS
            self.t0_ps = self.link.now_ps
            t.start_acquisition()
            # the buffer of this acquisition: the streams carry only the Time Controller's own
            # recordings, never an acquisition a client of the default tagger started
            self.play_buf = t._buf
            # last: the pusher reads seq and the tagger's state without the tagger's lock; a new
            # seq seen beside the previous acquisition's DONE state would end the new stream at
            # once (no time stamps, only the end)
            self.seq += 1

    def _stop(self) -> None:
        with self.tagger.lock:
            self.tagger.stop_acquisition()

    def _stage(self) -> str:
        return "PLAYING" if self.tagger.state in ("RUNNING", "HELD") else "STOPPED"

    # -- generator ----------------------------------------------------------------------------
    def _tsco_link(self, s, v: str) -> None:
        v = v.upper()
        if v != "GEN1" and not v.startswith("INPU"):
            raise ScpiError(-224, f"{v}: link a time-stamping block to INPU<n> or GEN1")
        self.tsco_first[s[0] - 1] = v

    def _set_period(self, s, v) -> None:
        self.gen_period_ps = int(v)

    def generator_inputs(self) -> list[int]:
        if not (self.gen_enabled and self.gen_playing):
            return []
        return [n for n in range(1, N_INPUTS + 1) if self.tsco_first[n - 1] == "GEN1"]

    def execute_zmq(self, message: bytes) -> bytes:
        """One request -> one reply: the answer, empty for a setter, ``SCPI_ERR_<code>: text``
        for the first error the message raised."""
        with self.lock:
            self.errors.clear()
            reply = self.execute(message)
            if len(self.errors):
                code, text = self.errors.pop()
                self.errors.clear()
                return f"SCPI_ERR_{code}: {text}".encode()
        return b"" if reply is None else reply.rstrip(b"\n")


class _Stream:
    def __init__(self, ident: int, channel: int, port: int, sock: zmq.Socket):
        self.id, self.channel, self.port, self.sock = ident, channel, port, sock
        self.sent = 0  # time stamps sent in the current acquisition
        self.lost = False  # the reader stalled: this stream is closed


class IdqServices:
    """The Time Controller's SCPI socket, the DataLinkTargetService and its stream pusher."""

    def __init__(self, link: Link, tagger, host: str = "127.0.0.1"):
        self.host = host
        self.tc = TimeController(link, tagger)
        self.tc.sent_answer = self._sent_answer
        self.tagger = tagger
        self.ctx = zmq.Context()
        self._streams: dict[int, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._push_lock = threading.Lock()
        self._ended_seq = 0
        self._seq_seen = 0
        self._gen_next_ps = 0
        self._next_id = 1
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.resources: dict[str, str] = {}

    def start(self, scpi_port: int = 0, dlt_port: int = 0) -> dict[str, str]:
        scpi = self._rep(scpi_port)
        dlt = self._rep(dlt_port)
        sp = int(scpi.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        dp = int(dlt.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        for target, sock, name in (
            (self._serve_scpi, scpi, "idq-scpi"),
            (self._serve_dlt, dlt, "idq-dlt"),
            (self._push, None, "idq-push"),
        ):
            args = () if sock is None else (sock,)
            th = threading.Thread(target=target, args=args, name=name, daemon=True)
            th.start()
            self._threads.append(th)
        self.resources = {
            "tagger:IDQTimeController": f"tcp://{self.host}:{sp}?dlt={self.host}:{dp}"
        }
        return self.resources

    def _rep(self, port: int) -> zmq.Socket:
        sock = self.ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)  # a larger request drops its peer
        sock.bind(f"tcp://{self.host}:{port if port else '*'}")
        return sock

    def _loop(self, sock: zmq.Socket, handle) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(200):
                    continue
                request = sock.recv()
                try:
                    reply = handle(request)
                except Exception as exc:  # noqa: BLE001 - a handler bug must not end the service
                    reply = f"SCPI_ERR_-300: internal {type(exc).__name__}".encode()
                sock.send(reply)
        except zmq.ZMQError:
            return  # context terminated (stop)
        finally:
            sock.close(0)

    def _serve_scpi(self, sock: zmq.Socket) -> None:
        self._loop(sock, self.tc.execute_zmq)

    def _serve_dlt(self, sock: zmq.Socket) -> None:
        self._loop(sock, lambda r: json.dumps(self._dlt(r)).encode())

    # -- DataLinkTargetService -----------------------------------------------------------------
    def _dlt(self, request: bytes) -> dict:
        try:
            words = shlex.split(request.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return {"error": {"description": f"unreadable request: {exc}"}}
        if not words:
            return {"error": {"description": "empty request"}}
        cmd, opts = words[0], _options(words[1:])
        if cmd == "list":
            with self._streams_lock:
                return {
                    "streams": [
                        {"id": s.id, "channel": s.channel, "stream-port": s.port}
                        for s in self._streams.values()
                    ]
                }
        if cmd == "stop":
            try:
                ident = int(opts.get("id", ""))
            except ValueError:
                return {"error": {"description": "stop needs --id <number>"}}
            with self._push_lock, self._streams_lock:
                s = self._streams.pop(ident, None)
                if s is None:
                    return {"error": {"description": f"no stream with id {ident}"}}
                s.sock.close(0)
            return {"id": ident}
        if cmd == "start-stream":
            try:
                channel = int(opts["channel"])
                port = int(opts["stream-port"])
            except (KeyError, ValueError):
                return {"error": {"description": "start-stream needs --channel and --stream-port"}}
            if not 1 <= channel <= N_INPUTS:
                return {"error": {"description": f"channel {channel} is not in 1..{N_INPUTS}"}}
            if not 1 <= port <= 65535:
                return {"error": {"description": f"stream port {port} is not in 1..65535"}}
            with self._push_lock, self._streams_lock:
                if len(self._streams) >= MAX_STREAMS:
                    return {"error": {"description": f"at most {MAX_STREAMS} streams"}}
                sock = self.ctx.socket(zmq.PAIR)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, 64)  # bounded: the pusher waits for the reader
                try:
                    sock.bind(f"tcp://{self.host}:{port}")
                except zmq.ZMQError as exc:
                    sock.close(0)
                    return {"error": {"description": f"stream port {port}: {exc}"}}
                ident = self._next_id
                self._next_id += 1
                self._streams[ident] = _Stream(ident, channel, port, sock)
            return {"id": ident}
        if cmd == "start-save":
            return {"error": {"description": "start-save is not emulated (use start-stream)"}}
        return {"error": {"description": f"unknown request {cmd!r}"}}

    def _sent_answer(self) -> str:
        """``n1,n2,...`` time stamps pushed per input in this acquisition, once nothing
        generated so far waits in the tagger's buffer (bounded: 5 s)."""
        deadline = time.monotonic() + 5.0
        while True:
            with self._push_lock:
                with self.tagger._room:
                    empty = self.tagger._buffered == 0
                if empty and self._seq_seen == self.tc.seq:
                    counts = [0] * N_INPUTS
                    with self._streams_lock:
                        for s in self._streams.values():
                            counts[s.channel - 1] += s.sent
                    return ",".join(map(str, counts))
            if time.monotonic() > deadline:
                raise ScpiError(-200, "streams did not catch up within 5 s")
            time.sleep(0.001)

    # -- the pusher --------------------------------------------------------------------------
    def _push(self) -> None:
        while not self._stop.is_set():
            with self._push_lock:
                busy = self._push_once()
            if not busy:
                time.sleep(0.001)

    def _push_once(self) -> bool:
        tc, tagger = self.tc, self.tagger
        seq = tc.seq
        if seq != self._seq_seen:  # a new acquisition: counts and generator restart
            self._seq_seen = seq
            self._gen_next_ps = tc.t0_ps
            with self._streams_lock:
                for s in self._streams.values():
                    s.sent = 0
        state = tagger.state
        horizon = tagger.link.now_ps  # every tag before this is generated (or being appended)
        if not self._streams:
            # no Time Controller client streams: the buffer belongs to the native tagger's
            # FETC:TAGS? (taking it here dropped its tags, a silent loss in every capture)
            return False
        with tagger._room:
            if tagger._buffered and tagger._buf is tc.play_buf:
                ts_parts, ch_parts, _ = tagger._take(min(tagger._buffered, ROUND_TAGS))
            else:
                ts_parts = ch_parts = []
            tagger._unsorted = False
            tagger._room.notify_all()
        with self._streams_lock:
            streams = list(self._streams.values())
        if ts_parts:
            ts = np.concatenate(ts_parts)
            ch = np.concatenate(ch_parts)
            keep = ch != MARKER_CHANNEL  # the Time Controller has no software marker
            ts, ch = ts[keep], ch[keep]
            # only markers can be out of order in the buffer, and they are dropped
            self._send_tags(streams, ts, ch, horizon)
            return True
        if state not in ("RUNNING", "HELD") and seq != self._ended_seq and seq:
            self._send_tags(streams, np.empty(0, np.int64), np.empty(0, np.uint8), horizon)
            for s in streams:  # the end of this acquisition on every stream
                if not s.lost:
                    self._send(s, b"")
            self._ended_seq = seq
            return True
        return False

    def _send_tags(self, streams, ts: np.ndarray, ch: np.ndarray, horizon_ps: int) -> None:
        gen_inputs = self.tc.generator_inputs()
        gen = np.empty(0, np.int64)
        if gen_inputs:
            period = self.tc.gen_period_ps
            start = self._gen_next_ps
            end = max(horizon_ps, int(ts[-1]) + 1 if len(ts) else 0)
            first = start + (-(start - self.tc.t0_ps)) % period
            gen = np.arange(first, end, period, dtype=np.int64)
            self._gen_next_ps = max(end, start)
        # split by input in one pass: a stable sort of the channel numbers (radix for uint8)
        order = np.argsort(ch, kind="stable")
        bounds = np.searchsorted(ch[order], np.arange(N_INPUTS + 1), side="left")
        ts_by = ts[order]
        for s in streams:
            if s.lost:
                continue
            n = s.channel - 1
            sel = gen if s.channel in gen_inputs else ts_by[bounds[n] : bounds[n + 1]]
            for i in range(0, len(sel), MAX_MESSAGE_TAGS):
                part = np.ascontiguousarray(sel[i : i + MAX_MESSAGE_TAGS], dtype="<i8")
                if not self._send(s, part):
                    self.tc.raw_errors[s.channel - 1] += len(sel) - i
                    break
                s.sent += len(part)

    def _send(self, s: _Stream, payload) -> bool:
        """Send one message, waiting for a slow reader at most SEND_STALL_S; a stream whose
        reader stalled longer is given up (its input's RAW errors count what it lost)."""
        deadline = time.monotonic() + SEND_STALL_S
        while not self._stop.is_set():
            try:
                s.sock.send(payload, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if time.monotonic() > deadline:
                    s.lost = True
                    return False
                s.sock.poll(50, zmq.POLLOUT)
        return False

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=2.0)
        with self._streams_lock:
            for s in self._streams.values():
                s.sock.close(0)
            self._streams.clear()
        self.ctx.term()


def _options(words: list[str]) -> dict[str, str]:
    """``--key value`` pairs (a flag without a value maps to "")."""
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w.startswith("--"):
            if i + 1 < len(words) and not words[i + 1].startswith("--"):
                out[w[2:]] = words[i + 1]
                i += 2
                continue
            out[w[2:]] = ""
        i += 1
    return out
