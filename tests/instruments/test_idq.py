"""ID Quantique Time Controller: the driver's messages against a scripted ZeroMQ peer (no
emulator), the driver against the emulated Time Controller, and a plain pyzmq client against
the emulator (issue 16, "Done when")."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq

from hil.emulator.server import Emulator
from hil.instruments.base import InstrumentError, InstrumentTimeout
from hil.instruments.idq_tc import IDQTimeController, merge_blocks, parse_resource
from hil.roles import MARKER_CHANNEL, HoldingTagger, driver_roles, missing_members


class ScriptedTC:
    """A scripted Time Controller and DataLinkTargetService: records every request; SCPI
    setters answer "", queries answer from ``answers`` (else SCPI_ERR_); ``start-stream``
    binds the PAIR socket the request names and answers an id."""

    def __init__(self, answers: dict[str, str], silent: bool = False):
        self.ctx = zmq.Context()
        self.answers = answers
        self.silent = silent
        self.requests: list[tuple[str, str]] = []
        self.pairs: dict[int, zmq.Socket] = {}
        self.scpi = self.ctx.socket(zmq.REP)
        self.dlt = self.ctx.socket(zmq.REP)
        sp = self.scpi.bind_to_random_port("tcp://127.0.0.1")
        dp = self.dlt.bind_to_random_port("tcp://127.0.0.1")
        self.resource = f"tcp://127.0.0.1:{sp}?dlt=127.0.0.1:{dp}"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.scpi, zmq.POLLIN)
        poller.register(self.dlt, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(50):
                text = sock.recv().decode()
                which = "scpi" if sock is self.scpi else "dlt"
                self.requests.append((which, text))
                if self.silent:
                    continue
                sock.send_string(self._answer(which, text))

    def _answer(self, which: str, text: str) -> str:
        if which == "dlt":
            words = text.split()
            if words[0] == "start-stream":
                ch = int(words[words.index("--channel") + 1])
                port = int(words[words.index("--stream-port") + 1])
                pair = self.ctx.socket(zmq.PAIR)
                pair.bind(f"tcp://127.0.0.1:{port}")
                self.pairs[ch] = pair
                return json.dumps({"id": 10 + ch})
            if words[0] == "stop":
                return json.dumps({"id": int(words[2])})
            return json.dumps({"error": {"description": "unknown"}})
        if text.endswith("?"):
            return self.answers.get(text, f"SCPI_ERR_-113: Undefined header;{text}")
        return ""

    def scpi_sent(self) -> list[str]:
        return [t for w, t in self.requests if w == "scpi"]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        for s in [self.scpi, self.dlt, *self.pairs.values()]:
            s.close(0)
        self.ctx.term()


IDN = "ID Quantique,ID1000 Time Controller,1234,2.0"


@pytest.fixture
def scripted():
    peer = ScriptedTC(
        {"*IDN?": IDN, "REC:STAG?": "STOPPED", "RAW1:ERRORS?": "0", "RAW2:ERRORS?": "0"}
    )
    yield peer
    peer.close()


def test_resource_forms():
    assert parse_resource("tcp://10.0.0.5:5555") == (
        "tcp://10.0.0.5:5555",
        "tcp://localhost:6060",
        "10.0.0.5",
    )
    assert parse_resource("tcp://tc:5555?dlt=pc:6061")[1] == "tcp://pc:6061"
    with pytest.raises(ValueError, match="not a Time Controller resource"):
        parse_resource("TCPIP::10.0.0.5::5555::SOCKET")


def test_driver_offers_the_tagger_interface():
    assert missing_members(IDQTimeController, HoldingTagger) == []
    assert driver_roles("IDQTimeController") == ("tagger",)


def test_start_sends_the_vendor_recording_sequence(scripted):
    tc = IDQTimeController(scripted.resource, timeout_s=2)
    try:
        tc.INPUTS = {0: 1, 1: 2}  # two streams keep the script short
        tc.start(0.5)
        dlt = [t for w, t in scripted.requests if w == "dlt"]
        assert [d.rsplit(" ", 1)[0] for d in dlt] == [
            "start-stream --address 127.0.0.1 --channel 1 --stream-port",
            "start-stream --address 127.0.0.1 --channel 2 --stream-port",
        ]
        assert scripted.scpi_sent() == [
            "*IDN?",
            "RAW1:ERRORS:CLEAR",
            "RAW1:SEND ON",
            "RAW2:ERRORS:CLEAR",
            "RAW2:SEND ON",
            "REC:TRIG:ARM:MODE MANU",
            "REC:ENAB ON",
            "REC:NUM 1",
            "REC:DUR 500000000000",
            "REC:PLAY",
        ]
        with pytest.raises(InstrumentError, match="hold points exist on the emulated"):
            tc.set_holds([0.1])  # EMUL:STAT? has a SCPI_ERR_ answer: not an emulator
        assert scripted.scpi_sent()[-1] == "EMUL:STAT?"
    finally:
        tc.close()
    # closing stops both DLT streams by the ids the service gave
    assert [t for w, t in scripted.requests if w == "dlt"][-2:] == ["stop --id 11", "stop --id 12"]


def test_streams_are_merged_in_time_order(scripted):
    tc = IDQTimeController(scripted.resource, timeout_s=2)
    try:
        tc.INPUTS = {0: 1, 1: 2}
        tc.start(0.001)
        time.sleep(0.2)  # let the PAIR connections complete before the peer sends
        sync = np.arange(0, 1_000_000, 100_000, dtype="<i8")
        det = np.array([50_001, 250_000, 950_000], dtype="<i8")
        scripted.pairs[1].send(sync[:5].tobytes())
        scripted.pairs[2].send(det.tobytes())
        scripted.pairs[1].send(sync[5:].tobytes())
        for p in scripted.pairs.values():
            p.send(b"")  # end of the acquisition's data
        blocks = list(tc.stream())
        ts = np.concatenate([b[0] for b in blocks])
        ch = np.concatenate([b[1] for b in blocks])
        assert np.all(np.diff(ts) >= 0)
        assert sorted(ts.tolist()) == sorted(sync.tolist() + det.tolist())
        assert ch[np.isin(ts, det)].tolist() == [1, 1, 1]  # input 2 = detector H = channel 1
        assert tc.loss_counts()["out_of_order"] == 0
    finally:
        tc.close()


def test_scpi_error_reply_is_one_line(scripted):
    tc = IDQTimeController(scripted.resource, timeout_s=2)
    try:
        with pytest.raises(InstrumentError) as err:
            tc.query("BOGUS?")
        assert "\n" not in str(err.value)
        assert "BOGUS?" in str(err.value) and "SCPI_ERR_-113" in str(err.value)
    finally:
        tc.close()


def test_silent_peer_times_out_within_timeout():
    peer = ScriptedTC({}, silent=True)
    try:
        t0 = time.monotonic()
        with pytest.raises(InstrumentTimeout, match="no answer from tcp://127.0.0.1"):
            IDQTimeController(peer.resource, timeout_s=0.5)
        assert time.monotonic() - t0 < 0.5 + 1.0  # the timeout the bench file gives, plus 1 s
    finally:
        peer.close()


def test_merge_blocks_is_stable():
    ts, ch = merge_blocks([(np.array([1, 3]), 0), (np.array([1, 2]), 4)])
    assert ts.tolist() == [1, 1, 2, 3] and ch.tolist() == [0, 4, 4, 0]


# -- against the emulator ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator():
    emu = Emulator()
    res = emu.start()
    yield emu, res
    emu.stop()


def test_emulated_stream_and_self_test(emulator):
    emu, _ = emulator
    tc = IDQTimeController(emu.vendor_resources["tagger:IDQTimeController"], timeout_s=10)
    try:
        assert tc.emulated
        t0 = tc.link_time_ps()
        tc.start(0.05, pace=0)
        blocks = list(tc.stream())
        ts = np.concatenate([b[0] for b in blocks])
        ch = np.concatenate([b[1] for b in blocks])
        assert np.all(np.diff(ts) >= 0)
        assert ts[0] >= t0 and ts[-1] < t0 + 50_000_000_000
        # the sync arrives at clock / divider = 1e9 / 1e4 = 100 kHz: 5000 in 50 ms
        assert int(np.count_nonzero(ch == 0)) in (4999, 5000)  # by the sync's phase
        assert not tc.data_lost()
        result = tc.self_test(period_ps=1_000_000, duration_s=0.002)
        assert result["ok"] and result["pulses"] == 2000, result
    finally:
        tc.close()


def test_full_rate_loses_nothing(emulator):
    """At the highest rate (source on, 0 dB, unpaced) every tag arrives: as many as the
    SCPI-block tagger gets from the same link, nothing late, nothing counted lost."""
    emu, _ = emulator
    from hil.instruments.tagger import TimeTagger

    emu.link.set("attenuation_db", 0.0)
    emu.link.set("attenuator_shutter_open", True)
    emu.link.set("output_on", True)
    tc = IDQTimeController(emu.vendor_resources["tagger:IDQTimeController"], timeout_s=20)
    scpi = TimeTagger(emu.resources["tagger"], timeout_s=20)
    try:
        counts = []
        for tagger in (tc, scpi):
            tagger.start(0.3, pace=0)
            counts.append(sum(len(b[0]) for b in tagger.stream()))
            assert not tagger.data_lost()
        assert tc.loss_counts() == {"missed_events": 0, "out_of_order": 0}
        # the same physics over 0.3 s each: Poisson counts agree within 5 sigma
        assert abs(counts[0] - counts[1]) < 5 * (counts[0] + counts[1]) ** 0.5, counts
        assert counts[0] > 3_000_000
    finally:
        emu.link.set("attenuation_db", 10.0)
        emu.link.set("attenuator_shutter_open", False)
        tc.close()
        scpi.close()


def test_emulated_hold_gives_every_earlier_tag_first(emulator):
    emu, _ = emulator
    tc = IDQTimeController(emu.vendor_resources["tagger:IDQTimeController"], timeout_s=10)
    try:
        t0 = tc.link_time_ps()
        tc.set_holds([0.02], timeout_s=10)
        tc.start(0.04, pace=0)
        seen_before: list[int] = []
        got: list[tuple[np.ndarray, np.ndarray]] = []

        def on_hold():
            seen_before.append(sum(len(b[0]) for b in got))
            tc.mark()
            tc.resume()

        for block in tc.stream(on_hold=on_hold):
            got.append(block)
        ts = np.concatenate([b[0] for b in got])
        ch = np.concatenate([b[1] for b in got])
        marks = ts[ch == MARKER_CHANNEL]
        assert marks.tolist() == [t0 + 20_000_000_000]
        # every tag before the hold point was given out before on_hold ran
        assert seen_before == [int(np.count_nonzero((ts < marks[0]) & (ch != MARKER_CHANNEL)))]
        assert np.all(np.diff(ts) >= 0)
    finally:
        tc.close()


def test_plain_pyzmq_client(emulator):
    """Done when: a plain ZeroMQ client gets an IDQ-style *IDN? answer and, after start-stream
    to the DataLinkTargetService, little-endian int64 time stamps on the channel's PAIR."""
    emu, _ = emulator
    endpoint, _, rest = emu.vendor_resources["tagger:IDQTimeController"].partition("?dlt=")
    ctx = zmq.Context()
    try:
        tc = ctx.socket(zmq.REQ)
        tc.setsockopt(zmq.RCVTIMEO, 5000)
        tc.setsockopt(zmq.LINGER, 0)
        tc.connect(endpoint)
        tc.send_string("*IDN?")
        assert tc.recv_string().startswith("ID Quantique,ID1000")
        dlt = ctx.socket(zmq.REQ)
        dlt.setsockopt(zmq.RCVTIMEO, 5000)
        dlt.setsockopt(zmq.LINGER, 0)
        dlt.connect(f"tcp://{rest}")
        pair = ctx.socket(zmq.PAIR)
        pair.setsockopt(zmq.LINGER, 0)
        port = pair.bind_to_random_port("tcp://127.0.0.1")
        pair.unbind(pair.getsockopt_string(zmq.LAST_ENDPOINT))
        pair.close(0)
        dlt.send_string(f"start-stream --address 127.0.0.1 --channel 1 --stream-port {port}")
        ident = json.loads(dlt.recv())["id"]
        pair = ctx.socket(zmq.PAIR)
        pair.setsockopt(zmq.RCVTIMEO, 5000)
        pair.setsockopt(zmq.LINGER, 0)
        pair.connect(f"tcp://127.0.0.1:{port}")
        time.sleep(0.1)
        for cmd in ("REC:NUM 1", "REC:DUR 10000000000", "REC:PLAY"):  # 10 ms
            tc.send_string(cmd)
            assert tc.recv_string() == ""
        stamps = []
        while True:
            msg = pair.recv()
            if not msg:
                break
            assert len(msg) % 8 == 0
            stamps.append(np.frombuffer(msg, dtype="<i8"))
        ts = np.concatenate(stamps)
        # the sync at clock / divider = 100 kHz for 10 ms: 1000 periods (999 or 1000 edges
        # by phase), each 10 us apart within the sync's jitter (tens of ps)
        assert len(ts) in (999, 1000)
        assert np.all(np.abs(np.diff(ts) - 10_000_000) < 1000)
        dlt.send_string(f"stop --id {ident}")
        assert json.loads(dlt.recv()) == {"id": ident}
        tc.send_string("NOPE:NOPE")
        assert "SCPI_ERR_" in tc.recv_string()
    finally:
        ctx.destroy(0)
