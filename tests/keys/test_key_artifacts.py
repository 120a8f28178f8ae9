"""No delivered key leaves memory: a key run on the emulated bench (the keys plan, with HDF5
captures, allure results and the emulator's log) leaves no delivered key in any artifact, as
raw bytes, Base64 or hex (the scan runs inside the plan's process, tests/keys/keyscan_plugin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_delivered_key_in_any_artifact_of_a_key_run(tmp_path):
    verdict = tmp_path / "scan_verdict.json"
    out = tmp_path / "pytest-output.txt"
    env = dict(os.environ)
    env.update(
        QKD_HIL_SCAN_ROOT=str(tmp_path),
        QKD_HIL_SCAN_VERDICT=str(verdict),
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]),
        TMPDIR=str(tmp_path),  # the emulator's folder (its log, the throwaway PKI) in the scan
    )
    env.pop("QKD_HIL_KME_DEVIATIONS", None)
    with out.open("w") as f:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", str(ROOT / "testplans" / "keys"), "-p",
             "keyscan_plugin", "-p", "no:cacheprovider", "-q", "--results",
             str(tmp_path / "results"), "--alluredir", str(tmp_path / "allure"),
             ],
            stdout=f, stderr=subprocess.STDOUT, timeout=300, cwd=ROOT, env=env,
        )  # fmt: skip
    text = out.read_text()
    assert result.returncode == 0, text[-3000:]
    v = json.loads(verdict.read_text())
    assert v["keys"] >= 100, v  # the run delivered keys: the scan has something to find
    assert v["control_found"], v  # and the patterns find a key where one is
    for kind in (".h5", ".json", ".jsonl", ".html", ".txt"):
        assert kind in v["kinds"], v  # every kind of artifact was scanned
    assert v["hits"] == [], v
