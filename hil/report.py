"""Run folders and their reports: verdicts, ``summary.json`` and ``manifest.sha256``.

A run folder ``results/<run-id>/`` holds the acquisitions, ``summary.json`` (every criterion,
value, limits, verdict, conditions and evidence file) and ``manifest.sha256`` over everything in
it, so that ``sha256sum -c manifest.sha256`` proves the evidence untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time
from pathlib import Path

import hil

from .criteria import Verdict


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


class Run:
    """One run of a test plan: its folder, its verdicts, its summary."""

    def __init__(self, results_dir: str | Path, run_id: str | None = None):
        self.run_id = run_id or new_run_id()
        self.dir = Path(results_dir) / self.run_id
        self.dir.mkdir(parents=True, exist_ok=False)
        self.started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.verdicts: list[Verdict] = []
        self.bench_info: dict = {}
        self.outcomes: dict[str, str] = {}  # test nodeid -> passed/failed/skipped

    def path(self, name: str) -> Path:
        """A path for an evidence file inside the run folder."""
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def bench_opened(self, bench) -> None:
        self.bench_info = {
            "name": bench.spec.name,
            "file": str(bench.path),
            "emulated": bench.emulated,
            "idn": dict(bench.idn),
            "control_plane_latency_s": dict(bench.latency_s),
        }

    def add_verdict(self, verdict: Verdict) -> None:
        verdict.evidence = [
            os.path.relpath(e, self.dir)
            if Path(e).is_absolute() and Path(e).is_relative_to(self.dir)
            else e
            for e in verdict.evidence
        ]
        self.verdicts.append(verdict)

    def summary(self) -> dict:
        counts = {
            k: sum(v.outcome == k for v in self.verdicts) for k in ("PASS", "MARGINAL", "FAIL")
        }
        return {
            "run_id": self.run_id,
            "started_utc": self.started_utc,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": socket.gethostname(),
            "qkd_hil_version": hil.__version__,
            "bench": self.bench_info,
            "verdict_counts": counts,
            "tests": self.outcomes,
            "verdicts": [v.to_dict() for v in self.verdicts],
        }

    def finish(self) -> Path:
        """Write summary.json and the manifest; returns the summary path."""
        out = self.dir / "summary.json"
        out.write_text(json.dumps(self.summary(), indent=2, default=float) + "\n")
        write_manifest(self.dir)
        return out


def write_manifest(folder: Path) -> Path:
    """``manifest.sha256`` over every file in ``folder`` (sha256sum -c format)."""
    lines = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "manifest.sha256":
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            lines.append(f"{h.hexdigest()}  {p.relative_to(folder).as_posix()}")
    out = folder / "manifest.sha256"
    out.write_text("\n".join(lines) + "\n")
    return out
