"""Instrument base: a PyVISA session with declared, validated properties and error checking.

A driver declares each setting once::

    attenuation_db = control("INP1:ATT?", "INP1:ATT {:.3f}",
        "Control the attenuation in dB (float, 0 to 60).", validator=strict_range, values=(0, 60))

Out-of-range values are rejected before anything is sent. After a setter the instrument's error
queue is read (``SYST:ERR?``, configurable per driver with ``check_errors``); an instrument error
raises :class:`InstrumentError` naming the instrument, the command and the error text, and a
timeout raises :class:`InstrumentTimeout` naming the instrument and its resource.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyvisa
from pyvisa import constants as vc

# bytes per low-level read of a block answer: small enough that the copies pyvisa-py makes
# of each piece stay in the CPU cache (see Instrument._read_exact)
READ_PIECE_BYTES = 128 * 1024

_RM_LOCK = threading.Lock()
_RM: pyvisa.ResourceManager | None = None


def resource_manager() -> pyvisa.ResourceManager:
    """The process-wide pyvisa-py ResourceManager (never closed while sessions use it)."""
    global _RM
    with _RM_LOCK:
        if _RM is None:
            _RM = pyvisa.ResourceManager("@py")
        return _RM


def _disable_nagle(session) -> None:
    """Set TCP_NODELAY on a raw-socket session. A setter followed by ``SYST:ERR?`` is two small
    writes before a read: with Nagle's algorithm the second waits for the peer's delayed ACK
    (about 40 ms on Linux) on every checked setter. pyvisa-py leaves the option off and keeps
    the socket in its session object, so this reaches in where it can and does nothing
    elsewhere (other transports, other VISA libraries)."""
    try:
        sock = session.visalib.sessions[session.session].interface
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, KeyError, OSError, TypeError):
        pass


def _raise_recv_size(session, n_bytes: int) -> None:
    """Let a pyvisa-py raw-socket session receive up to ``n_bytes`` per ``recv`` call. It
    receives at most 4096 bytes per call (``max_recv_size``), each call a pass through its
    Python read loop: a 9 MB tag block then takes over 2000 of them. Reaches into the session
    object like `_disable_nagle`, and does nothing where that object is not there."""
    try:
        impl = session.visalib.sessions[session.session]
        if isinstance(getattr(impl, "max_recv_size", None), int):
            impl.max_recv_size = max(impl.max_recv_size, int(n_bytes))
    except (AttributeError, KeyError, TypeError):
        pass


def _socket_session(session) -> tuple[bytearray, socket.socket] | None:
    """(pending buffer, socket) of a pyvisa-py raw-socket session, else None. Reaches into
    the session object like `_raise_recv_size`: pyvisa-py keeps bytes received ahead of a
    read in ``_pending_buffer`` and reads ``interface``, a blocking socket."""
    try:
        impl = session.visalib.sessions[session.session]
    except (AttributeError, KeyError, TypeError):
        return None
    pending = getattr(impl, "_pending_buffer", None)
    sock = getattr(impl, "interface", None)
    if isinstance(pending, bytearray) and isinstance(sock, socket.socket):
        return pending, sock
    return None


def _recv_exact(
    pending: bytearray, sock: socket.socket, out: memoryview, timeout_ms: float | None
) -> None:
    """Fill ``out``: first from the session's pending bytes, then from the socket. Waits at
    most ``timeout_ms`` (the resource's timeout, None or inf: no limit) for each piece, and
    fails as pyvisa-py's read does: VisaIOError with a timeout or connection-lost code."""
    count = len(out)
    pos = min(len(pending), count)
    out[:pos] = pending[:pos]
    del pending[:pos]
    wait_s = None if timeout_ms is None or timeout_ms == float("inf") else timeout_ms / 1000
    while pos < count:
        ready, _, _ = select.select([sock], [], [], wait_s)
        if not ready:
            raise pyvisa.errors.VisaIOError(vc.StatusCode.error_timeout)
        n = sock.recv_into(out[pos:])
        if n == 0:
            raise pyvisa.errors.VisaIOError(vc.StatusCode.error_connection_lost)
        pos += n


class InstrumentError(RuntimeError):
    """The instrument reported an error (or could not be reached).

    ``unreachable`` tells a transport failure (timeout, connection lost: the instrument stopped
    answering) from an error the instrument reported (its ``SYST:ERR?`` text).
    """

    unreachable = False

    def __init__(self, instrument: str, command: str, message: str):
        super().__init__(f"{instrument}: {command!r} -> {message}")
        self.instrument, self.command, self.message = instrument, command, message


class InstrumentTimeout(InstrumentError):
    """No answer within the timeout."""

    unreachable = True


class InstrumentUnreachable(InstrumentError):
    """The connection to the instrument failed or was lost."""

    unreachable = True


# ----------------------------------------------------------------------------- validators


def strict_range(value: float, values: tuple[float, float]) -> float:
    """Accept a number within [lo, hi], reject anything else (no clipping)."""
    lo, hi = values
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number in [{lo}, {hi}], got {value!r}")
    if not (lo <= value <= hi):
        raise ValueError(f"{value!r} is out of range [{lo}, {hi}]")
    return value


def strict_discrete_set(value: Any, values: Sequence) -> Any:
    """Accept one of ``values`` exactly (no case folding, no nearest match)."""
    if isinstance(value, bool) or value not in values:
        raise ValueError(f"{value!r} is not one of {list(values)}")
    return value


def strict_bool(value: Any, values: Any = None) -> bool:
    """Accept True/False only (not 'yes', 2 or None: a typo must not switch a laser on)."""
    if not isinstance(value, bool):
        raise TypeError(f"expected True or False, got {value!r}")
    return value


def to_bool(text: str) -> bool:
    t = text.strip().upper()
    if t in ("1", "ON", "TRUE", "+1"):
        return True
    if t in ("0", "OFF", "FALSE", "+0"):
        return False
    raise ValueError(f"not a boolean answer: {text!r}")


def control(
    get_cmd: str | None,
    set_cmd: str | None,
    doc: str,
    *,
    validator: Callable | None = None,
    values: Any = None,
    get_process: Callable[[str], Any] = float,
    set_process: Callable[[Any], Any] = lambda v: v,
) -> property:
    """Declare a property read with ``get_cmd`` and written with ``set_cmd.format(value)``.

    Commands may contain ``{ch}``, filled from the driver's ``channel`` attribute.
    """

    def fget(self):
        if get_cmd is None:
            raise AttributeError("write-only property")
        return get_process(self.query(get_cmd.format(ch=getattr(self, "channel", 1))))

    def fset(self, value):
        if set_cmd is None:
            raise AttributeError("read-only property")
        if validator is not None:  # before anything is sent
            try:
                value = validator(value, values)
            except (TypeError, ValueError) as exc:
                name = _prop_name(self, fset)
                raise ValueError(f"{self.name}.{name}: {exc}") from None
        cmd = set_cmd.format(set_process(value), ch=getattr(self, "channel", 1))
        self.write(cmd)
        if self.check_errors:
            self.raise_errors(cmd)

    return property(fget if get_cmd else None, fset if set_cmd else None, doc=doc)


def measurement(get_cmd: str, doc: str, get_process: Callable[[str], Any] = float) -> property:
    """Declare a read-only measured quantity."""
    return control(get_cmd, None, doc, get_process=get_process)


def _prop_name(obj, fset) -> str:
    for klass in type(obj).__mro__:
        for k, v in vars(klass).items():
            if isinstance(v, property) and v.fset is fset:
                return k
    return "property"


# ----------------------------------------------------------------------------- instrument


class Instrument:
    """A SCPI instrument on any VISA resource (TCPIP SOCKET, INSTR, ASRL, USB, GPIB).

    ``check_errors``: read ``SYST:ERR?`` after every setter (default True).
    """

    read_termination = "\n"
    write_termination = "\n"

    def __init__(
        self,
        resource: str,
        name: str | None = None,
        *,
        timeout_s: float = 5.0,
        check_errors: bool = True,
        on_action: Callable[[str, str], None] | None = None,
        **visa_kwargs: Any,
    ):
        self.resource_name = resource
        self.name = name or type(self).__name__.lower()
        self.check_errors = check_errors
        self.on_action = on_action  # called with (instrument name, command) for every write
        self._lock = threading.RLock()
        self._stale = False  # a query timed out: clear once more before the next I/O
        try:
            self.session = resource_manager().open_resource(
                resource,
                read_termination=self.read_termination,
                write_termination=self.write_termination,
                timeout=int(timeout_s * 1000),
                **visa_kwargs,
            )
        except pyvisa.errors.VisaIOError as exc:
            raise InstrumentError(self.name, f"open {resource}", exc.description) from None
        except ValueError as exc:  # malformed resource string
            raise InstrumentError(self.name, f"open {resource}", str(exc)) from None
        _disable_nagle(self.session)

    # -- raw I/O -------------------------------------------------------------------------------
    def _io(self, command: str, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._stale:
                self._recover_after_timeout()
            try:
                return fn()
            except pyvisa.errors.VisaIOError as exc:
                if exc.error_code == vc.StatusCode.error_timeout:
                    self._recover_after_timeout()
                    raise InstrumentTimeout(
                        self.name,
                        command,
                        f"no answer within {self.session.timeout / 1000:g} s "
                        f"from {self.resource_name}",
                    ) from None
                raise InstrumentUnreachable(
                    self.name, command, f"{exc.description} ({self.resource_name})"
                ) from None
            except (ConnectionError, OSError) as exc:
                raise InstrumentUnreachable(
                    self.name, command, f"connection lost ({self.resource_name}): {exc}"
                ) from None

    def _recover_after_timeout(self) -> None:
        """Discard whatever a timed-out query may still deliver (pyvisa-py keeps a late reply
        buffered and hands it to the next query, pyvisa-py #376). Called at the timeout and
        once more before the next I/O, since the late reply may arrive after the first clear."""
        self._stale = not self._stale
        try:
            self.session.clear()  # sockets: drop the buffer, read until 0.1 s of silence
        except Exception:  # noqa: BLE001 - best effort on a link that already failed
            pass

    def write(self, command: str) -> None:
        if self.on_action is not None:
            self.on_action(self.name, command)
        self._io(command, lambda: self.session.write(command))

    def query(self, command: str) -> str:
        return self._io(command, lambda: self.session.query(command)).strip()

    def query_block(self, command: str, *, copy: bool = True) -> bytes | memoryview:
        """Query that answers with an IEEE 488.2 definite-length block; returns the payload.
        ``copy=False``: a memoryview of the buffer the payload was received into instead
        (saves a copy; numpy's ``frombuffer`` takes it as is; a new buffer per call)."""

        def run() -> bytes | memoryview:
            self.session.write(command)
            return self._read_block(copy)

        return self._io(command, run)

    def read_block(self, command: str = "(block read)") -> bytes:
        """Read one IEEE 488.2 definite-length block answer; returns the payload."""
        return self._io(command, self._read_block)

    def _read_block(self, copy: bool = True) -> bytes | memoryview:
        # With the termination character enabled, pyvisa-py returns from every low-level read
        # at each 0x0A byte inside the binary payload: reading a large block then costs one
        # call per ~256 bytes. Disable it for the block and read the terminator explicitly.
        s = self.session
        term = s.read_termination
        s.read_termination = None
        try:
            head = bytes(s.read_bytes(2))
            if head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
                raise InstrumentError(
                    self.name, "block read", f"not a definite-length block: {head!r}"
                )
            n_digits = int(head[1:2])
            length = int(bytes(s.read_bytes(n_digits)))
            tail = term.encode() if term else b""
            data = self._read_exact(length + len(tail))  # payload and terminator together
            if tail and data[length:] != tail:
                raise InstrumentError(
                    self.name,
                    "block read",
                    f"block not followed by its terminator: {bytes(data[length:])!r}",
                )
            return bytes(data[:length]) if copy else data[:length]
        finally:
            s.read_termination = term

    def _read_exact(self, count: int) -> memoryview:
        """Read exactly ``count`` bytes into one new buffer.

        On a pyvisa-py raw-socket session (TCPIP::...::SOCKET) the bytes are received
        straight into the buffer from the session's own socket, after what the session has
        already buffered: one copy, from the kernel. pyvisa-py's read copies what it receives
        about four times over (recv's bytes, its pending buffer, slices of it, the bytes it
        returns), which cost the capture's client ~8 ns of CPU per tag on top of the kernel's
        ~2 (benchmarks/bench_store.py, "fetch only"). Other sessions (another VISA library,
        other interfaces) read with the library's viRead, ``READ_PIECE_BYTES`` per call.
        """
        out = memoryview(np.empty(count, np.uint8))
        direct = _socket_session(self.session)
        if direct is not None:
            _recv_exact(*direct, out, self.session.timeout)
            return out
        s = self.session
        lib, sid = s.visalib, s.session
        pos = 0
        # "count bytes read, more may follow" is the expected outcome here, not a warning
        with s.ignore_warning(vc.StatusCode.success_max_count_read):
            while pos < count:
                chunk, _ = lib.read(sid, min(READ_PIECE_BYTES, count - pos))
                if not chunk:  # errors (timeout, lost link) raise VisaIOError instead
                    raise InstrumentError(
                        self.name, "block read", f"block ended after {pos} of {count} bytes"
                    )
                out[pos : pos + len(chunk)] = chunk
                pos += len(chunk)
        return out

    def write_block(self, command: str, payload: bytes) -> None:
        """Write ``command`` followed by ``payload`` as a definite-length block."""
        ln = str(len(payload)).encode()
        data = command.encode("ascii") + b" #" + str(len(ln)).encode() + ln + payload + b"\n"
        self._io(command, lambda: self.session.write_raw(data))

    # -- IEEE 488.2 ----------------------------------------------------------------------------
    @property
    def idn(self) -> str:
        """Get the identification string (``*IDN?``)."""
        return self.query("*IDN?")

    def errors(self, limit: int = 64) -> list[str]:
        """Get and clear the error queue: ``SYST:ERR?`` until ``0,"No error"``; each entry as
        the instrument wrote it (e.g. ``-222,"Data out of range"``)."""
        out = []
        for _ in range(limit):
            text = self.query("SYST:ERR?")
            code = text.split(",", 1)[0].strip()
            try:
                number = int(code)
            except ValueError:
                raise InstrumentError(
                    self.name, "SYST:ERR?", f"answer {text[:60]!r} is not '<code>,\"<text>\"'"
                ) from None
            if number == 0:
                break
            out.append(text)
        return out

    def raise_errors(self, command: str) -> None:
        errs = self.errors()
        if errs:
            raise InstrumentError(self.name, command, "; ".join(errs))

    def reset(self) -> None:
        """Reset to defaults (``*RST``), clear status (``*CLS``) and wait (``*OPC?``)."""
        self.write("*RST")
        self.write("*CLS")
        self.wait()

    def wait(self) -> None:
        """Wait until pending operations complete (``*OPC?``)."""
        self.query("*OPC?")

    #: the query timed for the control-plane latency (a protocol without *OPC? overrides it)
    round_trip_query = "*OPC?"

    def round_trip_s(self, n: int = 100) -> float:
        """Measure the median round-trip time of ``round_trip_query`` over ``n`` queries, in s."""
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.query(self.round_trip_query)
            times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]

    def settings(self) -> dict[str, Any]:
        """Get every declared property's current value (the snapshot of this instrument)."""
        out: dict[str, Any] = {}
        for klass in reversed(type(self).__mro__):
            for k, v in vars(klass).items():
                if isinstance(v, property) and v.fget is not None and k not in ("idn",):
                    if getattr(v.fget, "__name__", "") != "fget":
                        continue  # only declared controls, not computed properties
                    out[k] = getattr(self, k)
        return out

    def close(self) -> None:
        try:
            self.session.close()
        except Exception:  # noqa: BLE001
            pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} at {self.resource_name}>"
