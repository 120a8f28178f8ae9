"""Serve the emulated bench: one raw SCPI socket per instrument and the switch on a pty.

``hil emulator serve`` runs :func:`serve`: it binds every instrument to a free loopback port
(or the ports given), opens a pseudo-terminal for the serial switch, writes the VISA resource
strings to a ready file (JSON), and serves until SIGTERM/SIGINT or until its parent exits.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import socket
import socketserver
import threading
import time
import tty
from pathlib import Path

from .devices import Attenuator, Control, Detectors, PowerMeter, Source, Switch, Tagger
from .kme import LinkFedPair
from .link import Link
from .physics import LinkGenerator, LinkParams
from .scpi import BlockEnded, MessageFramer, Session
from .vendors import start_vendors, stop_vendors

SCPI_ROLES = {
    "source": Source,
    "attenuator": Attenuator,
    "detectors": Detectors,
    "tagger": Tagger,
    "powermeter": PowerMeter,
}
# A program message's bytes outside blocks beyond this are refused (-100) as they arrive; a
# block may be as long as its command takes (SIFT:QUER?: 8 MB of indices).
MAX_MESSAGE_BYTES = 64 * 1024
MAX_CONNECTIONS = 16  # per instrument; a further client is closed at once
MAX_SERIAL_LINE = 4096  # a serial line longer than this is dropped
RECV_BYTES = 1 << 20
# the emulated KMEs' stock (keys of 256 bits): about 2 s of the nominal link's supply, so that a
# failover test drains it in seconds (KME:STOR:MAX changes it)
KME_MAX_KEYS = 2000


class _ScpiHandler(socketserver.BaseRequestHandler):
    """One client connection: frame messages (``\\n`` or ``\\r\\n``), execute, answer only
    queries."""

    def handle(self) -> None:
        device = self.server.device
        session = Session()  # per connection: the control port's authentication
        # a device that can answer in pieces (the tagger's tag blocks) is sent them as they are
        parts = getattr(device, "execute_parts", None)
        execute = parts if parts is not None else (lambda m: _one(device.execute(m, session)))
        framer = MessageFramer(self.server.max_message_bytes, device.max_block_bytes)
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                data = sock.recv(RECV_BYTES)
            except OSError:
                return
            if not data:
                return
            for message in framer.feed(data):
                if isinstance(message, Exception):
                    device.error(message.code, message.detail)
                    continue
                if message.endswith(b"\r") and not isinstance(message, BlockEnded):
                    message = message[:-1]
                if not message.strip(b" \t"):
                    continue
                reply = execute(message)
                if reply is not None:
                    try:
                        _send_parts(sock, reply)
                    except OSError:
                        return


def _one(reply: bytes | None) -> list | None:
    return None if reply is None else [reply]


IOV_MAX = 1024  # buffers per sendmsg call (Linux's UIO_MAXIOV)


def _send_parts(sock: socket.socket, parts: list) -> None:
    """Send buffers back to back with scatter-gather ``sendmsg`` (the kernel copies each
    straight from its array; no joined copy), resuming after partial sends."""
    if len(parts) == 1:
        sock.sendall(parts[0])
        return
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    i = 0
    while i < len(views):
        sent = sock.sendmsg(views[i : i + IOV_MAX])
        while i < len(views) and sent >= views[i].nbytes:
            sent -= views[i].nbytes
            i += 1
        if sent:
            views[i] = views[i][sent:]


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    max_message_bytes = MAX_MESSAGE_BYTES
    max_connections = MAX_CONNECTIONS
    crashes = 0  # connection handlers that died of an exception (the fuzz test wants 0)
    refused = 0  # connections closed at once because max_connections were open

    def server_activate(self) -> None:
        super().server_activate()
        self._open = 0
        self._open_lock = threading.Lock()

    def verify_request(self, request, client_address) -> bool:
        # called before a handler thread exists: a refused client costs one accept and close
        with self._open_lock:
            if self._open >= self.max_connections:
                self.refused += 1
                return False
            self._open += 1
            return True

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open -= 1

    def handle_error(self, request, client_address) -> None:
        self.crashes += 1
        super().handle_error(request, client_address)


class Emulator:
    """The whole emulated bench in one process."""

    def __init__(
        self,
        params: LinkParams | None = None,
        host: str = "127.0.0.1",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        sampling_threads: int | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ):
        """``sampling_threads``: threads sampling the link's signal clicks (1 or 2; default 2
        on a machine with two cores or more: same tags, faster unpaced acquisitions).

        ``params.pattern_seed`` None (the default) draws the source's secret pattern seed
        from os.urandom; give one in process only (a test that needs the same pattern)."""
        if sampling_threads is None:
            sampling_threads = 2 if (os.cpu_count() or 1) >= 2 else 1
        params = params or LinkParams()
        if params.pattern_seed is None:
            params = params.replace(pattern_seed=secrets.randbits(63))
        self.link = Link(params, sampling_threads=sampling_threads)
        self.host = host
        self.max_message_bytes = max_message_bytes
        self.max_connections = max_connections
        # the control port's token: written to the ready file (mode 0600) for the bench
        self.control_token = secrets.token_hex(16)
        self.devices = {role: cls(self.link) for role, cls in SCPI_ROLES.items()}
        self.devices["control"] = Control(self.link, self.devices, token=self.control_token)
        self.switch = Switch(self.link)
        # the KME pair (ETSI GS QKD 014 over mutual TLS), supplied by this link (emulator/kme.py)
        self.kme = LinkFedPair(self.link, max_key_count=KME_MAX_KEYS)
        self.kme.register_control(self.devices["control"])
        self._servers: list[_Server] = []
        self._pty: tuple[int, int] | None = None
        self.resources: dict[str, str] = {}
        self._stop = threading.Event()

    def start(self, ports: dict[str, int] | None = None) -> dict[str, str]:
        """Serve every instrument; returns the VISA resource string of each role."""
        # compile (or load from the cache) the physics kernels before serving, not inside the
        # first command that generates tags (a cold compile outlasts any client timeout)
        LinkGenerator(self.link.params).generate(self.link.params, 0, 1_000_000)
        ports = ports or {}
        for role, device in self.devices.items():
            srv = _Server((self.host, ports.get(role, 0)), _ScpiHandler)
            srv.device = device
            srv.max_message_bytes = self.max_message_bytes
            srv.max_connections = self.max_connections
            threading.Thread(
                target=srv.serve_forever, args=(0.05,), name=f"scpi-{role}", daemon=True
            ).start()
            self._servers.append(srv)
            port = srv.server_address[1]
            self.resources[role] = f"TCPIP::{self.host}::{port}::SOCKET"
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: bytes pass as on a serial line
        self._pty = (master, slave)
        self.resources["switch"] = f"ASRL{os.ttyname(slave)}::INSTR"
        # vendor personalities by "role:driver" (emulator/vendors.py), apart from the roles
        self.vendor_resources = start_vendors(self)
        threading.Thread(target=self._serve_switch, name="serial-switch", daemon=True).start()
        self.kme.start()
        return self.resources

    def _serve_switch(self) -> None:
        master = self._pty[0]
        buf = bytearray()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([master], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(master, 4096)
            except (OSError, ValueError):  # closed by stop(), or no reader on the other side
                time.sleep(0.01)
                continue
            buf += data
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > MAX_SERIAL_LINE:
                        buf.clear()  # a line this long is noise; wait for the next '\n'
                    break
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                reply = self.switch.handle(line)
                while reply:
                    try:
                        reply = reply[os.write(master, reply) :]
                    except OSError:
                        break

    @property
    def crashes(self) -> int:
        """Connection handlers that died of an exception since start (0 when healthy)."""
        return sum(srv.crashes for srv in self._servers)

    def stop(self) -> None:
        self._stop.set()
        stop_vendors(self)
        self.devices["tagger"].stop_acquisition()
        self.kme.stop()
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        if self._pty:
            for fd in self._pty:
                try:
                    os.close(fd)
                except OSError:
                    pass


def serve(
    ready_file: str | None = None,
    parent_pid: int | None = None,
    seed: int | None = None,
    ports: dict[str, int] | None = None,
    sampling_threads: int | None = None,
) -> None:
    """Run the emulator until SIGTERM/SIGINT or until ``parent_pid`` is gone."""
    params = LinkParams() if seed is None else LinkParams(seed=seed)
    emu = Emulator(params, sampling_threads=sampling_threads)
    resources = emu.start(ports)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    text = json.dumps(
        {
            "pid": os.getpid(),
            "resources": resources,
            "control_token": emu.control_token,
            "kme": emu.kme.pair.ready_info(),
            "vendor_resources": emu.vendor_resources,
        },
        indent=2,
    )
    if ready_file:
        tmp = Path(ready_file).with_suffix(".tmp")
        # owner-only from creation: the token lets its reader inject faults
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        tmp.replace(ready_file)  # atomic: a reader never sees half a file
    else:
        print(text, flush=True)
    while not done.wait(0.2):
        if parent_pid is not None and not _alive(parent_pid):
            break
    emu.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
