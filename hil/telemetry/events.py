"""Tamper-evident event log: JSON lines in the run folder, each chained to the one before.

Any module records an event with :func:`emit`; it does nothing until a run opens a log
(:func:`open_log`), never raises into its caller, and takes its lock so threads may emit at once.

Record format (one JSON object per line, keys in this order)::

    {"seq": 0, "utc": "2026-12-03T22:50:01.123456Z", "link_time_s": 1.25, "kind": "action",
     ... fields ..., "prev": "<sha256 hex of the previous line>", "hash": "<sha256 hex>"}

``prev`` of the first record is 64 zeros. ``hash`` is the SHA-256 of the line's own bytes with
its ``"hash"`` member removed (the exact text up to ``, "hash"``), so a record edited in place
fails its own check, and ``prev`` makes a deleted, inserted or reordered record fail at the
first line after the change. ``seq`` counts from 0 and must equal the line's position. The last
line can be cut off without a trace inside the file: the run's manifest (``hil/report.py``)
records the log's SHA-256 for that.

Key material never enters the log: ``bytes``-like field values are replaced by their length.

Optionally every record is also sent as RFC 5424 syslog (UDP, one record per datagram; or TCP
with RFC 6587 octet-counting framing) to a collector. A collector that cannot be reached is
reported once on the ``hil.telemetry`` logger and dropped; the file log goes on.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import socket
import threading
from pathlib import Path

log = logging.getLogger("hil.telemetry")

GENESIS = "0" * 64
_HASH_KEY = ', "hash": "'
SYSLOG_TIMEOUT_S = 2.0
FACILITY_LOCAL0 = 16
_SEVERITY = {"bench_error": 3, "fault": 4, "verdict": 5, "state": 5}  # err, warning, notice


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _clean(value):
    """JSON-safe copy: bytes become their length (never key material), NaN/inf become None."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes_withheld": len(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return _clean(value.item())
        except Exception:
            pass
    return str(value)


def line_hash(text_without_hash: str) -> str:
    return hashlib.sha256(text_without_hash.encode("utf-8")).hexdigest()


class SyslogSink:
    """RFC 5424 over UDP or TCP to ``host:port``; ``transport`` is "udp" or "tcp"."""

    def __init__(self, host: str, port: int, transport: str = "udp", app: str = "qkd-hil"):
        if transport not in ("udp", "tcp"):
            raise ValueError(f"syslog transport {transport!r}: use udp or tcp")
        self.address = (host, int(port))
        self.transport = transport
        self.app = app
        self.hostname = socket.gethostname() or "-"
        self.procid = str(os.getpid())
        self.sock: socket.socket | None = None
        self.failed = False

    def _connect(self) -> socket.socket:
        if self.transport == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(SYSLOG_TIMEOUT_S)
            s.connect(self.address)
        else:
            s = socket.create_connection(self.address, timeout=SYSLOG_TIMEOUT_S)
        return s

    def format(self, record: dict, line: str) -> bytes:
        sev = _SEVERITY.get(record.get("kind", ""), 6)  # informational by default
        msgid = "".join(c for c in str(record.get("kind", "-")) if 33 <= ord(c) <= 126)[:32]
        # RFC 5424 section 6: HEADER SP STRUCTURED-DATA SP MSG; the MSG is the log line in UTF-8
        # with a BOM, so a collector gets the same chained record the file holds.
        head = (
            f"<{FACILITY_LOCAL0 * 8 + sev}>1 {record['utc']} {self.hostname} {self.app} "
            f"{self.procid} {msgid or '-'} -"
        )
        return head.encode("ascii", "replace") + b" \xef\xbb\xbf" + line.encode("utf-8")

    def send(self, record: dict, line: str) -> None:
        if self.failed:
            return
        msg = self.format(record, line)
        try:
            if self.sock is None:
                self.sock = self._connect()
            if self.transport == "udp":
                self.sock.send(msg)
            else:  # RFC 6587 section 3.4.1 octet counting
                self.sock.sendall(str(len(msg)).encode() + b" " + msg)
        except OSError as e:
            self.failed = True
            log.warning(
                "syslog collector %s:%d (%s) dropped: %s; the event log file goes on",
                *self.address,
                self.transport,
                e,
            )
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def parse_syslog_target(text: str) -> tuple[str, int, str]:
    """``[udp://|tcp://]HOST:PORT`` -> (host, port, transport); UDP by default."""
    transport = "udp"
    if "://" in text:
        transport, _, text = text.partition("://")
        transport = transport.lower()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or transport not in ("udp", "tcp"):
        raise ValueError(f"syslog target {text!r}: expected [udp://|tcp://]HOST:PORT")
    return host.strip("[]"), int(port), transport


class EventLog:
    """One open log file; :func:`emit` writes to the module's current one."""

    def __init__(self, path: str | Path, syslog: SyslogSink | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.syslog = syslog
        self.seq = 0
        self.prev = GENESIS
        if self.path.exists() and self.path.stat().st_size:
            # Continue a chain (e.g. a second session into the same folder): resume after the
            # last line as it stands.
            lines = self.path.read_text(encoding="utf-8").splitlines()
            self.seq = len(lines)
            self.prev = line_hash(lines[-1])
        self.fh = open(self.path, "a", encoding="utf-8", buffering=1)

    def write(self, kind: str, link_time_s: float | None, fields: dict) -> None:
        with self.lock:
            if self.fh is None:
                return
            record = {"seq": self.seq, "utc": _utc_now(), "link_time_s": _clean(link_time_s)}
            record["kind"] = str(kind)
            for k, v in fields.items():
                if k not in ("seq", "utc", "link_time_s", "kind", "prev", "hash"):
                    record[k] = _clean(v)
            record["prev"] = self.prev
            body = json.dumps(record, ensure_ascii=False, separators=(", ", ": "))
            assert body.endswith("}")
            h = line_hash(body[:-1])
            line = body[:-1] + _HASH_KEY + h + '"}'
            self.fh.write(line + "\n")
            self.prev = line_hash(line)
            self.seq += 1
            if self.syslog is not None:
                self.syslog.send(record, line)

    def close(self) -> None:
        with self.lock:
            if self.fh is not None:
                self.fh.close()
                self.fh = None
            if self.syslog is not None:
                self.syslog.close()


_current: EventLog | None = None
_current_lock = threading.Lock()


def open_log(path: str | Path, syslog: str | SyslogSink | None = None) -> EventLog:
    """Open (append to) the event log at ``path`` and make it the one :func:`emit` writes to."""
    global _current
    if isinstance(syslog, str):
        host, port, transport = parse_syslog_target(syslog)
        syslog = SyslogSink(host, port, transport)
    new = EventLog(path, syslog)
    with _current_lock:
        old, _current = _current, new
    if old is not None:
        old.close()
    return new


def close_log() -> None:
    global _current
    with _current_lock:
        old, _current = _current, None
    if old is not None:
        old.close()


def current() -> EventLog | None:
    return _current


_listeners: list = []


def add_listener(fn) -> None:
    """Call ``fn(record)`` for every event from now on, log open or not (the metrics exporter
    counts verdicts and key deliveries this way); ``fn`` must be quick and not raise."""
    _listeners.append(fn)


def remove_listener(fn) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def emit(kind: str, *, link_time_s: float | None = None, **fields) -> None:
    """Record one event; a no-op while no log is open and no listener listens. Never raises;
    never pass key bytes."""
    ev = _current
    if ev is None and not _listeners:
        return
    if ev is not None:
        try:
            ev.write(kind, link_time_s, fields)
        except Exception as e:  # the log must never break the bench it watches
            log.warning("event log %s: could not write a %r event: %s", ev.path, kind, e)
    if _listeners:
        record = {"kind": kind, "link_time_s": link_time_s, **fields}
        for fn in list(_listeners):
            try:
                fn(record)
            except Exception as e:  # noqa: BLE001
                log.warning("event listener %r failed on a %r event: %s", fn, kind, e)


def verify(path: str | Path) -> tuple[bool, str]:
    """Check the chain; (True, summary) or (False, "FILE:LINE: what is wrong") at the first bad
    line (1-based)."""
    path = Path(path)
    prev = GENESIS
    n = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, raw in enumerate(fh, start=1):
            line = raw.rstrip("\n")
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except ValueError as e:
                return False, f"{where}: not a JSON record ({e.msg})"
            if not isinstance(rec, dict):
                return False, f"{where}: not a JSON object"
            i = line.rfind(_HASH_KEY)
            if i < 0 or not line.endswith('"}') or rec.get("hash") != line[i + len(_HASH_KEY) : -2]:
                return False, f"{where}: no trailing hash member"
            if line_hash(line[:i]) != rec["hash"]:
                return False, f"{where}: record altered (its hash does not match its content)"
            if rec.get("prev") != prev:
                return False, (
                    f"{where}: chain broken (prev does not match line {n - 1}'s hash): "
                    "a record was deleted, inserted or moved here"
                    if n > 1
                    else f"{where}: chain broken (the first record's prev is not the genesis)"
                )
            if rec.get("seq") != n - 1:
                return False, f"{where}: seq {rec.get('seq')!r}, expected {n - 1}"
            prev = line_hash(line)
    return True, f"{path}: {n} records, chain intact (last hash {prev[:16]}…)"


def close_logs_in(folder: str | Path) -> None:
    """Close the current log if it lies in ``folder`` (a run about to write its manifest)."""
    ev = _current
    if ev is not None and Path(folder).resolve() in ev.path.resolve().parents:
        close_log()


# Commands never logged even if a driver sent one through write(): credentials and seeds.
_SECRET_COMMANDS = ("SYST:AUTH", "SOUR:SEED")


def watch_instruments(bench) -> None:
    """Record every instrument write of ``bench`` (its ``on_action`` hook, chained): writes to
    the emulator's control instrument are injected faults (kind ``fault``), the others
    ``command``."""

    def wrap(role: str, previous):
        kind = "fault" if role == "control" else "command"

        def on_action(instrument: str, command: str) -> None:
            if previous is not None:
                previous(instrument, command)
            if not command.lstrip().upper().startswith(_SECRET_COMMANDS):
                emit(kind, instrument=role, command=command)

        return on_action

    for role, inst in bench.instruments.items():
        if hasattr(inst, "on_action"):
            inst.on_action = wrap(role, inst.on_action)
