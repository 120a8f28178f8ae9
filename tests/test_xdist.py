"""pytest-xdist: ``pytest -n 2`` gives one merged run folder and summary, each worker with its own
bench (its own emulator); a bench pool gives each worker one bench under a lock, never one bench
to two workers at once; a worker that finds no free bench gives up at the pool's deadline with
one line; -n that would share one set of instruments is refused at start.

The runs are real pytest sessions in subprocesses; the pilot run is a representative subset of
the plan (the whole plan on two workers is run by hand, see README "Parallel benches").
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("xdist")

REPO = Path(__file__).resolve().parent.parent
EMULATED = REPO / "fixtures" / "benches" / "emulated.yaml"


def _pytest(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_summary(results: Path) -> tuple[Path, dict]:
    folders = [p for p in results.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders  # one run folder for the whole session
    return folders[0], json.loads((folders[0] / "summary.json").read_text())


def test_pilot_on_two_workers_gives_one_merged_summary(tmp_path):
    # tests of several modules, so both workers get some: latency per role, a count-rate
    # capture, the synchronisation capture
    subset = "control_plane_latency or detector_count_rate or synchronisation"
    proc = _pytest(
        REPO, "-n", "2", "testplans/pilot", "-k", subset, "--results", str(tmp_path / "res")
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "AttributeError" not in out and "INTERNALERROR" not in out
    folder, summary = _one_summary(tmp_path / "res")
    # every criterion of the plan is listed, the measured ones with their verdicts
    listed = {c["id"] for c in summary["criteria"]}
    pilot = (REPO / "testplans/pilot/criteria.yaml").read_text()
    assert {i for i in listed if i.startswith("PIL-")} == {
        line.strip().rstrip(":") for line in pilot.splitlines() if line.startswith("  PIL-")
    }
    status = {c["id"]: c["status"] for c in summary["criteria"]}
    for cid in ("PIL-LAT-001", "PIL-RATE-001", "PIL-SYNC-001", "PIL-SYNC-002"):
        assert status[cid] == "PASS", (cid, summary["reasons"])
    assert summary["test_counts"]["passed"] == 8 and len(summary["tests"]) == 8
    assert summary["overall"] == "INCOMPLETE"  # a -k subset, said as such
    # each worker opened its own emulated bench: two emulators on different ports
    benches = summary["benches"]
    assert set(benches) == {"gw0", "gw1"}, benches
    assert benches["gw0"]["resources"]["source"] != benches["gw1"]["resources"]["source"]
    # the workers' captures are in the one folder, under the one manifest
    manifest = (folder / "manifest.sha256").read_text()
    assert "  count_rate.h5\n" in manifest and "  sync.h5\n" in manifest
    assert "run folder: " + str(folder) in proc.stdout


POOL_PLAN = """
import json, os, time

def _use(bench):
    start = time.time()
    time.sleep(0.3)
    with open({log!r}, "a") as f:
        f.write(json.dumps({{"bench": bench.spec.name,
                             "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
                             "start": start, "stop": time.time()}}) + "\\n")

def test_a(bench): _use(bench)
def test_b(bench): _use(bench)
def test_c(bench): _use(bench)
def test_d(bench): _use(bench)
"""


def _pool(tmp_path: Path, names: list[str], wait_s: float) -> Path:
    for name in names:
        text = EMULATED.read_text().replace("name: emulated", f"name: {name}")
        (tmp_path / f"{name}.yaml").write_text(text)
    pool = tmp_path / "pool.yaml"
    pool.write_text(
        "pool:\n"
        + "".join(f"  - {name}.yaml\n" for name in names)
        + f"lock_dir: locks\nwait_s: {wait_s}\n"
    )
    return pool


def _hold(lock: Path) -> int:
    """Lock a pool bench as another session would (flock, as hil.pool does)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"the test (another session)")
    return fd


def test_a_bench_of_a_pool_serves_one_worker_at_a_time(tmp_path):
    from hil.pool import load_pool

    pool_file = _pool(tmp_path, ["bench-a", "bench-b"], wait_s=120)
    log = tmp_path / "uses.jsonl"
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "test_pool.py").write_text(POOL_PLAN.format(log=str(log)))
    # bench-b is taken by "another session" for the first seconds: a worker must wait for it
    pool = load_pool(pool_file)
    fd = _hold(pool.lock_path(pool.benches[1]))
    held = {"bench": "bench-b", "worker": "other session", "start": time.time()}

    def release():
        time.sleep(4.0)
        held["stop"] = time.time()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        proc = _pytest(tmp_path, "-n", "2", "plan", "--bench", str(pool_file), "--results", "res")
    finally:
        releaser.join()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    uses = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(uses) == 4
    assert {u["worker"] for u in uses} == {"gw0", "gw1"}, uses  # both workers had a bench
    # no two holders (the workers, the other session) used one bench at overlapping times; a
    # bench may pass from one worker to the next when the first one's session ends
    holders = 0
    for bench in ("bench-a", "bench-b"):
        spans = sorted(
            (u["start"], u["stop"], u["worker"]) for u in [*uses, held] if u["bench"] == bench
        )
        holders += len({w for _, _, w in spans})
        for (_, stop, w1), (start, _, w2) in zip(spans, spans[1:], strict=False):
            assert w1 == w2 or stop <= start, (bench, spans)
    assert holders >= 3  # two workers and the other session: the check above compared holders
    _, summary = _one_summary(tmp_path / "res")
    assert set(summary["benches"]) == {"gw0", "gw1"}
    assert summary["overall"] == "PASS"  # no criteria, every test passed


def test_a_worker_without_a_free_bench_gives_up_at_the_deadline_with_one_line(tmp_path):
    from hil.pool import load_pool

    pool_file = _pool(tmp_path, ["bench-a"], wait_s=1)
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "test_pool.py").write_text(POOL_PLAN.format(log=str(tmp_path / "x")))
    pool = load_pool(pool_file)
    fd = _hold(pool.lock_path(pool.benches[0]))
    try:
        proc = _pytest(tmp_path, "plan", "--bench", str(pool_file), "--results", "res", "-rs")
    finally:
        os.close(fd)
    out = proc.stdout
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, out
    expected = (
        f"{pool_file}: no bench of the pool became free within 1 s "
        "(bench-a.yaml held by the test (another session))"
    )
    assert out.count(expected) == 2, out  # the error, and the summary's reason
    assert "1 error" in out and "3 skipped" in out and "Traceback" not in out
    _, summary = _one_summary(tmp_path / "res")
    assert summary["overall"] == "NOT RUN"
    assert summary["bench_error"]["message"] == expected


@pytest.mark.parametrize(
    "bench, n, expected",
    [
        (
            "lab.yaml",
            2,
            "lab.yaml: a hardware bench serves one worker: run without -n, or name a bench "
            "pool of 2 benches with --bench (README: Parallel benches)",
        ),
        (
            "pool.yaml",
            3,
            "pool.yaml: the pool lists 2 benches for 3 workers (-n 3): each worker needs a "
            "bench of its own",
        ),
    ],
)
def test_workers_that_would_share_instruments_are_refused_at_start(tmp_path, bench, n, expected):
    (tmp_path / "lab.yaml").write_text(
        "name: lab\ninstruments:\n  source: {resource: 'TCPIP::10.0.0.1::5025::SOCKET'}\n"
    )
    _pool(tmp_path, ["bench-a", "bench-b"], wait_s=1)
    (tmp_path / "test_x.py").write_text("def test_x(bench): pass\n")
    proc = _pytest(tmp_path, "-n", str(n), "--bench", bench, timeout=120)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [f"ERROR: {expected}"]


@pytest.mark.parametrize(
    "body, expected",
    [
        ("pool: []\n", "pool.yaml:1: pool: List should have at least 1 item"),
        ("pool: [missing.yaml]\n", "pool.yaml:1: pool.0: "),
        ("pool: [a.yaml]\nwait: 3\n", "pool.yaml:2: wait: unknown key"),
    ],
)
def test_a_bad_pool_file_is_one_line(tmp_path, body, expected):
    (tmp_path / "a.yaml").write_text(textwrap.dedent(EMULATED.read_text()))
    (tmp_path / "pool.yaml").write_text(body)
    (tmp_path / "test_x.py").write_text("def test_x(): pass\n")
    proc = _pytest(tmp_path, "--bench", "pool.yaml", timeout=120)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"ERROR: {expected}"), lines
