"""Serve the emulated bench: one raw SCPI socket per instrument and the switch on a pty.

``hil emulator serve`` runs :func:`serve`: it binds every instrument to a free loopback port
(or the ports given), opens a pseudo-terminal for the serial switch, writes the VISA resource
strings to a ready file (JSON), and serves until SIGTERM/SIGINT or until its parent exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import threading
import time
import tty
from pathlib import Path

from .devices import Attenuator, Control, Detectors, PowerMeter, Source, Switch, Tagger
from .link import Link
from .physics import LinkParams

SCPI_ROLES = {
    "source": Source,
    "attenuator": Attenuator,
    "detectors": Detectors,
    "tagger": Tagger,
    "powermeter": PowerMeter,
}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a program message larger than this is refused


def find_message_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index of the ``\\n`` that ends the first program message in ``buf``, or -1 if the message
    is incomplete. Strings and definite-length blocks may contain ``\\n``."""
    i, n = start, len(buf)
    while i < n:
        c = buf[i]
        if c == 0x0A:
            return i
        if c in (0x22, 0x27):  # quoted string
            j = buf.find(bytes([c]), i + 1)
            if j < 0:
                nl = buf.find(b"\n", i + 1)
                return nl  # unterminated string: the line ends the message (parser reports it)
            i = j + 1
            continue
        if c == 0x23 and i + 1 < n and 0x31 <= buf[i + 1] <= 0x39:  # '#<n><len>' block
            nd = buf[i + 1] - 0x30
            digits = bytes(buf[i + 2 : i + 2 + nd])
            if len(digits) < nd:
                return -1
            if not digits.isdigit():
                i += 2
                continue
            end = i + 2 + nd + int(digits)
            if end > n:
                return -1
            i = end
            continue
        i += 1
    return -1


class _ScpiHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        device = self.server.device
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        while True:
            end = find_message_end(buf)
            while end < 0:
                try:
                    data = sock.recv(1 << 20)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                if len(buf) > MAX_MESSAGE_BYTES:
                    device.error(-100, "message too long")  # noqa: SLF001
                    buf.clear()
                    continue
                end = find_message_end(buf)
            message = bytes(buf[:end])
            del buf[: end + 1]
            if message.endswith(b"\r"):
                message = message[:-1]
            if not message.strip():
                continue
            reply = device.execute(message)
            if reply is not None:
                try:
                    sock.sendall(reply)
                except OSError:
                    return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class Emulator:
    """The whole emulated bench in one process."""

    def __init__(self, params: LinkParams | None = None, host: str = "127.0.0.1"):
        self.link = Link(params or LinkParams())
        self.host = host
        self.devices = {role: cls(self.link) for role, cls in SCPI_ROLES.items()}
        self.devices["control"] = Control(self.link, self.devices)
        self.switch = Switch(self.link)
        self._servers: list[_Server] = []
        self._pty: tuple[int, int] | None = None
        self.resources: dict[str, str] = {}
        self._stop = threading.Event()

    def start(self, ports: dict[str, int] | None = None) -> dict[str, str]:
        ports = ports or {}
        for role, device in self.devices.items():
            srv = _Server((self.host, ports.get(role, 0)), _ScpiHandler)
            srv.device = device
            threading.Thread(target=srv.serve_forever, name=f"scpi-{role}", daemon=True).start()
            self._servers.append(srv)
            port = srv.server_address[1]
            self.resources[role] = f"TCPIP::{self.host}::{port}::SOCKET"
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: bytes pass as on a serial line
        self._pty = (master, slave)
        self.resources["switch"] = f"ASRL{os.ttyname(slave)}::INSTR"
        threading.Thread(target=self._serve_switch, name="serial-switch", daemon=True).start()
        return self.resources

    def _serve_switch(self) -> None:
        master = self._pty[0]
        buf = bytearray()
        while not self._stop.is_set():
            try:
                data = os.read(master, 4096)
            except OSError:
                time.sleep(0.01)
                continue
            buf += data
            while b"\n" in buf:
                line, _, rest = bytes(buf).partition(b"\n")
                buf = bytearray(rest)
                reply = self.switch.handle(line)
                if reply:
                    os.write(master, reply)

    def stop(self) -> None:
        self._stop.set()
        self.devices["tagger"].stop_acquisition()
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
) -> None:
    """Run the emulator until SIGTERM/SIGINT or until ``parent_pid`` is gone."""
    params = LinkParams() if seed is None else LinkParams(seed=seed)
    emu = Emulator(params)
    resources = emu.start(ports)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    text = json.dumps({"pid": os.getpid(), "resources": resources}, indent=2)
    if ready_file:
        tmp = Path(ready_file).with_suffix(".tmp")
        tmp.write_text(text)
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
