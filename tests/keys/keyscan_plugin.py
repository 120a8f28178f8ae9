"""A pytest plugin for tests/keys/test_key_artifacts.py, loaded into the plan's own pytest
process (``-p keyscan_plugin``): it keeps every key the bench's KME clients deliver in memory
(never on disk), and when the session is over (run folder, allure results and logs written)
scans every file under ``QKD_HIL_SCAN_ROOT`` for each key as raw bytes, Base64 and hex. Only
the verdict is written (to ``QKD_HIL_SCAN_VERDICT``): files scanned, keys, and the names of
files where a key was found."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np

import hil.keys

_KEYS: dict[str, bytes] = {}


def pytest_configure(config):
    original = hil.keys.AuditedKME._run

    def keeping(self, call, peer, asked, fn):
        result = original(self, call, peer, asked, fn)
        if isinstance(result, list):
            for k in result:
                _KEYS[k.key_ID] = k.material
        return result

    hil.keys.AuditedKME._run = keeping


def _patterns(material: bytes) -> list[bytes]:
    b64 = base64.b64encode(material)
    hexed = material.hex().encode()
    return [material, b64, b64.rstrip(b"="), hexed, hexed.upper()]


def _found(data: bytes, prefixes: np.ndarray, by_prefix: dict) -> bool:
    """Whether any pattern occurs in ``data``: every 8-byte window is looked up among the
    patterns' first 8 bytes (numpy, all offsets), candidates confirmed by a full compare."""
    for offset in range(8):
        usable = (len(data) - offset) // 8 * 8
        if usable <= 0:
            continue
        windows = np.frombuffer(data, dtype="<u8", count=usable // 8, offset=offset)
        for i in np.flatnonzero(np.isin(windows, prefixes)):
            start = offset + 8 * int(i)
            head = int(windows[i])
            if any(data.startswith(p, start) for p in by_prefix[head]):
                return True
    return False


def pytest_unconfigure(config):
    root = Path(os.environ["QKD_HIL_SCAN_ROOT"])
    patterns = [p for m in _KEYS.values() for p in _patterns(m)]
    by_prefix: dict = {}
    for p in patterns:  # every pattern is at least 16 bytes (keys of 128 bits or more)
        by_prefix.setdefault(int.from_bytes(p[:8], "little"), []).append(p)
    prefixes = np.array(sorted(by_prefix), dtype=np.uint64)
    hits, scanned, kinds = [], 0, set()
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name == "scan_verdict.json":
            continue
        data = path.read_bytes()
        scanned += 1
        kinds.add(path.suffix or path.name)
        if _found(data, prefixes, by_prefix):
            hits.append(str(path.relative_to(root)))
    # positive control, in memory: a key container as a KME sends it is found by the patterns
    control = False
    if _KEYS:
        m = next(iter(_KEYS.values()))
        blob = json.dumps({"keys": [{"key": base64.b64encode(m).decode()}]}).encode()
        control = _found(blob, prefixes, by_prefix) and not _found(b"x" * 4096, prefixes, by_prefix)
    verdict = {
        "files": scanned,
        "kinds": sorted(kinds),
        "keys": len(_KEYS),
        "hits": hits,
        "control_found": control,
    }
    Path(os.environ["QKD_HIL_SCAN_VERDICT"]).write_text(json.dumps(verdict))
