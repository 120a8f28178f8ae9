"""HDF5 capture files: Photon-HDF5 (v0.5) core with QKD data under /user/qkd.

One file per acquisition. The writer streams tag chunks into extendable, chunked datasets and
marks the file complete only when it is closed normally; a file whose writer died stays readable
up to its last flush and reports itself incomplete.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import hil

PHOTON_HDF5_VERSION = "0.5"
CHUNK_TAGS = 1 << 20  # HDF5 chunk: 1 Mi tags (8 MiB of timestamps)
EVENT_DTYPE = np.dtype([("time_ps", "<i8"), ("kind", "S32"), ("detail", "S200")])


def _utc(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class CaptureWriter:
    """Write one acquisition: tags streamed in chunks, events, snapshot, QKD results."""

    def __init__(
        self,
        path: str | Path,
        *,
        description: str = "qkd-hil acquisition",
        snapshot: dict | None = None,
        flush_every_s: float = 1.0,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.path, "w", libver="latest")
        self.n_tags = 0
        self._last_ts = np.iinfo(np.int64).min
        self._flush_every_s = flush_every_s
        self._last_flush = time.monotonic()
        f = self.f
        f.attrs["format_name"] = "Photon-HDF5"
        f.attrs["format_version"] = PHOTON_HDF5_VERSION
        f.attrs["format_url"] = "http://photon-hdf5.org/"
        f.create_dataset("description", data=description)
        pd = f.create_group("photon_data")
        self.ts = pd.create_dataset(
            "timestamps", shape=(0,), maxshape=(None,), dtype="<i8", chunks=(CHUNK_TAGS,)
        )
        self.det = pd.create_dataset(
            "detectors", shape=(0,), maxshape=(None,), dtype="u1", chunks=(CHUNK_TAGS,)
        )
        pd.create_group("timestamps_specs").create_dataset("timestamps_unit", data=1e-12)
        ms = pd.create_group("measurement_specs")
        ms.create_dataset("measurement_type", data="generic")
        setup = f.create_group("setup")
        for name, value in (
            ("num_pixels", 4),
            ("num_spots", 1),
            ("num_spectral_ch", 1),
            ("num_polarization_ch", 4),
            ("num_split_ch", 1),
            ("modulated_excitation", False),
            ("lifetime", False),
        ):
            setup.create_dataset(name, data=value)
        ident = f.create_group("identity")
        ident.create_dataset("software", data="qkd-hil")
        ident.create_dataset("software_version", data=hil.__version__)
        ident.create_dataset("filename", data=self.path.name)
        ident.create_dataset("creation_time", data=_utc())
        prov = f.create_group("provenance")
        prov.create_dataset("software", data="qkd-hil")
        prov.create_dataset("hostname", data=socket.gethostname())
        user = f.create_group("user")
        self.qkd = user.create_group("qkd")
        self.qkd.attrs["complete"] = False
        self.qkd.attrs["start_time_utc"] = _utc()
        self.events = self.qkd.create_dataset(
            "events", shape=(0,), maxshape=(None,), dtype=EVENT_DTYPE, chunks=(256,)
        )
        bench = user.create_group("bench")
        bench.create_dataset("snapshot_json", data=json.dumps(snapshot or {}, default=str))
        f.swmr_mode = True  # readers may open the file while it grows (the link monitor)
        f.flush()

    def append(self, timestamps_ps: np.ndarray, channels: np.ndarray) -> None:
        """Append a chunk of tags (sorted, and not before the previous chunk)."""
        n = len(timestamps_ps)
        if n == 0:
            return
        if len(channels) != n:
            raise ValueError("timestamps and channels differ in length")
        if timestamps_ps[0] < self._last_ts:
            raise ValueError("tag chunk starts before the end of the previous one")
        self.ts.resize((self.n_tags + n,))
        self.ts[self.n_tags :] = timestamps_ps
        self.det.resize((self.n_tags + n,))
        self.det[self.n_tags :] = channels
        self.n_tags += n
        self._last_ts = int(timestamps_ps[-1])
        if time.monotonic() - self._last_flush > self._flush_every_s:
            self.flush()

    def add_event(self, time_ps: int, kind: str, detail: str = "") -> None:
        """Record a test action or fault at link time ``time_ps``."""
        i = len(self.events)
        self.events.resize((i + 1,))
        self.events[i] = (int(time_ps), kind.encode()[:32], detail.encode()[:200])

    def set_result(self, name: str, value: Any) -> None:
        """Store an analysis result (array or JSON-able) under /user/qkd/results."""
        grp = self.qkd.require_group("results")
        if name in grp:
            del grp[name]
        if isinstance(value, np.ndarray):
            grp.create_dataset(name, data=value)
        else:
            grp.create_dataset(name, data=json.dumps(value, default=float))

    def flush(self) -> None:
        self.f.flush()
        self._last_flush = time.monotonic()

    def close(self, *, complete: bool = True, duration_s: float | None = None) -> None:
        if not self.f.id.valid:
            return
        if duration_s is not None:
            self.f.create_dataset("acquisition_duration", data=float(duration_s))
        self.qkd.attrs["stop_time_utc"] = _utc()
        self.qkd.attrs["n_tags"] = self.n_tags
        self.qkd.attrs["complete"] = bool(complete)
        self.f.flush()
        self.f.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)


@dataclass
class CaptureReader:
    """Read a capture file (complete or not)."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.f = h5py.File(self.path, "r", libver="latest", swmr=True)

    @property
    def complete(self) -> bool:
        return bool(self.f["user/qkd"].attrs.get("complete", False))

    @property
    def n_tags(self) -> int:
        return int(self.f["photon_data/timestamps"].shape[0])

    @property
    def duration_s(self) -> float:
        if "acquisition_duration" in self.f:
            return float(self.f["acquisition_duration"][()])
        ts = self.f["photon_data/timestamps"]
        return float(ts[-1] - ts[0]) * 1e-12 if len(ts) else 0.0

    def tags(self) -> tuple[np.ndarray, np.ndarray]:
        return self.f["photon_data/timestamps"][:], self.f["photon_data/detectors"][:]

    def iter_chunks(self, n: int = CHUNK_TAGS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        ts, det = self.f["photon_data/timestamps"], self.f["photon_data/detectors"]
        for i in range(0, ts.shape[0], n):
            yield ts[i : i + n], det[i : i + n]

    def snapshot(self) -> dict:
        return json.loads(self.f["user/bench/snapshot_json"][()])

    def events(self) -> list[tuple[int, str, str]]:
        return [(int(t), k.decode(), d.decode()) for t, k, d in self.f["user/qkd/events"][:]]

    def result(self, name: str) -> Any:
        ds = self.f["user/qkd/results"][name]
        return ds[()] if ds.dtype.kind != "O" and ds.shape != () else json.loads(ds[()])

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_capture(path: str | Path) -> CaptureReader:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such capture file")
    return CaptureReader(Path(path))
