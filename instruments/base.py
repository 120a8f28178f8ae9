"""Instrument base: a PyVISA session with declared, validated properties and error checking.

A driver declares each setting once::

    attenuation_db = control("INP1:ATT?", "INP1:ATT {:.3f}",
        "Control the attenuation in dB (float, 0 to 60).", validator=strict_range, values=(0, 60))

Out-of-range values are rejected before anything is sent. After a setter the instrument's error
queue is read (``SYST:ERR?``, configurable per driver with ``check_errors``); an instrument error
raises :class:`InstrumentError` naming the instrument, the command and the error text, and a
timeout raises :class:`InstrumentTimeout` naming the instrument and its resource.

Every operation ends within a deadline: opening (name resolution and connection), each answer,
the clear after a timeout and the safe state. On a raw-socket session (``TCPIP::...::SOCKET``,
the common case) the driver does its own reads and writes on pyvisa-py's socket, because
pyvisa-py's own loops cannot tell a closed connection from a silent one (they spin at full CPU
until the timeout, and its clear spins for ever on a closed peer). A connection the instrument
closed or reset is recorded (:attr:`Instrument.unreachable`) and every later operation fails at
once instead of waiting again. One exchange (a command and its answer, a setter and its error
check, a block written and its answer) holds the instrument's lock, so that two threads sharing
a connection cannot interleave.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyvisa
from pyvisa import constants as vc

# bytes per low-level read of a block answer: small enough that the copies pyvisa-py makes
# of each piece stay in the CPU cache (see Instrument._read_exact)
READ_PIECE_BYTES = 128 * 1024

# the longest text answer accepted: a peer that sends without a terminator (a flood, a wrong
# baud rate) is refused here instead of filling memory until the deadline
MAX_LINE_BYTES = 16 * 1024 * 1024

# longest single wait of a socket operation: a thread waiting on an instrument notices within
# this time that the connection was closed under it (Instrument.close from another thread)
_WAIT_SLICE_S = 0.2

# after a timeout, a late answer is drained until the connection has been silent this long
_DRAIN_SILENCE_S = 0.1

_RM_LOCK = threading.Lock()
_RM: pyvisa.ResourceManager | None = None

_SOCKET_RESOURCE = re.compile(r"^TCPIP(\d*)::([^:\[\]]+)::(\d{1,5})::SOCKET$", re.IGNORECASE)


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
    read in ``_pending_buffer`` and reads ``interface``, a blocking socket. The driver reads
    and writes that socket itself (see the module docstring); any other session (another VISA
    library, serial, VXI-11, USB) goes through the library's calls."""
    try:
        impl = session.visalib.sessions[session.session]
    except (AttributeError, KeyError, TypeError, pyvisa.errors.InvalidSession):
        return None  # InvalidSession: closed
    pending = getattr(impl, "_pending_buffer", None)
    sock = getattr(impl, "interface", None)
    if isinstance(pending, bytearray) and isinstance(sock, socket.socket):
        return pending, sock
    return None


def _ready(sock: socket.socket, write: bool, wait_s: float) -> bool:
    """Whether ``sock`` can be read (or written) within ``wait_s``. poll where the platform
    has it (select refuses descriptors above 1023); a hang-up or error counts as ready, so
    that the recv or send that follows reports it."""
    if hasattr(select, "poll"):
        p = select.poll()
        p.register(sock, select.POLLOUT if write else select.POLLIN)
        return bool(p.poll(max(0, int(wait_s * 1000 + 0.999))))
    r, w, x = select.select([] if write else [sock], [sock] if write else [], [sock], wait_s)
    return bool(r or w or x)


def _socket_error_text(exc: OSError) -> str:
    if exc.errno:
        return exc.strerror or os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


class _Lost(Exception):
    """The connection failed (closed or reset by the peer, closed by us): internal."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


class _Garbled(Exception):
    """An answer that cannot be taken (unterminated beyond the bound): internal."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


class _Timeout(Exception):
    """A wait reached its deadline: internal (carries the seconds waited)."""

    def __init__(self, waited_s: float):
        super().__init__(waited_s)
        self.waited_s = waited_s


class InstrumentError(RuntimeError):
    """The instrument reported an error (or could not be reached).

    ``unreachable`` tells a transport failure (timeout, connection lost: the instrument stopped
    answering) from an error the instrument reported (its ``SYST:ERR?`` text). ``message``
    names the resource where the failure is the transport's; ``cause`` is the same without the
    resource, for lines that name it already (the bench's "role (resource): cause").
    """

    unreachable = False

    def __init__(self, instrument: str, command: str, message: str, cause: str | None = None):
        super().__init__(f"{instrument}: {command!r} -> {message}")
        self.instrument, self.command, self.message = instrument, command, message
        self.cause = cause or message

    def __reduce__(self):  # picklable with its fields (pytest-xdist sends reports across)
        return type(self), (self.instrument, self.command, self.message, self.cause)


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
        self.set_checked(cmd)

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


# ----------------------------------------------------------------------------- opening


class _OpenFailed(Exception):
    """Opening failed; ``cause`` says why in one line (internal)."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


def _connect_cause(err: int, host: str, port: str, timeout_s: float) -> str:
    if err == errno.ECONNREFUSED:
        return f"connection refused (nothing listens on {host} port {port})"
    if err == errno.ETIMEDOUT:
        return f"no connection within {timeout_s:g} s (the host does not answer)"
    return f"cannot connect to {host} port {port} ({os.strerror(err)})"


def _open_cause(exc: BaseException, timeout_s: float) -> str:
    """One line saying why a VISA library could not open a resource."""
    if isinstance(exc, pyvisa.errors.VisaIOError):
        return exc.description
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # pyvisa-py wraps a failed connection in a bare Exception("could not connect: ...")
    text = text.removeprefix("could not connect: ")
    if "error_timeout" in text:
        return f"no connection within {timeout_s:g} s (the host does not answer)"
    if isinstance(exc, OSError) and exc.errno:  # pyserial: SerialException(errno, text)
        return f"cannot open the port ({os.strerror(exc.errno)})"
    return text


def _check_connected(sock: socket.socket, host: str, port: str, timeout_s: float) -> None:
    """pyvisa-py reports success for a connection that failed (its non-blocking connect is
    taken as done once the socket is readable or writable, which a refusal also makes it):
    ask the socket whether it is connected, and why not."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise _OpenFailed(_connect_cause(err, host, port, timeout_s))
    try:
        sock.getpeername()
        return
    except OSError:
        pass
    # not connected, and pyvisa-py dropped the error its connect returned: connect once more
    # to learn it (only on this failure path)
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        if isinstance(exc, TimeoutError) or exc.errno is None:
            raise _OpenFailed(_connect_cause(errno.ETIMEDOUT, host, port, timeout_s)) from None
        raise _OpenFailed(_connect_cause(exc.errno, host, port, timeout_s)) from None
    raise _OpenFailed(f"connection to {host} port {port} not established")


def _open_resource(resource: str, timeout_s: float, kwargs: dict) -> Any:
    """Open ``resource`` (raises _OpenFailed with a one-line cause). A raw-socket resource's
    host name is resolved here, so that its failure is told apart and the wait for it bounded
    by the caller; pyvisa-py then connects to the address (IPv4, as pyvisa-py does)."""
    m = _SOCKET_RESOURCE.match(resource)
    open_as = resource
    if m:
        board, host, port = m.groups()
        try:
            infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise _OpenFailed(f"host name {host!r} does not resolve ({why})") from None
        address = infos[0][4][0]
        open_as = f"TCPIP{board}::{address}::{port}::SOCKET"
    try:
        session = resource_manager().open_resource(
            open_as, open_timeout=max(1, int(timeout_s * 1000)), **kwargs
        )
    except Exception as exc:  # noqa: BLE001 - libraries raise anything here (OSError, serial,
        # socket.gaierror, bare Exception): each becomes one line naming the cause
        raise _OpenFailed(_open_cause(exc, timeout_s)) from None
    direct = _socket_session(session)
    if m and direct is not None:
        try:
            _check_connected(direct[1], address, port, timeout_s)
        except BaseException:
            with contextlib.suppress(Exception):
                session.close()
            raise
    return session


def wait_event(event: threading.Event, seconds: float) -> bool:
    """``event.wait(seconds)`` in slices. A wait on a lock ends at a signal only in the thread
    the signal was delivered to; slices let the main thread's Ctrl-C (KeyboardInterrupt) stop
    the wait within one slice wherever the signal landed."""
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if event.wait(max(0.0, min(left, _WAIT_SLICE_S))):
            return True
        if left <= _WAIT_SLICE_S:
            return event.is_set()


def _run_bounded(fn: Callable[[], Any], seconds: float, name: str) -> bool:
    """Run ``fn`` in a helper thread and wait at most ``seconds``: for library calls that take
    no timeout of their own (a device clear, a close of a non-socket session). True when it
    returned (its exceptions are dropped: callers use this on a link that already failed);
    False when it was abandoned still running."""
    done = threading.Event()

    def work() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001, S110 - best effort, see docstring
            pass
        finally:
            done.set()

    threading.Thread(target=work, name=name, daemon=True).start()
    return wait_event(done, seconds)


# ----------------------------------------------------------------------------- instrument


class ThreadDeadlines:
    """A per-thread deadline for a driver's waits, shared by every driver whatever its
    transport: ``deadline(s)`` shortens the waits of this thread's operations (the safe state
    has a budget); ``_until(end)`` is the end of one wait under it. A subclass sets
    ``self._local = threading.local()`` in its constructor."""

    _local: threading.local

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Let every wait of this thread's operations on the instrument end within ``seconds``
        from now (shorter than the timeout where the caller has a budget: the safe state);
        an operation that reaches it raises InstrumentTimeout."""
        end = time.monotonic() + seconds
        old = getattr(self._local, "deadline", None)
        self._local.deadline = end if old is None else min(old, end)
        try:
            yield
        finally:
            self._local.deadline = old

    def _until(self, end: float) -> float:
        """``end`` (monotonic s), or this thread's deadline where it comes first."""
        d = getattr(self._local, "deadline", None)
        return end if d is None else min(end, d)


class Instrument(ThreadDeadlines):
    """A SCPI instrument on any VISA resource (TCPIP SOCKET, INSTR, ASRL, USB, GPIB).

    ``timeout_s`` bounds every wait: opening, each answer (each piece of a block), the clear
    after a timeout, and a wait for another thread's exchange on the same connection (twice
    the timeout: that exchange may itself wait one). ``check_errors``: read ``SYST:ERR?``
    after every setter (default True).
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
        self._lock = threading.RLock()  # one exchange at a time on the connection (exchange())
        self._local = threading.local()  # this thread's deadline (deadline())
        self._stale = False  # a query timed out or was interrupted: drain before the next I/O
        self._lost: str | None = None  # why the connection is unusable (every I/O then fails)
        self._closing = False  # close() was called: waits in other threads give up
        self._answered = False  # an answer arrived on this connection (wording of a close)
        self.session = self._open(
            resource,
            timeout_s,
            dict(
                read_termination=self.read_termination,
                write_termination=self.write_termination,
                timeout=int(timeout_s * 1000),
                **visa_kwargs,
            ),
        )
        _disable_nagle(self.session)

    def _open(self, resource: str, timeout_s: float, kwargs: dict) -> Any:
        """Open within ``timeout_s``. Name resolution and some VISA opens take no timeout, so
        the open runs in a helper thread; one that is abandoned closes what it opens late."""
        box: dict[str, Any] = {}
        done, gate = threading.Event(), threading.Lock()

        def work() -> None:
            try:
                session = _open_resource(resource, timeout_s, kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = exc
            else:
                with gate:
                    if box.get("abandoned"):
                        _run_bounded(session.close, timeout_s, f"close {self.name}")
                    else:
                        box["session"] = session
            finally:
                done.set()

        threading.Thread(target=work, name=f"open {self.name}", daemon=True).start()
        finished = False
        try:
            finished = wait_event(done, timeout_s)
        finally:
            if not finished:  # timed out, or interrupted (KeyboardInterrupt goes on up)
                with gate:
                    box["abandoned"] = True
        command = f"open {resource}"
        if not finished:
            cause = f"no connection within {timeout_s:g} s"
            raise InstrumentUnreachable(self.name, command, f"{cause} ({resource})", cause)
        if "error" in box:
            exc = box["error"]
            cause = exc.cause if isinstance(exc, _OpenFailed) else _open_cause(exc, timeout_s)
            raise InstrumentUnreachable(self.name, command, f"{cause} ({resource})", cause)
        return box["session"]

    # -- state ---------------------------------------------------------------------------------
    @property
    def unreachable(self) -> str | None:
        """Why the connection can no longer be used (closed or reset by the instrument, or
        closed here), else None. Every operation then fails at once with this cause."""
        return self._lost

    @property
    def timeout_s(self) -> float | None:
        """Get the I/O timeout in s (None: no limit)."""
        return self._timeout_s()

    def _timeout_s(self) -> float | None:
        t = self.session.timeout
        return None if t is None or t == float("inf") else t / 1000

    def _step(self) -> tuple[float, float]:
        """(start, end) on the monotonic clock of the next wait: one timeout, or less where
        this thread's deadline comes first."""
        now = time.monotonic()
        t = self._timeout_s()
        end = now + t if t is not None else float("inf")
        return now, self._until(end)

    @contextlib.contextmanager
    def exchange(self, command: str = "(exchange)") -> Iterator[None]:
        """Hold the connection for one exchange of several messages (a setter and its error
        check, a block and its answer), so that no other thread's message comes between.
        Re-entrant. Waits at most twice the timeout for another thread's exchange to end."""
        start, end = self._step()
        if end != float("inf"):
            end = self._until(end + (end - start))
        wait_s = max(0.0, end - start)
        if not self._lock.acquire(timeout=-1 if wait_s == float("inf") else wait_s):
            cause = f"connection busy: another exchange did not end within {wait_s:.3g} s"
            raise InstrumentTimeout(
                self.name, command, f"{cause} ({self.resource_name})", cause
            ) from None
        try:
            if self._lost is not None:
                raise InstrumentUnreachable(
                    self.name, command, f"{self._lost} ({self.resource_name})", self._lost
                )
            yield
        finally:
            self._lock.release()

    # -- raw I/O -------------------------------------------------------------------------------
    def _io(self, command: str, fn: Callable[[], Any]) -> Any:
        with self.exchange(command):
            res = self.resource_name
            if self._stale:
                self._recover_after_timeout()
                if self._lost is not None:
                    raise InstrumentUnreachable(
                        self.name, command, f"{self._lost} ({res})", self._lost
                    )
            try:
                return fn()
            except _Timeout as t:
                self._recover_after_timeout()
                raise InstrumentTimeout(
                    self.name,
                    command,
                    f"no answer within {t.waited_s:.3g} s from {res}",
                    f"no answer to {command!r} within {t.waited_s:.3g} s",
                ) from None
            except _Lost as lost:
                self._lost = lost.cause
                raise InstrumentUnreachable(
                    self.name, command, f"{lost.cause} ({res})", lost.cause
                ) from None
            except pyvisa.errors.VisaIOError as exc:  # sessions other than raw sockets
                if exc.error_code == vc.StatusCode.error_timeout:
                    self._recover_after_timeout()
                    waited = self._timeout_s()
                    raise InstrumentTimeout(
                        self.name,
                        command,
                        f"no answer within {waited:g} s from {res}",
                        f"no answer to {command!r} within {waited:g} s",
                    ) from None
                self._lost = exc.description
                raise InstrumentUnreachable(
                    self.name, command, f"{exc.description} ({res})", exc.description
                ) from None
            except _Garbled as exc:
                self._stale = True  # the stream is out of step: drain before the next
                raise InstrumentError(self.name, command, exc.cause) from None
            except UnicodeDecodeError as exc:
                self._stale = True  # the stream may be out of step: drain before the next
                cause = f"answer is not text: {exc.object[:40]!r}"
                raise InstrumentError(self.name, command, cause) from None
            except OSError as exc:  # serial and other sessions: the port went away
                cause = f"connection lost: {_socket_error_text(exc)}"
                self._lost = cause
                raise InstrumentUnreachable(self.name, command, f"{cause} ({res})", cause) from None
            except BaseException:
                # interrupted (Ctrl-C) or a malformed answer half read: whatever of the answer
                # is still coming must not be taken for the next one
                self._stale = True
                raise

    def _lost_cause(self, exc: OSError | None, where: str = "") -> str:
        if exc is None or isinstance(exc, BrokenPipeError):
            what = "connection closed by the instrument"
        elif isinstance(exc, ConnectionResetError):
            what = "connection reset by the instrument"
        elif isinstance(exc, ConnectionRefusedError):
            what = "connection refused"
        else:
            what = f"connection lost ({_socket_error_text(exc)})"
        if where:
            return f"{what} {where}"
        if not self._answered and isinstance(
            exc, (type(None), BrokenPipeError, ConnectionResetError)
        ):
            # an instrument that drops a new connection: whether the client sees the end of
            # the stream or a reset depends on whether its first command was on the way
            return "connection closed by the instrument right after connecting"
        return what

    def _wait(self, sock: socket.socket, write: bool, start: float, end: float) -> None:
        """Wait until ``sock`` is readable (writable) or ``end``; in slices, so that a close
        from another thread is noticed (the main thread's waits end at once on a signal)."""
        while True:
            if self._closing:
                raise _Lost("closed by this program while waiting for the instrument")
            left = end - time.monotonic()
            if left <= 0:
                raise _Timeout(end - start)
            try:
                if _ready(sock, write, min(left, _WAIT_SLICE_S)):
                    return
            except (ValueError, OSError):  # the socket was closed under this wait
                raise _Lost("closed by this program while waiting for the instrument") from None

    def _send(self, data: bytes) -> None:
        direct = _socket_session(self.session)
        if direct is None:
            self.session.write_raw(data)
            return
        sock = direct[1]
        view = memoryview(data)
        while view:
            start, end = self._step()  # a timeout per piece: the peer reads as it can
            self._wait(sock, True, start, end)
            try:
                # MSG_DONTWAIT: a blocking send of more than the socket's free space would
                # wait for the peer to read without a deadline
                n = sock.send(view, getattr(socket, "MSG_DONTWAIT", 0))
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _Lost(self._lost_cause(exc)) from None
            view = view[n:]

    def _read_line(self) -> str:
        """One answer up to the read termination, within one timeout."""
        direct = _socket_session(self.session)
        if direct is None:
            return self.session.read()
        pending, sock = direct
        term = (self.session.read_termination or "\n").encode()
        start, end = self._step()
        searched = 0
        while True:
            i = pending.find(term, searched)
            if i >= 0:
                raw = bytes(pending[:i])
                del pending[: i + len(term)]
                self._answered = True
                return raw.decode(self.session.encoding)
            if len(pending) > MAX_LINE_BYTES:
                pending.clear()
                raise _Garbled(f"answer longer than {MAX_LINE_BYTES} bytes without a terminator")
            searched = max(0, len(pending) - len(term) + 1)
            self._wait(sock, False, start, end)
            where = f"after {len(pending)} bytes of an answer" if pending else ""
            try:
                chunk = sock.recv(65536)
            except OSError as exc:
                raise _Lost(self._lost_cause(exc, where)) from None
            if not chunk:
                raise _Lost(self._lost_cause(None, where))
            pending += chunk

    def _recover_after_timeout(self) -> None:
        """Discard whatever a timed-out query may still deliver (pyvisa-py keeps a late reply
        buffered and hands it to the next query, pyvisa-py #376). Called at the timeout and
        once more before the next I/O, since the late reply may arrive after the first clear.

        On a raw socket: drain until the connection has been silent for 0.1 s, within one
        timeout (pyvisa-py's clear reads until silence without a deadline, and spins for ever
        on a peer that closed). A peer that closed, or still sends when the time is up, marks
        the connection lost. Other sessions: the library's clear, bounded by a helper thread.
        """
        self._stale = not self._stale
        direct = _socket_session(self.session)
        if direct is None:
            t = self._timeout_s() or 5.0
            if not _run_bounded(self.session.clear, t, f"clear {self.name}"):
                self._lost = f"a device clear after a timeout did not end within {t:g} s"
            return
        pending, sock = direct
        pending.clear()
        start, end = self._step()
        received = False
        while True:
            left = end - time.monotonic()
            if left <= 0:
                if received:
                    self._lost = f"kept sending for {end - start:.3g} s after a failed exchange"
                else:  # no time left to wait for silence: drain again before the next I/O
                    self._stale = True
                return
            try:
                if not _ready(sock, False, min(left, _DRAIN_SILENCE_S)):
                    if left >= _DRAIN_SILENCE_S:
                        return  # silent for the whole interval: drained
                    continue
                if not sock.recv(65536):
                    self._lost = self._lost_cause(None)
                    return
                received = True
            except OSError as exc:
                self._lost = self._lost_cause(exc)
                return
            except ValueError:  # closed under the drain
                return

    def write(self, command: str) -> None:
        if self.on_action is not None:
            self.on_action(self.name, command)
        data = (command + (self.session.write_termination or "")).encode(self.session.encoding)
        self._io(command, lambda: self._send(data))

    def query(self, command: str) -> str:
        data = (command + (self.session.write_termination or "")).encode(self.session.encoding)

        def run() -> str:
            self._send(data)
            return self._read_line()

        return self._io(command, run).strip()

    def set_checked(self, command: str) -> None:
        """Write a setting and, with ``check_errors``, read the error queue: one exchange (no
        other thread's query may take the ``SYST:ERR?`` answer, nor add its errors)."""
        with self.exchange(command):
            self.write(command)
            if self.check_errors:
                self.raise_errors(command)

    def query_block(self, command: str, *, copy: bool = True) -> bytes | memoryview:
        """Query that answers with an IEEE 488.2 definite-length block; returns the payload.
        ``copy=False``: a memoryview of the buffer the payload was received into instead
        (saves a copy; numpy's ``frombuffer`` takes it as is; a new buffer per call)."""
        data = (command + (self.session.write_termination or "")).encode(self.session.encoding)

        def run() -> bytes | memoryview:
            self._send(data)
            return self._read_block(copy)

        return self._io(command, run)

    def read_block(self, command: str = "(block read)") -> bytes:
        """Read one IEEE 488.2 definite-length block answer; returns the payload."""
        return self._io(command, self._read_block)

    def _read_block(self, copy: bool = True) -> bytes | memoryview:
        if _socket_session(self.session) is not None:
            term = self.session.read_termination
            return self._parse_block(lambda n: bytes(self._read_exact(n)), term, copy)
        # With the termination character enabled, pyvisa-py returns from every low-level read
        # at each 0x0A byte inside the binary payload: reading a large block then costs one
        # call per ~256 bytes. Disable it for the block and read the terminator explicitly.
        s = self.session
        term = s.read_termination
        s.read_termination = None
        try:
            return self._parse_block(lambda n: bytes(s.read_bytes(n)), term, copy)
        finally:
            s.read_termination = term

    def _parse_block(
        self, read: Callable[[int], bytes], term: str | None, copy: bool
    ) -> bytes | memoryview:
        head = read(2)
        if head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
            raise InstrumentError(self.name, "block read", f"not a definite-length block: {head!r}")
        n_digits = int(head[1:2])
        length = int(read(n_digits))
        tail = term.encode() if term else b""
        data = self._read_exact(length + len(tail))  # payload and terminator together
        if tail and data[length:] != tail:
            raise InstrumentError(
                self.name,
                "block read",
                f"block not followed by its terminator: {bytes(data[length:])!r}",
            )
        self._answered = True
        return bytes(data[:length]) if copy else data[:length]

    def _read_exact(self, count: int) -> memoryview:
        """Read exactly ``count`` bytes into one new buffer.

        On a pyvisa-py raw-socket session (TCPIP::...::SOCKET) the bytes are received
        straight into the buffer from the session's own socket, after what the session has
        already buffered: one copy, from the kernel, each piece within one timeout; a
        connection closed or reset part-way fails at once, saying how much had arrived.
        pyvisa-py's read copies what it receives about four times over (recv's bytes, its
        pending buffer, slices of it, the bytes it returns), which cost the capture's client
        ~8 ns of CPU per tag on top of the kernel's ~2 (benchmarks/bench_store.py, "fetch
        only"). Other sessions (another VISA library, other interfaces) read with the
        library's viRead, ``READ_PIECE_BYTES`` per call.
        """
        out = memoryview(np.empty(count, np.uint8))
        direct = _socket_session(self.session)
        if direct is not None:
            pending, sock = direct
            pos = min(len(pending), count)
            out[:pos] = pending[:pos]
            del pending[:pos]
            while pos < count:
                start, end = self._step()
                self._wait(sock, False, start, end)
                where = f"after {pos} of {count} bytes of a block"
                try:
                    n = sock.recv_into(out[pos:])
                except OSError as exc:
                    raise _Lost(self._lost_cause(exc, where)) from None
                if n == 0:
                    raise _Lost(self._lost_cause(None, where))
                pos += n
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
        self._io(command, lambda: self._send(data))

    # -- IEEE 488.2 ----------------------------------------------------------------------------
    @property
    def idn(self) -> str:
        """Get the identification string (``*IDN?``)."""
        return self.query("*IDN?")

    def errors(self, limit: int = 64) -> list[str]:
        """Get and clear the error queue: ``SYST:ERR?`` until ``0,"No error"``; each entry as
        the instrument wrote it (e.g. ``-222,"Data out of range"``)."""
        out = []
        with self.exchange("SYST:ERR?"):
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
        with self.exchange("*RST"):
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
        """Close the connection, within about a second: a wait of another thread on it ends
        (within one wait slice) with InstrumentUnreachable."""
        if self._closing:
            return  # closed already (a cancelled probe and its thread may both close it)
        self._closing = True
        held = self._lock.acquire(timeout=3 * _WAIT_SLICE_S)
        try:
            if self._lost is None:
                self._lost = "the connection was closed by this program"
            if _socket_session(self.session) is not None:
                with contextlib.suppress(Exception):
                    self.session.close()
            else:
                _run_bounded(self.session.close, self._timeout_s() or 5.0, f"close {self.name}")
        finally:
            if held:
                self._lock.release()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} at {self.resource_name}>"
