"""The tamper-evident event log: records, chain, `hil audit verify` against each kind of tampering,
RFC 5424 syslog over UDP and TCP to a local receiver, threads, and the run's manifest."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import threading

import pytest

from hil.cli import main as hil
from hil.report import Run
from hil.telemetry import events


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "events.jsonl"
    events.open_log(path)
    events.emit("action", link_time_s=0.5, what="fiber cut", capture="c.h5")
    events.emit("fault", instrument="control", command="FAUL:LOSS 3")
    events.emit("state", link_time_s=0.6, old="UP", new="DOWN", reason="sync lost")
    events.emit("verdict", criterion="FLT-CUT-001", outcome="PASS", value=0.012, unit="s")
    events.emit("bench_error", test="t::x", error="tagger: no answer")
    events.emit("key_delivery", kme="kme_a", number=2, sizes=[256])
    events.close_log()
    return path


def _verify(path, capsys) -> tuple[int, str]:
    rc = hil(["audit", "verify", str(path)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_records_carry_utc_link_time_and_the_chain(log_path, capsys):
    lines = log_path.read_text().splitlines()
    assert len(lines) == 6
    recs = [json.loads(x) for x in lines]
    assert [r["kind"] for r in recs] == [
        "action", "fault", "state", "verdict", "bench_error", "key_delivery"
    ]  # fmt: skip
    assert [r["seq"] for r in recs] == list(range(6))
    for r in recs:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r["utc"])
    assert recs[0]["link_time_s"] == 0.5 and recs[1]["link_time_s"] is None
    assert recs[0]["prev"] == "0" * 64
    for b, line in zip(recs[1:], lines, strict=False):
        assert b["prev"] == hashlib.sha256(line.encode()).hexdigest()
    rc, text = _verify(log_path, capsys)
    assert rc == 0 and "6 records, chain intact" in text


def _tamper(path, how: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    if how == "changed value":
        lines[2] = lines[2].replace('"new": "DOWN"', '"new": "UP"')
    elif how == "deleted line":
        del lines[2]
    elif how == "swapped lines":
        lines[2], lines[3] = lines[3], lines[2]
    elif how == "inserted line":
        lines.insert(2, lines[4])  # a genuine record, replayed
    elif how == "deleted first line":
        del lines[0]
    path.write_text("".join(lines))


@pytest.mark.parametrize(
    "how", ["changed value", "deleted line", "swapped lines", "inserted line", "deleted first line"]
)
def test_audit_verify_names_the_first_bad_line(log_path, capsys, how):
    _tamper(log_path, how)
    rc, text = _verify(log_path, capsys)
    assert rc == 1, text
    line = 1 if how == "deleted first line" else 3
    assert f"{log_path}:{line}:" in text, text
    assert len(text.strip().splitlines()) == 1  # one line


def test_a_recomputed_hash_still_breaks_the_chain_at_the_next_line(log_path, capsys):
    """An editor who also rewrites the edited record's own hash is caught by the next record."""
    lines = log_path.read_text().splitlines(keepends=True)
    body = lines[2][: lines[2].rindex(', "hash": "')].replace('"new": "DOWN"', '"new": "UP"')
    lines[2] = body + ', "hash": "' + events.line_hash(body) + '"}\n'
    log_path.write_text("".join(lines))
    rc, text = _verify(log_path, capsys)
    assert rc == 1 and f"{log_path}:4: chain broken" in text, text


def test_audit_verify_cli_process(log_path, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "hil.cli", "audit", "verify", str(log_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "hil.cli", "audit", "verify", str(tmp_path / "none.jsonl")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "none.jsonl" in missing.stderr


def test_emit_is_a_noop_without_a_log_and_never_raises(tmp_path):
    events.close_log()
    events.emit("action", what="nothing open")  # no log, no listener: nothing happens
    path = tmp_path / "e.jsonl"
    events.open_log(path)

    class Unprintable:
        def __str__(self):
            raise RuntimeError("no")

    events.emit("odd", thing=Unprintable())  # the writer fails: logged, not raised
    events.emit("secret", key=b"\x01\x02\x03", nested={"k": bytearray(5)}, nan=float("nan"))
    events.close_log()
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["kind"] for r in recs] == ["secret"]
    assert recs[0]["key"] == {"bytes_withheld": 3}
    assert recs[0]["nested"] == {"k": {"bytes_withheld": 5}} and recs[0]["nan"] is None
    assert events.verify(path)[0]


def test_threads_emit_into_one_intact_chain(tmp_path):
    path = tmp_path / "e.jsonl"
    events.open_log(path)

    def work(i):
        for j in range(200):
            events.emit("command", worker=i, n=j)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    events.close_log()
    ok, text = events.verify(path)
    assert ok, text
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(recs) == 1600
    assert sorted((r["worker"], r["n"]) for r in recs) == [
        (i, j) for i in range(8) for j in range(200)
    ]


_RFC5424 = re.compile(
    # PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA BOM MSG
    rb"<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) qkd-hil (\d+) (\S+) - "
    rb"\xef\xbb\xbf(.*)",
    re.S,
)


def test_syslog_udp(tmp_path):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    path = tmp_path / "e.jsonl"
    events.open_log(path, syslog=f"udp://127.0.0.1:{rx.getsockname()[1]}")
    events.emit("state", link_time_s=1.0, old="UP", new="DOWN", reason="sync lost")
    events.emit("command", instrument="source", command="OUTP 1")
    events.close_log()
    got = [rx.recv(65536), rx.recv(65536)]
    rx.close()
    lines = path.read_text().splitlines()
    for datagram, line, (pri, msgid) in zip(
        got, lines, [(16 * 8 + 5, b"state"), (16 * 8 + 6, b"command")], strict=True
    ):
        m = _RFC5424.fullmatch(datagram)
        assert m, datagram[:120]
        assert int(m[1]) == pri and m[5] == msgid  # local0.notice / local0.info
        assert m[6].decode() == line  # the chained record itself
        assert m[2].decode() == json.loads(line)["utc"]


def test_syslog_tcp_octet_counting(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(5)
    received = bytearray()

    def accept():
        conn, _ = srv.accept()
        conn.settimeout(5)
        with conn:
            while chunk := conn.recv(65536):
                received.extend(chunk)

    t = threading.Thread(target=accept)
    t.start()
    path = tmp_path / "e.jsonl"
    events.open_log(path, syslog=f"tcp://127.0.0.1:{srv.getsockname()[1]}")
    for i in range(3):
        events.emit("verdict", criterion=f"C-{i}", outcome="PASS")
    events.close_log()
    t.join(10)
    srv.close()
    frames, data = [], bytes(received)
    while data:  # RFC 6587 3.4.1: MSG-LEN SP SYSLOG-MSG
        n, _, rest = data.partition(b" ")
        frames.append(rest[: int(n)])
        data = rest[int(n) :]
    lines = path.read_text().splitlines()
    assert len(frames) == 3
    for frame, line in zip(frames, lines, strict=True):
        m = _RFC5424.fullmatch(frame)
        assert m and m[6].decode() == line


def test_an_unreachable_collector_leaves_the_file_log_going(tmp_path, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    path = tmp_path / "e.jsonl"
    events.open_log(path, syslog=f"tcp://127.0.0.1:{port}")
    events.emit("action", what="a")
    events.emit("action", what="b")
    events.close_log()
    assert len(path.read_text().splitlines()) == 2 and events.verify(path)[0]
    warnings = [r for r in caplog.records if "syslog collector" in r.getMessage()]
    assert len(warnings) == 1  # said once, then dropped


def test_bad_syslog_target_is_one_line():
    with pytest.raises(ValueError, match=r"syslog target 'nowhere': expected"):
        events.parse_syslog_target("nowhere")
    with pytest.raises(ValueError, match="expected"):
        events.parse_syslog_target("sctp://h:1")


def test_the_manifest_covers_the_closed_log(tmp_path):
    run = Run(tmp_path / "results")
    events.open_log(run.dir / "events.jsonl")
    events.emit("bench_open", bench="emulated")
    run.finish()  # closes the log, then hashes it
    assert events.current() is None
    events.emit("late", what="after the manifest")  # not written: the log is closed
    log = run.dir / "events.jsonl"
    manifest = (run.dir / "manifest.sha256").read_text().splitlines()
    digest = hashlib.sha256(log.read_bytes()).hexdigest()
    assert f"{digest}  events.jsonl" in manifest
    assert len(log.read_text().splitlines()) == 1


def test_a_reopened_log_continues_its_chain(tmp_path):
    path = tmp_path / "e.jsonl"
    events.open_log(path)
    events.emit("action", what="first session")
    events.close_log()
    events.open_log(path)
    events.emit("action", what="second session")
    events.close_log()
    ok, text = events.verify(path)
    assert ok and "2 records" in text, text
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()] == [0, 1]
