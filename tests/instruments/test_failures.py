"""Bounded failures of a driver: peers that close, stay silent, reset mid-block, flood, refuse or
do not resolve, and threads sharing one connection.

Each peer is a real loopback socket (or a missing serial port) reached through pyvisa-py, as a
real instrument would be. Every operation under test runs in a helper thread joined with a hard
limit, so that a regression to an unbounded wait fails the test instead of hanging the suite.
The time bounds asserted are the issue's: an error within the instrument's timeout.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from hil.instruments.attenuator import KeysightAttenuator
from hil.instruments.base import (
    Instrument,
    InstrumentError,
    InstrumentTimeout,
    InstrumentUnreachable,
)
from hil.instruments.tagger import TimeTagger


class Peer:
    """A loopback listener whose connections are handled by ``handler(conn)`` in a thread."""

    def __init__(self, handler):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.resource = f"TCPIP::127.0.0.1::{self.listener.getsockname()[1]}::SOCKET"
        self.handler = handler
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def peer():
    peers = []

    def make(handler):
        p = Peer(handler)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


def read_line(conn: socket.socket) -> bytes:
    got = b""
    while not got.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        got += chunk
    return got


def reset(conn: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def bounded(fn, limit_s: float):
    """(result or exception, seconds taken) of ``fn()`` run in a thread; fails the test if it
    does not end within ``limit_s`` (the old code spun for ever in some of these cases)."""
    box = {}

    def run():
        t0 = time.monotonic()
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["value"] = exc
        box["took"] = time.monotonic() - t0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still running after {limit_s} s"
    return box["value"], box["took"]


def test_peer_that_closes_right_after_connecting(peer):
    p = peer(lambda conn: conn.close())
    inst = Instrument(p.resource, "tagger", timeout_s=5)
    try:
        err, took = bounded(lambda: inst.idn, 30)
        assert isinstance(err, InstrumentUnreachable), err
        assert err.cause == "connection closed by the instrument right after connecting"
        assert p.resource in str(err) and "tagger" in str(err)
        assert took < 5, took  # within the timeout: the close is seen, not waited out
        assert inst.unreachable == err.cause
        # known lost: the next operation fails with the same cause, without trying again
        again, _ = bounded(lambda: inst.query("*OPC?"), 30)
        assert isinstance(again, InstrumentUnreachable) and again.cause == err.cause
    finally:
        inst.close()


def test_silent_peer_times_out_within_its_timeout(peer):
    p = peer(lambda conn: time.sleep(30))
    inst = Instrument(p.resource, "source", timeout_s=0.5)
    try:
        err, took = bounded(lambda: inst.idn, 30)
        assert isinstance(err, InstrumentTimeout), err
        assert err.cause == "no answer to '*IDN?' within 0.5 s"
        assert p.resource in err.message
        # the timeout, then a drain of at most one more timeout (0.1 s of silence here)
        assert 0.5 <= took < 1.0, took
        assert inst.unreachable is None  # silent is not lost: a later answer may come
    finally:
        inst.close()


def test_peer_that_closes_after_a_timeout_does_not_spin_the_clear(peer):
    """The issue's hang: pyvisa-py's clear after a timeout read until silence, and a closed
    connection is never silent (each read returns at once, empty)."""

    def late_close(conn):
        read_line(conn)
        time.sleep(0.35)  # after the query's 0.3 s timeout, during the drain
        conn.close()

    p = peer(late_close)
    inst = Instrument(p.resource, "attenuator", timeout_s=0.3)
    try:
        err, took = bounded(lambda: inst.idn, 30)
        assert isinstance(err, InstrumentTimeout), err
        assert took < 0.3 + 0.3 + 0.2, took  # timeout, then at most one timeout of drain
        assert inst.unreachable == "connection closed by the instrument right after connecting"
        again, _ = bounded(lambda: inst.idn, 30)
        assert isinstance(again, InstrumentUnreachable), again
    finally:
        inst.close()


def test_flooding_peer_is_refused_then_abandoned(peer):
    def flood(conn):
        read_line(conn)
        while True:
            conn.sendall(b"x" * 65536)

    p = peer(flood)
    inst = Instrument(p.resource, "powermeter", timeout_s=0.5)
    try:
        err, _ = bounded(lambda: inst.idn, 30)
        assert type(err) is InstrumentError, err
        assert "without a terminator" in err.cause
        # the next operation drains first; a peer still sending after one timeout is abandoned
        again, took = bounded(lambda: inst.idn, 30)
        assert isinstance(again, InstrumentUnreachable), again
        assert again.cause.startswith("kept sending for 0.5 s")
        assert took < 1.0, took
    finally:
        inst.close()


@pytest.mark.parametrize("how", ["reset", "close"])
def test_tagger_block_cut_mid_way_fails_within_the_timeout(peer, how):
    n = 100_000
    ts = np.arange(n, dtype="<i8")
    payload = ts.tobytes() + np.zeros(n, np.uint8).tobytes()
    length = str(len(payload)).encode()
    block = b"#" + str(len(length)).encode() + length + payload + b"\n"
    sent = len(block) // 2

    def cut(conn):
        read_line(conn)
        conn.sendall(block[:sent])
        time.sleep(0.2)  # the client has read what was sent: now it waits for the rest
        reset(conn) if how == "reset" else conn.close()

    p = peer(cut)
    tagger = TimeTagger(p.resource, "tagger", timeout_s=5)
    try:
        err, took = bounded(lambda: tagger.fetch(1000), 30)
        assert isinstance(err, InstrumentUnreachable), err
        verb = "reset" if how == "reset" else "closed"
        head = 2 + len(length)
        assert err.cause == (
            f"connection {verb} by the instrument after {sent - head} of {len(payload) + 1} "
            "bytes of a block"
        )
        assert "FETC:TAGS? 1000" in str(err) and p.resource in str(err)
        assert took < 5, took
        assert tagger.unreachable == err.cause
    finally:
        tagger.close()


def test_refused_connection_is_told_at_open():
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
    err, took = bounded(lambda: Instrument(resource, "detectors", timeout_s=2), 30)
    assert isinstance(err, InstrumentUnreachable), err
    assert err.cause == f"connection refused (nothing listens on 127.0.0.1 port {port})"
    assert resource in str(err) and "detectors" in str(err)
    assert took < 2, took


def test_unresolvable_host_is_told_at_open():
    resource = "TCPIP::nonexistent.invalid::5025::SOCKET"
    err, took = bounded(lambda: Instrument(resource, "tagger", timeout_s=3), 30)
    assert isinstance(err, InstrumentUnreachable), err
    # getaddrinfo's text varies with the resolver ("Name or service not known", "No address
    # associated with hostname", ...): the line names the host and says it does not resolve
    assert err.cause.startswith("host name 'nonexistent.invalid' does not resolve (")
    assert resource in str(err)
    assert took < 3 + 0.5, took  # the resolver's own wait is cut at the timeout


def test_missing_serial_port_is_told_at_open(tmp_path):
    resource = f"ASRL{tmp_path}/ttyUSB9::INSTR"
    err, took = bounded(lambda: Instrument(resource, "switch", timeout_s=2), 30)
    assert isinstance(err, InstrumentUnreachable), err
    assert err.cause == "cannot open the port (No such file or directory)"
    assert resource in str(err)
    assert took < 2, took


def test_close_from_another_thread_ends_a_wait(peer):
    """What a cancelled bench probe relies on: a thread waiting on a silent instrument (20 s
    timeout) stops within a wait slice once the instrument is closed."""
    p = peer(lambda conn: time.sleep(30))
    inst = Instrument(p.resource, "source", timeout_s=20)
    threading.Timer(0.3, inst.close).start()
    err, took = bounded(lambda: inst.idn, 30)
    assert isinstance(err, InstrumentUnreachable), err
    assert "closed by this program" in err.cause
    assert took < 0.3 + 1.0, took


def test_deadline_shortens_every_wait(peer):
    p = peer(lambda conn: time.sleep(30))
    inst = Instrument(p.resource, "source", timeout_s=20)
    try:

        def run():
            with inst.deadline(0.3):
                return inst.idn

        err, took = bounded(run, 30)
        assert isinstance(err, InstrumentTimeout), err
        assert took < 0.3 + 0.5, took
    finally:
        inst.close()


def test_setter_and_its_error_check_are_one_exchange(peer):
    """Another thread's query waits until the setter's SYST:ERR? has been answered: the peer
    sees the setter, its error check, and only then the query (in this exact order)."""
    seen: list[bytes] = []
    ready = threading.Event()

    def scripted(conn):
        for _ in range(3):
            line = read_line(conn)
            seen.append(line)
            if line == b"SYST:ERR?\n":
                time.sleep(0.2)  # a slow answer: time for the other thread to barge in
                conn.sendall(b'0,"No error"\n')
            elif line == b"INP1:ATT?\n":
                conn.sendall(b"+1.00000000E+01\n")

    p = peer(scripted)
    att = KeysightAttenuator(p.resource, "attenuator", timeout_s=5)
    other = {}

    def query_while_setting(name, command):
        if command.startswith("INP1:ATT "):  # called before the setter's write
            t = threading.Thread(target=lambda: other.setdefault("value", att.attenuation_db))
            t.start()
            other["thread"] = t
            time.sleep(0.1)  # the query is issued (or blocked) before the write goes out
            ready.set()

    att.on_action = query_while_setting
    try:
        _, took = bounded(lambda: setattr(att, "attenuation_db", 10.0), 30)
        assert ready.is_set()
        other["thread"].join(10)
        assert seen == [b"INP1:ATT 10.0000DB\n", b"SYST:ERR?\n", b"INP1:ATT?\n"]
        assert other["value"] == 10.0
    finally:
        att.close()
