"""The key-plane plans as a user runs them: ``pytest testplans/etsi014 --bench vendor.yaml`` on a
bench file naming only two KMEs (a stand-alone emulated KME pair, reached like a vendor's: URL,
IDs, PEM paths relative to the bench file), once spec-exact and once per deviation profile."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.emulator.kme import DEVIATIONS

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
PLAN_TIMEOUT_S = 120.0

# the conformance test each deviation must fail, and the clause its message must name
CAUGHT_BY = {
    "not_found_404": ("test_clause_5_4_key_id_twice", "clause 5.4"),
    "short_200": ("test_clause_5_3_store_that_cannot_serve", "clause 5.3"),
    "body_on_401": ("test_clause_4_unmapped_certificate", "clause 4"),
    "master_readback": ("test_clause_5_4_master_cannot_fetch_its_keys", "clause 5.4"),
}


def test_every_deviation_has_a_conformance_test():
    assert set(CAUGHT_BY) == set(DEVIATIONS)


def _start_pair(folder: Path, deviations: str):
    ready = folder / "ready.json"
    log = open(folder / "kme.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.emulator.kme", "--ready-file", str(ready),
         "--rate-bps", "1e6", "--initial-keys", "200", "--deviations", deviations,
         "--max-keys", "4000"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.exists():
        assert proc.poll() is None, (folder / "kme.log").read_text()
        assert time.monotonic() < deadline, f"KME pair not ready within {START_TIMEOUT_S} s"
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


def _vendor_bench(folder: Path, info: dict) -> Path:
    """A bench file as a vendor's KMEs are described: PEM copies next to the bench file."""
    certs = folder / "certs"
    certs.mkdir()
    names = {}
    for what, path in [("ca", info["ca_cert"])] + [
        (f"{sae}_{part}", info["saes"][sae][part])
        for sae in ("master", "slave", "outsider")
        for part in ("cert", "key")
    ]:
        dest = certs / f"{what}.pem"
        dest.write_bytes(Path(path).read_bytes())
        names[what] = f"certs/{dest.name}"
    lines = ["name: vendor-kmes", "kmes:"]
    for role, here, there in (("kme_a", "master", "slave"), ("kme_b", "slave", "master")):
        lines += [
            f"  {role}:",
            f"    base_url: {info['kmes'][role]['url']}",
            f"    kme_id: {info['kmes'][role]['kme_id']}",
            f"    sae_id: {info['saes'][here]['sae_id']}",
            f"    peer_sae_id: {info['saes'][there]['sae_id']}",
            f"    cert: {names[here + '_cert']}",
            f"    key: {names[here + '_key']}",
            f"    ca: {names['ca']}",
            f"    outsider_cert: {names['outsider_cert']}",
            f"    outsider_key: {names['outsider_key']}",
            f"    id_field: {info['id_field']}",
            "    timeout_s: 5",
        ]
    bench = folder / "vendor.yaml"
    bench.write_text("\n".join(lines) + "\n")
    return bench


def _run_plan(folder: Path, bench: Path, plan: str = "testplans/etsi014"):
    env = {k: v for k, v in os.environ.items() if k != "QKD_HIL_KME_DEVIATIONS"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / plan), "--bench", str(bench), "-q",
         "-p", "no:cacheprovider", "--results", str(folder / "results"), "-rfEs"],
        capture_output=True, text=True, timeout=PLAN_TIMEOUT_S, cwd=ROOT, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("profile", ["", *sorted(DEVIATIONS)], ids=lambda p: p or "spec_exact")
def test_etsi014_plan_on_a_vendor_style_bench(tmp_path, profile):
    proc, info = _start_pair(tmp_path, profile)
    try:
        bench = _vendor_bench(tmp_path, info)
        result = _run_plan(tmp_path, bench)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    out = result.stdout + result.stderr
    if not profile:
        assert result.returncode == 0, out[-3000:]
        assert re.search(r"\b16 passed\b", out), out[-3000:]
        summary = json.loads(next((tmp_path / "results").glob("*/summary.json")).read_text())
        assert summary["overall"] == "PASS", summary["reasons"]
        return
    test, clause = CAUGHT_BY[profile]
    assert result.returncode == 1, out[-3000:]
    failed = [ln for ln in out.splitlines() if ln.startswith("FAILED")]
    hit = [ln for ln in failed if f"::{test}" in ln]
    assert hit, f"{profile}: {test} did not fail; failed: {failed}"
    # the failure's message names the clause (pytest's report of the failed test)
    said = re.findall(rf"E014-\S+: ETSI GS QKD 014 V1\.1\.1 {clause} not met: [^\n]*", out)
    assert said, out[-3000:]


LINK_CRITERIA = {"KEY-INT-001", "KEY-FO-001", "KEY-FO-002", "KEY-FO-003", "KEY-DRAIN-001"}
LINK_CRITERIA |= {"KEY-SUP-001"}


def test_keys_plan_on_a_bench_of_kmes_only(tmp_path):
    """The keys plan unchanged on two KMEs alone: the key-plane criteria judged, the link-layer
    ones NOT MEASURED, each skipped test saying why."""
    proc, info = _start_pair(tmp_path, "")
    try:
        bench = _vendor_bench(tmp_path, info)
        result = _run_plan(tmp_path, bench, "testplans/keys")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    summary = json.loads(next((tmp_path / "results").glob("*/summary.json")).read_text())
    status = {c["id"]: c["status"] for c in summary["criteria"]}
    assert {k for k, v in status.items() if v == "NOT MEASURED"} == LINK_CRITERIA, status
    assert all(v == "PASS" for k, v in status.items() if k not in LINK_CRITERIA), status
    skipped = [t for t in summary["tests"] if t["outcome"] == "skipped"]
    assert skipped and all(
        "needs" in t["message"] or "not measured" in t["message"] for t in skipped
    ), skipped
    assert summary["key_events"]["keys_delivered"] > 0, summary["key_events"]
