"""Bench pools: several bench files ("places", as labgrid calls them) that pytest-xdist workers
share, each worker holding one bench under an exclusive lock for its whole session.

A pool file is a YAML file whose top level has a ``pool:`` key (that key is how ``--bench`` tells
a pool from a bench file)::

    pool:              # bench names or files, relative to this file
      - lab-a.yaml
      - lab-b.yaml
    lock_dir: /var/lock/qkd-hil   # default: <temp dir>/qkd-hil-locks
    wait_s: 300                   # how long a worker waits for a free bench

A worker takes the first bench whose lock file it can lock (``fcntl.flock``, exclusive, not
blocking), trying the benches in turn and again every 0.2 s until ``wait_s`` has passed; the lock
is released when the session ends, and by the operating system when the process dies, so a
crashed run never leaves a bench taken. ``flock`` locks are local to one host (not reliable over
NFS): benches shared between hosts need one host to run the pool.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .config import ConfigError, error_line, load_bench, load_yaml, resolve_bench, validate

_POLL_S = 0.2


class PoolFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pool: list[str] = Field(min_length=1, description="bench names or files (relative to here)")
    lock_dir: str | None = Field(None, description="folder of the lock files (one per bench)")
    wait_s: float = Field(300.0, gt=0, le=86400, description="wait this long for a free bench")


class PoolBusy(RuntimeError):
    """No bench of the pool became free within the pool's ``wait_s``; one line."""


class Lease:
    """One bench of a pool, held under its lock until :meth:`release`."""

    def __init__(self, bench_path: Path, lock_path: Path, fd: int):
        self.bench_path, self.lock_path, self._fd = bench_path, lock_path, fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Pool:
    """The benches of a pool file and where their locks live."""

    def __init__(self, path: Path, benches: list[Path], lock_dir: Path, wait_s: float):
        self.path, self.benches, self.lock_dir, self.wait_s = path, benches, lock_dir, wait_s

    def lock_path(self, bench: Path) -> Path:
        # one lock per bench file, whichever pool names it
        digest = hashlib.sha256(str(bench.resolve()).encode()).hexdigest()[:12]
        return self.lock_dir / f"{bench.stem}-{digest}.lock"

    def try_acquire(self, bench: Path, owner: str) -> Lease | None:
        """Lock one bench now, or None when someone holds it."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        lock = self.lock_path(bench)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # who holds it, for the message of a worker that waits in vain
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)
        return Lease(bench, lock, fd)

    def holder(self, bench: Path) -> str:
        try:
            return self.lock_path(bench).read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self, owner: str, start: int = 0) -> Lease:
        """The first free bench, trying from ``start`` (a worker's number, so that workers do
        not all contend for the first bench); waits at most ``wait_s``, then raises PoolBusy."""
        owner_text = f"pid {os.getpid()} on {socket.gethostname()} ({owner})"
        n = len(self.benches)
        order = [self.benches[(start + i) % n] for i in range(n)]
        deadline = time.monotonic() + self.wait_s
        while True:
            for bench in order:
                lease = self.try_acquire(bench, owner_text)
                if lease is not None:
                    return lease
            if time.monotonic() >= deadline:
                held = "; ".join(f"{b.name} held by {self.holder(b)}" for b in order)
                raise PoolBusy(
                    f"{self.path}: no bench of the pool became free within {self.wait_s:g} s "
                    f"({held})"
                )
            time.sleep(_POLL_S)


def is_pool_file(name_or_path: str | Path) -> bool:
    """True when ``--bench`` names a pool file (a YAML mapping with a ``pool:`` key)."""
    try:
        path = resolve_bench(str(name_or_path))
        data, _ = load_yaml(path)
    except ConfigError:
        return False  # load_bench reports the problem in its own words
    return isinstance(data, dict) and "pool" in data


def load_pool(name_or_path: str | Path) -> Pool:
    """Validate a pool file and every bench file it names (errors: one line, file and line)."""
    path = resolve_bench(str(name_or_path))
    data, lines = load_yaml(path)
    spec = validate(PoolFile, data, path, lines)
    benches: list[Path] = []
    for i, entry in enumerate(spec.pool):
        p = Path(entry)
        if p.suffix in (".yaml", ".yml") or "/" in entry:
            # a file: relative to the pool file, not to wherever pytest was started
            target: str | Path = p if p.is_absolute() else path.parent / p
            if not Path(target).is_file():
                raise ConfigError(error_line(path, lines, ("pool", i), f"{target}: file not found"))
        else:
            target = entry  # the name of a shipped bench
        _, bench_path = load_bench(target)
        if bench_path.resolve() in (b.resolve() for b in benches):
            raise ConfigError(error_line(path, lines, ("pool", i), f"{entry!r} is listed twice"))
        benches.append(bench_path)
    lock_dir = (
        Path(spec.lock_dir) if spec.lock_dir else Path(tempfile.gettempdir()) / ("qkd-hil-locks")
    )
    if not lock_dir.is_absolute():
        lock_dir = path.parent / lock_dir
    return Pool(path, benches, lock_dir, spec.wait_s)
