"""HDF5 capture files: Photon-HDF5 (v0.5) core with QKD data under /user/qkd and the bench
snapshot under /user/bench; a streaming writer and a reader that also reads a file still growing.

Layout (every name outside /user carries the official Photon-HDF5 description as its TITLE, so
phconvert's ``assert_valid_photon_hdf5`` accepts the file)::

    /acquisition_duration, /description
    /photon_data/timestamps           int64, unit 1e-12 s (chunked, extendable)
    /photon_data/detectors            uint8 tagger channel
    /photon_data/nanotimes            uint16 TCSPC bin (imported T3 files only)
    /photon_data/timestamps_specs/timestamps_unit = 1e-12
    /photon_data/measurement_specs    "generic"; polarization_chN for the H, V, D, A inputs
    /setup, /setup/detectors          id, label, counts per channel (counts kept current)
    /identity, /provenance
    /user/qkd/complete                1 only after a normal close (the last write of a capture)
    /user/qkd/n_tags                  tags flushed so far (kept current at every flush)
    /user/qkd/events                  (time_ps, kind, detail) of test actions and markers
    /user/qkd/results/<name>          analysis results
    /user/bench/...                   snapshot as readable datasets, plus snapshot_json

Crash safety: the file is written at ``<name>.partial`` and renamed to its final name only once
SWMR mode is on, so a file at the final path is always in a state an HDF5 reader can open. In
SWMR mode HDF5 orders its metadata writes so that a reader (or the file left behind by a killed
writer) sees the state of the last flush; ``complete`` is written last by ``close``, so a file
whose writer died reports itself incomplete with everything flushed before the kill. Readers
other than the SWMR one (plain h5py, phconvert, HDFView) refuse such a file until
``repair_capture`` (``hil inspect --repair``) has cleared what the writer left "open for write".

Compression, measured by ``benchmarks/bench_store.py`` (2**25 tags shaped like the emulated
bench: 100 kHz sync + detectors at 0.7, 0.7, 0.08, 0.08 MHz, 1 ps resolution; shared 2-core VM,
page cache, best of runs on 2026-11-28; compressed rows on 2**23 tags)::

    filter                    Mtags/s   bytes/tag
    numpy tofile (baseline)   170-470     9.00
    none                      115-125     9.00     (110 in 150k-tag appends; 120-165 including
                                                    fsync: write-behind, see _WriteBehind)
    gzip-1                          4     4.11
    shuffle+gzip-1                  7     3.35
    shuffle+gzip-4                  5     3.35
    h5py LZF / shuffle+LZF      12/15     6.54 / 3.85   (not offered: see below)

Sorted picosecond timestamps are high-entropy in their low bytes; only byte shuffling buys
much (2.7x smaller), at 20x the CPU per tag, far below the rates a tagger delivers. Captures
are therefore written uncompressed (the default); the PTU importer, where size matters more
than speed, uses ``shuffle+gzip-1``. LZF is h5py's own filter: PyTables, hence phconvert and
other Photon-HDF5 readers, cannot decode it, so only filters built into libhdf5 are offered.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numba import njit

import hil

PHOTON_HDF5_VERSION = "0.5"
PHOTON_HDF5_URL = "http://photon-hdf5.org/"
CHUNK_TAGS = 1 << 20  # HDF5 chunk: 1 Mi tags (8 MiB of timestamps)
EVENT_DTYPE = np.dtype([("time_ps", "<i8"), ("kind", "S32"), ("detail", "S200")])
# (low, high) format bounds: v110 is the oldest that supports SWMR; capping the high bound keeps
# files readable by HDF5 1.10 tools (Debian's h5ls) and PyTables, whatever libhdf5 h5py ships.
LIBVER = ("v110", "v110")
# Only filters built into libhdf5: h5py's LZF is unreadable by PyTables, hence by phconvert.
COMPRESSIONS = ("none", "gzip-1", "shuffle+gzip-1", "shuffle+gzip-4", "shuffle+gzip-6")
N_CHANNEL_IDS = 256  # detectors are uint8


@njit(cache=True, nogil=True)
def count_channels(channels):
    """Tags per uint8 channel id (length 256). np.bincount does the same at ~8x the cost
    (it first widens every uint8 to intp), which the store would pay on every tag.

    Four interleaved tables: runs of one channel (the detectors dominate) would otherwise
    make each increment wait for the previous one to the same counter (0.65 against
    1.15 ns per tag, measured on 2e5 tags shaped like the emulated bench)."""
    counts = np.zeros(4 * 256, dtype=np.int64)
    n = len(channels)
    m = n - n % 4
    for i in range(0, m, 4):
        counts[channels[i]] += 1
        counts[256 + channels[i + 1]] += 1
        counts[512 + channels[i + 2]] += 1
        counts[768 + channels[i + 3]] += 1
    for i in range(m, n):
        counts[channels[i]] += 1
    return counts[:256] + counts[256:512] + counts[512:768] + counts[768:]


@njit(cache=True, nogil=True)
def count_descents(timestamps_ps):
    """Number of tags earlier than the tag before them (0 for a sorted chunk). One compare per
    tag, summed without a branch (the compiler vectorises it: well under 1 ns per tag)."""
    n = 0
    for i in range(1, len(timestamps_ps)):
        n += timestamps_ps[i] < timestamps_ps[i - 1]
    return n


class _WriteBehind:
    """Hand a growing file's older pages to the disk and out of the page cache (Linux).

    Every ``step_bytes`` of growth, writeback of the new bytes is started (asynchronous), and
    the pages older than the newest ``keep_bytes`` whose writeback is done are dropped from
    the page cache (never waited for: a disk slower than the capture only leaves them cached,
    as without this). A long capture then reuses the page-cache pages it freed instead of
    taking fresh ones, and its cache footprint stays bounded. On the 2-core VM of
    benchmarks/bench_store.py a write into fresh page-cache pages costs ~20 ns per 9-byte tag
    against ~2-6 ns into recycled ones (plain pwrite, 400 MB files). The file's content and
    the SWMR/flush guarantees are unchanged: only when the kernel writes pages back and
    whether it keeps them cached. Elsewhere (no sync_file_range) it does nothing."""

    def __init__(self, path: Path, step_bytes: int = 32 << 20, keep_bytes: int = 64 << 20):
        self.step, self.keep = step_bytes, keep_bytes
        self.started = 0  # writeback started for bytes [0, started)
        self.fd = -1
        if _sync_file_range is not None and hasattr(os, "posix_fadvise"):
            try:
                self.fd = os.open(path, os.O_RDONLY)
            except OSError:
                self.fd = -1

    def __call__(self) -> None:
        if self.fd < 0:
            return
        try:
            size = os.fstat(self.fd).st_size
            if size - self.started < self.step:
                return
            _sync_file_range(self.fd, self.started, size - self.started, _SFR_WRITE)
            self.started = size
            # the window before the kept bytes, a few steps deep: pages whose writeback ended
            # since the last call go (DONTNEED skips dirty pages and those under writeback)
            end = size - self.keep
            lo = max(0, end - 4 * self.keep)
            if end > lo:
                os.posix_fadvise(self.fd, lo, end - lo, os.POSIX_FADV_DONTNEED)
        except OSError:
            self.close()  # a file system without these calls: the page cache as usual

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _load_sync_file_range():
    """libc's sync_file_range (Linux), or None."""
    if not hasattr(os, "posix_fadvise"):
        return None
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def sync_file_range(fd: int, offset: int, nbytes: int, flags: int) -> None:
        if fn(fd, offset, nbytes, flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return sync_file_range


_SFR_WRITE = 2  # SYNC_FILE_RANGE_WRITE: start writeback of dirty pages in the range
_sync_file_range = _load_sync_file_range()


def _utc(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _text(s: str) -> np.bytes_:
    """A fixed-length byte string: Photon-HDF5 wants its strings as such (dtype kind 'S')."""
    return np.bytes_(str(s).encode("utf-8"))


def _filters(compression: str | None) -> dict:
    """h5py dataset keywords for a named filter chain."""
    name = compression or "none"
    if name not in COMPRESSIONS:
        raise ValueError(f"compression {name!r} unknown; choose one of {', '.join(COMPRESSIONS)}")
    kw: dict[str, Any] = {"shuffle": name.startswith("shuffle")}
    if "gzip" in name:
        kw["compression"] = "gzip"
        kw["compression_opts"] = int(name.rsplit("-", 1)[1])
    return kw


_DESCRIPTIONS: dict[str, str] | None = None


def _descriptions() -> dict[str, str]:
    """The official Photon-HDF5 field descriptions, from the spec file phconvert ships.

    The validator compares each TITLE with these exact strings; reading them from the spec file
    keeps one source of truth. The file is located without importing phconvert (which would
    pull in PyTables for every capture).
    """
    global _DESCRIPTIONS
    if _DESCRIPTIONS is None:
        spec = importlib.util.find_spec("phconvert")
        path = None
        if spec and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / "specs"
            path = path / "photon-hdf5_specs.json"
        if path is None or not path.exists():
            warnings.warn(
                "phconvert is not installed: Photon-HDF5 descriptions (TITLE) are left empty "
                "and the files will not pass phconvert's validator; pip install phconvert",
                stacklevel=3,
            )
            _DESCRIPTIONS = {}
        else:
            raw = json.loads(path.read_text())
            _DESCRIPTIONS = {
                "/" + k.strip("/").replace("?N", "").replace("!M", ""): v[0] for k, v in raw.items()
            }
            _DESCRIPTIONS["/"] = raw["/"][0]
    return _DESCRIPTIONS


def _title(node: h5py.HLObject, spec_name: str | None = None) -> None:
    """Give ``node`` its official description; ``spec_name`` for enumerated names (``_ch1``)."""
    d = _descriptions()
    name = spec_name or node.name
    if name in d:
        node.attrs["TITLE"] = _text(d[name])


def _enumerated_title(node: h5py.HLObject, generic: str, n: int) -> None:
    """Fill the {NTH} placeholder of an enumerated field's description (``polarization_ch2``)."""
    d = _descriptions().get(generic)
    if d is not None:
        nth = {1: "first", 2: "second", 3: "thrid", 4: "fourth"}  # as the spec tool spells them
        text = d.replace("{NTH}", nth.get(n, str(n)))
        # the spectral-only "(i.e. donor/acceptor ...)" chunk is cut by the tool for n > 2
        node.attrs["TITLE"] = _text(text.replace("!!", ""))


@dataclass
class Layout:
    """What the Photon-HDF5 /setup says about the instrument that made the tags.

    The default is the emulated QKD bench (DESIGN.md "Data conventions"): input 0 = sync from
    the source, inputs 1-4 = detectors H, V, D, A (four polarization channels), input 8 =
    software marker; the source is pulsed at ``repetition_rate_hz``.
    """

    detector_ids: tuple[int, ...] = (0, 1, 2, 3, 4, 8)
    detector_labels: tuple[str, ...] = ("sync", "H", "V", "D", "A", "marker")
    polarization_ch: tuple[tuple[int, ...], ...] = ((1,), (2,), (3,), (4,))
    num_pixels: int = 4
    repetition_rate_hz: float | None = None  # None: continuous wave (no pulsed source known)
    wavelength_m: float | None = None
    tcspc_unit_s: float | None = None  # set for files with nanotimes (T3 imports)
    tcspc_num_bins: int | None = None
    measurement_type: str = "generic"


@dataclass
class Provenance:
    """Where the data came from when the file is a conversion (Photon-HDF5 /provenance)."""

    software: str = "qkd-hil"
    software_version: str = field(default_factory=lambda: hil.__version__)
    filename: str | None = None
    filename_full: str | None = None
    creation_time: str | None = None
    modification_time: str | None = None


def layout_from_snapshot(snapshot: dict | None) -> Layout:
    """The default bench layout, with the source's pulse rate and wavelength when known."""
    lay = Layout()
    inst = (snapshot or {}).get("instruments", {})
    src = inst.get("source", {}).get("settings", {}) or {}
    if isinstance(src.get("clock_hz"), int | float):
        lay.repetition_rate_hz = float(src["clock_hz"])
    for role in ("source", "attenuator", "powermeter"):
        wl = (inst.get(role, {}).get("settings", {}) or {}).get("wavelength_m")
        if isinstance(wl, int | float):
            lay.wavelength_m = float(wl)
            break
    return lay


def _write_tree(group: h5py.Group, value: Any, name: str) -> None:
    """Write a JSON-like value as readable HDF5: dicts as groups, leaves as scalar datasets."""
    name = str(name).replace("/", "_") or "_"
    if isinstance(value, dict):
        sub = group.create_group(name)
        for k, v in value.items():
            _write_tree(sub, v, k)
    elif value is None:
        group.create_dataset(name, data=_text("null"))
    elif isinstance(value, bool | np.bool_):
        group.create_dataset(name, data=np.bool_(value))
    elif isinstance(value, int | float | np.number):
        group.create_dataset(name, data=value)
    elif isinstance(value, list | tuple):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf" and arr.ndim >= 1:
            group.create_dataset(name, data=arr)
        else:
            group.create_dataset(name, data=_text(json.dumps(value, default=str)))
    else:
        group.create_dataset(name, data=_text(value))


class CaptureWriter:
    """Write one acquisition: tags streamed in chunks, events, snapshot, QKD results.

    Memory stays bounded: each ``append`` goes to the file (uncompressed tags through one HDF5
    chunk held here); only per-channel counts and results set before ``close`` are held.
    ``write_behind`` (Linux): the file's pages older than its newest 64 MiB are written to disk
    and, once written, dropped from the page cache as the capture grows (see ``_WriteBehind``;
    a capture read right after it is written then comes partly from the disk).

    ``flush`` (automatic every ``flush_every_s``) makes everything appended so far visible to
    SWMR readers and durable against a writer crash; ``n_flushed`` says how many tags that
    covers.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        description: str = "qkd-hil acquisition",
        snapshot: dict | None = None,
        flush_every_s: float = 1.0,
        compression: str | None = None,
        chunk_tags: int = CHUNK_TAGS,
        layout: Layout | None = None,
        provenance: Provenance | None = None,
        write_behind: bool = True,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        snapshot = snapshot or {}
        self.layout = layout or layout_from_snapshot(snapshot)
        self.n_tags = 0
        self.n_flushed = 0
        self._first_ts: int | None = None
        self._last_ts = np.iinfo(np.int64).min
        self._counts = np.zeros(N_CHANNEL_IDS, dtype=np.int64)
        self._results: dict[str, Any] = {}
        self._flush_every_s = flush_every_s
        self._start_utc = _utc()
        # Uncompressed tags go to the file in whole HDF5 chunks (write_direct_chunk: one
        # write each, past libhdf5's selection and chunk-I/O machinery): 5.2 against 8.7 ns
        # per tag in 150k-tag appends, 3.7 against 6.6 in whole-chunk appends (CPU, this
        # VM, page cache; both write each byte once). The chunk being filled is kept here and
        # written (padded) at every flush, so a flush still makes every appended tag durable.
        self._direct = compression in (None, "none") and self.layout.tcspc_unit_s is None
        self._chunk_tags = int(chunk_tags)
        self._chunk_start = 0  # index of the first tag in the chunk buffers
        self._chunk_fill = 0  # tags in the chunk buffers
        if self._direct:  # zeros: the padding of a partial chunk holds no stale memory
            self._chunk_ts = np.zeros(self._chunk_tags, "<i8")
            self._chunk_det = np.zeros(self._chunk_tags, "u1")
        partial = self.path.with_name(self.path.name + ".partial")
        self._lock_fd = -1
        self.f = h5py.File(partial, "w", libver=LIBVER)
        try:
            self._create(description, snapshot, _filters(compression), chunk_tags, provenance)
            self.f.swmr_mode = True  # readers may open the file while it grows (link monitor)
            self.f.flush()
            # libhdf5 has just dropped its own lock (SWMR): ours says "alive" until close or
            # death, before the file has its final name (see repair_capture)
            self._lock_fd = _writer_lock(partial)
            os.replace(partial, self.path)
        except BaseException:
            self.f.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            partial.unlink(missing_ok=True)
            raise
        self._write_behind = _WriteBehind(self.path) if write_behind else None
        self._last_flush = time.monotonic()

    # -- layout --------------------------------------------------------------------------------
    def _ds(self, parent: h5py.Group, name: str, data: Any, **kw) -> h5py.Dataset:
        ds = parent.create_dataset(name, data=data, **kw)
        _title(ds)
        if isinstance(data, bytes):
            # PyTables (hence phconvert) returns such a scalar as ``bytes`` only with this flag
            ds.attrs["FLAVOR"] = np.bytes_(b"python")
        return ds

    def _group(self, parent: h5py.Group, name: str) -> h5py.Group:
        g = parent.create_group(name)
        _title(g)
        return g

    def _create(self, description, snapshot, filters, chunk_tags, provenance) -> None:
        f, lay = self.f, self.layout
        _title(f)
        for name, value in (
            ("format_name", "Photon-HDF5"),
            ("format_version", PHOTON_HDF5_VERSION),
            ("format_url", PHOTON_HDF5_URL),
        ):
            f.attrs[name] = _text(value)
        self.duration = self._ds(f, "acquisition_duration", np.float64(0.0))
        self._ds(f, "description", _text(description))

        pd = self._group(f, "photon_data")
        ext = {"shape": (0,), "maxshape": (None,), "chunks": (chunk_tags,), **filters}
        self.ts = pd.create_dataset("timestamps", dtype="<i8", **ext)
        _title(self.ts)
        self.det = pd.create_dataset("detectors", dtype="u1", **ext)
        _title(self.det)
        self.nt = None
        tspecs = self._group(pd, "timestamps_specs")
        self._ds(tspecs, "timestamps_unit", np.float64(1e-12))
        if lay.tcspc_unit_s is not None:
            self.nt = pd.create_dataset("nanotimes", dtype="<u2", **ext)
            _title(self.nt)
            ns = self._group(pd, "nanotimes_specs")
            self._ds(ns, "tcspc_unit", np.float64(lay.tcspc_unit_s))
            self._ds(ns, "tcspc_num_bins", np.int64(lay.tcspc_num_bins or 0))
            self._ds(ns, "tcspc_range", np.float64(lay.tcspc_unit_s * (lay.tcspc_num_bins or 0)))
        ms = self._group(pd, "measurement_specs")
        self._ds(ms, "measurement_type", _text(lay.measurement_type))
        if lay.repetition_rate_hz is not None:
            self._ds(ms, "laser_repetition_rate", np.float64(lay.repetition_rate_hz))
        ds_specs = self._group(ms, "detectors_specs")
        for i, ids in enumerate(lay.polarization_ch, 1):
            node = ds_specs.create_dataset(f"polarization_ch{i}", data=np.asarray(ids, "u1"))
            _enumerated_title(
                node, "/photon_data/measurement_specs/detectors_specs/polarization_ch", i
            )

        setup = self._group(f, "setup")
        pulsed = lay.repetition_rate_hz is not None
        for name, value in (
            ("num_pixels", np.int64(lay.num_pixels)),
            ("num_spots", np.int64(1)),
            ("num_spectral_ch", np.int64(1)),
            ("num_polarization_ch", np.int64(max(1, len(lay.polarization_ch)))),
            ("num_split_ch", np.int64(1)),
            # the decoy and polarization modulation of a QKD source is not the wavelength
            # alternation this field means
            ("modulated_excitation", np.bool_(False)),
            ("lifetime", np.bool_(lay.tcspc_unit_s is not None)),
            ("excitation_alternated", np.array([False])),
            ("excitation_cw", np.array([not pulsed])),
        ):
            self._ds(setup, name, value)
        if pulsed:
            self._ds(setup, "laser_repetition_rates", np.array([lay.repetition_rate_hz]))
        if lay.wavelength_m is not None:
            self._ds(setup, "excitation_wavelengths", np.array([lay.wavelength_m]))
            self._ds(setup, "detection_wavelengths", np.array([lay.wavelength_m]))
        dets = self._group(setup, "detectors")
        # id, label and counts grow when a channel outside the layout shows up (at flush)
        n = len(lay.detector_ids)
        grow = {"maxshape": (N_CHANNEL_IDS,), "chunks": (64,)}
        self.det_id = self._ds(dets, "id", np.asarray(lay.detector_ids, "u1"), **grow)
        self.det_label = self._ds(
            dets, "label", np.array([_text(s) for s in lay.detector_labels], "S16"), **grow
        )
        self.det_counts = self._ds(dets, "counts", np.zeros(n, "<i8"), **grow)

        ident = self._group(f, "identity")
        for name, value in (
            ("format_name", "Photon-HDF5"),
            ("format_version", PHOTON_HDF5_VERSION),
            ("format_url", PHOTON_HDF5_URL),
            ("software", "qkd-hil"),
            ("software_version", hil.__version__),
            ("filename", self.path.name),
            ("filename_full", str(self.path.resolve())),
            ("creation_time", self._start_utc),
            ("creator", _user()),
        ):
            self._ds(ident, name, _text(value))
        prov = self._group(f, "provenance")
        p = provenance or Provenance(creation_time=self._start_utc)
        for name in (
            "software",
            "software_version",
            "filename",
            "filename_full",
            "creation_time",
            "modification_time",
        ):
            if getattr(p, name) is not None:
                self._ds(prov, name, _text(getattr(p, name)))

        user = f.create_group("user")
        self.qkd = user.create_group("qkd")
        self.complete_ds = self.qkd.create_dataset("complete", data=np.uint8(0))
        self.n_tags_ds = self.qkd.create_dataset("n_tags", data=np.int64(0))
        self.events = self.qkd.create_dataset(
            "events", shape=(0,), maxshape=(None,), dtype=EVENT_DTYPE, chunks=(256,)
        )
        self.qkd.create_group("results")
        self._write_bench(user.create_group("bench"), snapshot)

    def _write_bench(self, bench: h5py.Group, snap: dict) -> None:
        for key in ("bench_name", "bench_file", "bench_file_text", "criteria_file",
                    "criteria_file_text", "qkd_hil_version", "git_revision"):  # fmt: skip
            value = snap.get(key)
            bench.create_dataset(key, data=_text("" if value is None else value))
        bench.create_dataset("host", data=_text(socket.gethostname()))
        bench.create_dataset("start_time_utc", data=_text(self._start_utc))
        self.stop_ds = bench.create_dataset("stop_time_utc", data=np.bytes_(b" " * 20))
        bench.create_dataset("snapshot_json", data=_text(json.dumps(snap, default=str)))
        if snap.get("control_plane_latency_s"):
            _write_tree(bench, snap["control_plane_latency_s"], "control_plane_latency_s")
        insts = bench.create_group("instruments")
        for role, entry in (snap.get("instruments") or {}).items():
            _write_tree(insts, entry, role)

    # -- streaming -----------------------------------------------------------------------------
    def append(
        self,
        timestamps_ps: np.ndarray,
        channels: np.ndarray,
        nanotimes: np.ndarray | None = None,
    ) -> np.ndarray:
        """Append a chunk of tags (not before the previous chunk); returns the chunk's tags
        per channel id (int64, length 256).

        A chunk that is not in time order inside (a tagger merging its inputs late) is sorted
        by time, stably, and an event "tags reordered" says how many tags were out of order:
        the file keeps every tag and the layout's sorted timestamps. A chunk that starts
        before the end of the previous one cannot be mended once that one is written: it is
        refused (ValueError), and what was written stays."""
        n = len(timestamps_ps)
        if n == 0:
            return np.zeros(N_CHANNEL_IDS, dtype=np.int64)
        if len(channels) != n:
            raise ValueError("timestamps and channels differ in length")
        timestamps_ps = np.asarray(timestamps_ps, dtype=np.int64)
        descents = count_descents(timestamps_ps)
        if descents:
            order = np.argsort(timestamps_ps, kind="stable")
            timestamps_ps, channels = timestamps_ps[order], np.asarray(channels)[order]
            if nanotimes is not None:
                nanotimes = np.asarray(nanotimes)[order]
        if timestamps_ps[0] < self._last_ts:
            raise ValueError("tag chunk starts before the end of the previous one")
        if (nanotimes is None) != (self.nt is None):
            raise ValueError("nanotimes must be given exactly when the layout has a TCSPC unit")
        end = self.n_tags + n
        if self._direct:
            self._append_chunked(timestamps_ps, channels)
        else:
            self.ts.resize((end,))
            self.ts[self.n_tags :] = timestamps_ps
            self.det.resize((end,))
            self.det[self.n_tags :] = channels
            if self.nt is not None:
                self.nt.resize((end,))
                self.nt[self.n_tags :] = nanotimes
        if self._write_behind is not None:
            self._write_behind()
        chunk_counts = count_channels(np.ascontiguousarray(channels, dtype=np.uint8))
        self._counts += chunk_counts
        if self._first_ts is None:
            self._first_ts = int(timestamps_ps[0])
        self.n_tags = end
        self._last_ts = int(timestamps_ps[-1])
        if descents:
            self.add_event(
                int(timestamps_ps[0]),
                "tags reordered",
                f"{descents} of {n} tags in a chunk came before the tag ahead of them; "
                "the chunk was sorted by time",
            )
        if time.monotonic() - self._last_flush > self._flush_every_s:
            self.flush()
        return chunk_counts

    def _append_chunked(self, ts: np.ndarray, ch: np.ndarray) -> None:
        """Copy tags into the chunk buffers, writing each chunk that fills up; whole chunks of
        the input that start at a chunk boundary go to the file without the copy."""
        c, i, n = self._chunk_tags, 0, len(ts)
        while i < n:
            fill = self._chunk_fill
            if fill == 0 and n - i >= c:
                self._chunk_fill = c
                self._write_chunk(
                    np.ascontiguousarray(ts[i : i + c], "<i8"),
                    np.ascontiguousarray(ch[i : i + c], "u1"),
                )
                i += c
            else:
                m = min(c - fill, n - i)
                self._chunk_ts[fill : fill + m] = ts[i : i + m]
                self._chunk_det[fill : fill + m] = ch[i : i + m]
                self._chunk_fill = fill + m
                i += m
                if self._chunk_fill < c:
                    continue  # the input ended inside this chunk
                self._write_chunk()
            self._chunk_start += c
            self._chunk_fill = 0

    def _write_chunk(self, ts: np.ndarray | None = None, det: np.ndarray | None = None) -> None:
        """Write the chunk at ``_chunk_start`` (the chunk buffers, whole, padded beyond
        ``_chunk_fill``; or ``ts``/``det``, one whole chunk each) and extend the datasets over
        the tags it holds. libhdf5 wants the extent to cover a chunk before it is written
        directly."""
        end = self._chunk_start + self._chunk_fill
        ts = self._chunk_ts if ts is None else ts
        det = self._chunk_det if det is None else det
        for ds, buf in ((self.ts, ts), (self.det, det)):
            if ds.shape[0] < end:
                ds.resize((end,))
            ds.id.write_direct_chunk((self._chunk_start,), buf)

    @property
    def counts(self) -> np.ndarray:
        """Tags appended so far per channel id (int64, length 256)."""
        return self._counts.copy()

    def add_event(self, time_ps: int, kind: str, detail: str = "") -> None:
        """Record a test action or fault at link time ``time_ps``."""
        i = len(self.events)
        self.events.resize((i + 1,))
        self.events[i] = (int(time_ps), kind.encode()[:32], detail.encode()[:200])

    def set_result(self, name: str, value: Any) -> None:
        """Store an analysis result (array or JSON-able) under /user/qkd/results at close.

        Results are held until ``close``: creating datasets while SWMR readers are attached is
        outside what SWMR promises them.
        """
        self._results[name] = value

    def _write_counts(self) -> None:
        _write_detector_counts(self.det_id, self.det_label, self.det_counts, self._counts)

    def flush(self) -> None:
        """Make everything appended so far visible to readers and durable against a crash."""
        if self._direct and self._chunk_fill:
            self._write_chunk()  # the partial chunk; rewritten in place as it fills up
        # tags first, then what describes them: one flush leaves libhdf5 free to write the
        # counts before the tags' extent, and a writer killed in between left a file whose
        # counts exceeded its readable tags (seen once in test_live_and_crash)
        self.f.flush()
        self._write_counts()
        if self._first_ts is not None:
            self.duration[()] = (self._last_ts - self._first_ts) * 1e-12
        self.n_tags_ds[()] = self.n_tags
        self.f.flush()
        self.n_flushed = self.n_tags
        self._last_flush = time.monotonic()

    def close(self, *, complete: bool = True, duration_s: float | None = None) -> None:
        """Finish the file; only ``complete=True`` marks it complete (the very last write)."""
        if not self.f.id.valid:
            return
        try:
            self.flush()
            if duration_s is not None:
                self.duration[()] = float(duration_s)
            for name, value in self._results.items():
                _write_result(self.qkd["results"], name, value)
            self.stop_ds[()] = _text(_utc())
            self.f.flush()
            if complete:
                self.complete_ds[()] = 1
                self.f.flush()
        finally:
            self.f.close()
            if self._lock_fd >= 0:  # after the close has cleared the consistency flags
                os.close(self._lock_fd)
                self._lock_fd = -1
            if self._write_behind is not None:
                self._write_behind.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)


def _write_detector_counts(det_id, det_label, det_counts, counts: np.ndarray) -> bool:
    """Store tags per channel (length 256) in /setup/detectors, adding an entry for a channel
    outside the layout; True if anything changed (the writer at every flush, the repair)."""
    ids = [int(i) for i in det_id[:]]
    new = [int(c) for c in np.flatnonzero(counts) if int(c) not in ids]
    if new:
        m = len(ids) + len(new)
        for ds in (det_id, det_label, det_counts):
            ds.resize((m,))
        det_id[len(ids) :] = np.asarray(new, "u1")
        det_label[len(ids) :] = np.array([_text(f"input {c}") for c in new], "S16")
        ids += new
    if not new and np.array_equal(det_counts[:], counts[ids]):
        return False
    det_counts[:] = counts[ids]
    return True


def _write_result(grp: h5py.Group, name: str, value: Any) -> None:
    if name in grp:
        del grp[name]
    if isinstance(value, np.ndarray):
        grp.create_dataset(name, data=value)
    else:
        grp.create_dataset(name, data=_text(json.dumps(value, default=float)))


def store_result(path: str | Path, name: str, value: Any) -> None:
    """Add an analysis result (array or JSON-able) to a closed capture's /user/qkd/results.

    Completeness is untouched: a result does not make an incomplete capture complete.
    """
    with h5py.File(path, "r+") as f:
        _write_result(f.require_group("user/qkd/results"), name, value)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class CaptureReader:
    """Read a capture file, complete or not, or still being written (SWMR)."""

    def __init__(self, path: str | Path, *, chunk_cache_bytes: int = 64 << 20):
        self.path = Path(path)
        # swmr=True opens files whose writer is still running or was killed (the superblock
        # still says "open for writing"); the chunk cache keeps binary searches to one read
        self.f = h5py.File(self.path, "r", libver=LIBVER, swmr=True, rdcc_nbytes=chunk_cache_bytes)
        self._ts = self.f["photon_data/timestamps"]
        self._det = self.f["photon_data/detectors"]
        self._nt = self.f["photon_data"].get("nanotimes")

    def refresh(self) -> None:
        """See what the writer flushed since the last look (SWMR)."""
        for ds in (self._ts, self._det, self._nt, self.f["user/qkd/complete"],
                   self.f["user/qkd/n_tags"], self.f["acquisition_duration"]):  # fmt: skip
            if ds is not None:
                ds.refresh()

    @property
    def complete(self) -> bool:
        """True only for a file its writer closed normally, with every tag it counted."""
        self.refresh()
        done = bool(self.f["user/qkd/complete"][()])
        return done and int(self.f["user/qkd/n_tags"][()]) == self._ts.shape[0]

    @property
    def n_tags(self) -> int:
        self.refresh()
        return int(min(self._ts.shape[0], self._det.shape[0]))

    @property
    def duration_s(self) -> float:
        """Acquisition duration (for an incomplete file: from the first to the last flushed tag)."""
        self.refresh()
        return float(self.f["acquisition_duration"][()])

    @property
    def chunk_tags(self) -> int:
        return int(self._ts.chunks[0]) if self._ts.chunks else CHUNK_TAGS

    def tags(self) -> tuple[np.ndarray, np.ndarray]:
        """All tags in memory (for small captures; use iter_chunks or window otherwise)."""
        n = self.n_tags
        return self._ts[:n], self._det[:n]

    def nanotimes(self) -> np.ndarray | None:
        return None if self._nt is None else self._nt[: self.n_tags]

    def iter_chunks(
        self, n: int | None = None, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (timestamps, channels) of tags ``start..stop`` in pieces of ``n`` tags."""
        n = n or self.chunk_tags
        stop = self.n_tags if stop is None else min(stop, self.n_tags)
        for i in range(start, stop, n):
            j = min(i + n, stop)
            yield self._ts[i:j], self._det[i:j]

    def index_at(self, time_ps: int) -> int:
        """Index of the first tag at or after ``time_ps`` (binary search, chunk by chunk).

        First bisect over the first timestamp of each HDF5 chunk (one read each, cached), then
        search inside the one chunk that can hold the answer.
        """
        n = self.n_tags
        c = self.chunk_tags
        lo, hi = 0, (n + c - 1) // c  # answer lies in chunk lo-1 .. hi-1 boundaries
        while lo < hi:  # first chunk whose first tag is >= time_ps
            mid = (lo + hi) // 2
            if self._ts[mid * c] < time_ps:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return 0
        base = (lo - 1) * c
        block = self._ts[base : min(base + c, n)]
        return base + int(np.searchsorted(block, time_ps, side="left"))

    def window(self, t0_ps: int, t1_ps: int) -> tuple[np.ndarray, np.ndarray]:
        """Tags with ``t0_ps <= timestamp < t1_ps``."""
        i, j = self.index_at(t0_ps), self.index_at(t1_ps)
        j = max(i, j)
        return self._ts[i:j], self._det[i:j]

    def counts(self) -> dict[int, int]:
        """Tags per channel as recorded at the last flush (no pass over the data)."""
        d = self.f["setup/detectors"]
        for ds in d.values():
            ds.refresh()
        return {int(i): int(c) for i, c in zip(d["id"][:], d["counts"][:], strict=True) if c}

    def channel_labels(self) -> dict[int, str]:
        """Channel id -> label from /setup/detectors ("sync", "H", ..., "channel 1")."""
        d = self.f["setup/detectors"]
        for ds in d.values():
            ds.refresh()
        return {int(i): _str(lab) for i, lab in zip(d["id"][:], d["label"][:], strict=True)}

    def provenance(self) -> dict[str, str]:
        """The Photon-HDF5 /provenance fields (the original file of an import)."""
        return {k: _str(v[()]) for k, v in self.f["provenance"].items()}

    def snapshot(self) -> dict:
        return json.loads(_str(self.f["user/bench/snapshot_json"][()]))

    def bench_info(self) -> dict[str, str]:
        """The readable scalar fields of /user/bench (host, times, versions, bench name)."""
        g = self.f["user/bench"]
        g["stop_time_utc"].refresh()
        return {
            k: _str(v[()]).strip()
            for k, v in g.items()
            if isinstance(v, h5py.Dataset) and k not in ("snapshot_json",) and v.shape == ()
        }

    def events(self) -> list[tuple[int, str, str]]:
        ev = self.f["user/qkd/events"]
        ev.refresh()
        return [(int(t), _str(k), _str(d)) for t, k, d in ev[:]]

    def result(self, name: str) -> Any:
        ds = self.f["user/qkd/results"][name]
        if ds.dtype.kind in "SO" and ds.shape == ():
            return json.loads(_str(ds[()]))
        return ds[()]

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_capture(path: str | Path) -> CaptureReader:
    """Open a capture for reading; a clear error when it is missing or not a capture."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such capture file")
    try:
        return CaptureReader(Path(path))
    except KeyError as exc:
        raise OSError(f"{path}: not a qkd-hil capture (missing {exc.args[0]})") from None


# -- a capture whose writer died -----------------------------------------------------------------
# A writer in SWMR mode sets the superblock's "file consistency flags" (write access, SWMR write)
# and clears them only as the last act of a normal close. A killed writer leaves them set, and
# libhdf5 then refuses every open but an SWMR read ("file is already open for write"): our own
# reader copes, plain h5py, PyTables (phconvert), HDFView and h5ls do not. ``repair_capture`` is
# the one documented step (``hil inspect --repair``): it clears the flags, as ``h5clear -s`` of
# hdf5-tools does, without needing hdf5-tools. An explicit step rather than our reader clearing
# them on the fly: reading must not change a file (read-only media, the run folder's manifest).
# h5py offers no way to it: libhdf5 clears them only under a private file-access property
# ("clear_status_flags") that h5py does not expose. So the superblock is patched in place: the
# flags byte, the end-of-file address when tags lie past it, and the checksum; the rest of the
# file is what the SWMR reader already reads (and the summaries step of ``repair_capture``).
#
# Superblock versions 2 and 3 (HDF5 File Format Specification 3.0, II.A "Disk Format: Level 0A -
# Format Signature and Superblock"): signature (8 bytes), version, size of offsets (O), size of
# lengths, file consistency flags (1 byte each), then four addresses of O bytes (base, superblock
# extension, end of file, root group object header), then a 4-byte checksum of all the bytes
# before it: Jenkins' lookup3 ``hashlittle`` with initial value 0 (the specification's appendix on
# checksums; libhdf5 H5checksum.c, H5_checksum_lookup3). The flags are bit 0 "open for write",
# bit 2 "open for SWMR write" (bit 1 was used by 1.8); libhdf5 clears all three (0x07).
#
# Only a dead writer's file may be patched: a live writer rewrites the superblock (its end-of-
# file address) at every flush, and a read-modify-write racing it could store a stale one. libhdf5
# drops its own file lock once SWMR writing starts, so the writer holds a shared lock of its own
# for as long as it writes (``_writer_lock``); the kernel releases it when the process ends,
# however it ends. The repair takes the lock exclusively (non-blocking) and patches under it.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_CONSISTENCY_FLAGS = 0x07  # libhdf5's H5F_SUPER_ALL_FLAGS: write access, (1.8's) file ok, SWMR
# The writer's lock: an open-file-description lock (fcntl F_OFD_SETLK, Linux) on one byte far
# past any data. Not flock(2): libhdf5 flocks the file itself, and its SWMR readers keep a shared
# flock (seen with HDF5 2.0), which would look like a writer. Not a POSIX (lockf) lock: those
# vanish when the process closes any descriptor of the file, e.g. a reader of its own capture.
_LOCK_BYTE = 1 << 62


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` (public domain, burtleburtle.net/bob/c/lookup3.c):
    the checksum of HDF5 metadata. Bytes are read little-endian in 12-byte blocks; the last,
    short block is zero-padded (lookup3's fall-through ``switch`` adds nothing for the missing
    bytes); an empty tail returns ``c`` without the final mix, as lookup3 does."""
    m = 0xFFFFFFFF
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & m
    i = 0
    while n - i > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & m
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & m
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & m
        a = ((a - c) & m) ^ _rot(c, 4)
        c = (c + b) & m
        b = ((b - a) & m) ^ _rot(a, 6)
        a = (a + c) & m
        c = ((c - b) & m) ^ _rot(b, 8)
        b = (b + a) & m
        a = ((a - c) & m) ^ _rot(c, 16)
        c = (c + b) & m
        b = ((b - a) & m) ^ _rot(a, 19)
        a = (a + c) & m
        c = ((c - b) & m) ^ _rot(b, 4)
        b = (b + a) & m
        i += 12
    if n == i:
        return c
    tail = bytes(data[i:]) + bytes(12 - (n - i))
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    c = ((c ^ b) - _rot(b, 14)) & m
    a = ((a ^ c) - _rot(c, 11)) & m
    b = ((b ^ a) - _rot(a, 25)) & m
    c = ((c ^ b) - _rot(b, 16)) & m
    a = ((a ^ c) - _rot(c, 4)) & m
    b = ((b ^ a) - _rot(a, 14)) & m
    c = ((c ^ b) - _rot(b, 24)) & m
    return c


@dataclass
class _Superblock:
    offset: int  # where the superblock starts (0, or past a user block: 512, 1024, ...)
    version: int
    body: bytes  # every byte the checksum covers (v2/v3); empty for v0/v1
    checksum: int

    @property
    def flags(self) -> int:
        return self.body[11] if self.body else 0


def _read_superblock(fd: int, path: str | Path) -> _Superblock:
    """The superblock, searched where the specification allows it (0, 512, 1024, 2048 ...);
    OSError naming the file when there is none or its checksum is wrong."""
    size = os.fstat(fd).st_size
    offset = 0
    while offset + 8 <= size:
        if os.pread(fd, 8, offset) == _HDF5_SIGNATURE:
            break
        offset = 512 if offset == 0 else offset * 2
    else:
        raise OSError(f"{path}: not an HDF5 file (no HDF5 signature)")
    head = os.pread(fd, 12, offset)
    version = head[8] if len(head) > 8 else -1
    if version in (0, 1):  # no consistency flags to clear (written without SWMR)
        return _Superblock(offset, version, b"", 0)
    if version not in (2, 3) or len(head) < 12 or head[9] not in (2, 4, 8):
        raise OSError(f"{path}: HDF5 superblock version {version} is not one this tool knows")
    n = 12 + 4 * head[9]
    raw = os.pread(fd, n + 4, offset)
    if len(raw) < n + 4:
        raise OSError(f"{path}: HDF5 superblock is cut short (the file is truncated)")
    body, stored = raw[:n], int.from_bytes(raw[n:], "little")
    if lookup3(body) != stored:
        raise OSError(f"{path}: HDF5 superblock checksum does not match (the file is damaged)")
    return _Superblock(offset, version, body, stored)


def _ofd_lock(fd: int, kind: int, cmd_name: str = "F_OFD_SETLK") -> int:
    """Apply (F_OFD_SETLK) or test (F_OFD_GETLK) an open-file-description lock of ``kind`` on
    ``_LOCK_BYTE``; returns the l_type the kernel hands back (F_UNLCK from a test: no conflict).
    OSError where OFD locks do not exist (not Linux 3.15+)."""
    import fcntl
    import struct

    cmd = getattr(fcntl, cmd_name, None)
    if cmd is None:
        raise OSError(0, "no open-file-description locks on this system")
    # struct flock (Linux, 64-bit off_t): l_type, l_whence, l_start, l_len, l_pid (0 for OFD)
    arg = struct.pack("hhqqi4x", kind, os.SEEK_SET, _LOCK_BYTE, 1, 0)
    return struct.unpack("hhqqi4x", fcntl.fcntl(fd, cmd, arg))[0]


def _writer_lock(path: Path) -> int:
    """Hold a shared lock on ``path`` while a writer streams into it: the sign, for
    ``repair_capture`` and ``hil inspect``, that the writer is alive. -1 where such locks are
    not supported (the repair then refuses, as it cannot tell)."""
    try:
        import fcntl

        # closed in exec'd children (PEP 446); a child forked without exec shares the lock, and
        # the file counts as written until that child ends too
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return -1
    try:
        _ofd_lock(fd, fcntl.F_RDLCK)
    except OSError:
        os.close(fd)
        return -1
    return fd


def _writer_alive(fd: int, *, take: bool) -> bool | None:
    """Whether a running writer holds the file's lock (None: this file system cannot tell).
    With ``take`` the lock is taken exclusively (``fd`` open for writing) and kept until ``fd``
    is closed, so that no writer can hold it meanwhile."""
    import errno

    try:
        import fcntl
    except ImportError:  # not POSIX: no such locks
        return None
    try:
        if take:
            _ofd_lock(fd, fcntl.F_WRLCK)
            return False
        return _ofd_lock(fd, fcntl.F_WRLCK, "F_OFD_GETLK") != fcntl.F_UNLCK
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        return None


def writer_state(path: str | Path) -> str:
    """How the file's last writer left it: "closed" (consistency flags clear: any HDF5 reader
    opens it), "running" (a capture is writing it now), "died" (flags left set by a writer that
    is gone: ``repair_capture`` lets other tools open it) or "unknown" (flags set, and no file
    locks here to tell). OSError for a non-HDF5 file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if not _read_superblock(fd, path).flags & _CONSISTENCY_FLAGS:
            return "closed"
        alive = _writer_alive(fd, take=False)
        return "unknown" if alive is None else "running" if alive else "died"
    finally:
        os.close(fd)


def repair_capture(path: str | Path) -> list[str]:
    """Let any HDF5 reader open a capture whose writer was killed: plain h5py, PyTables and
    phconvert (whose validator then accepts it), HDFView, h5ls. Returns what was done, one
    phrase each; empty when there was nothing to do (a file closed normally is not touched).

    1. The superblock: the consistency flags cleared and, as ``h5clear -s --increment=0`` does,
       its end-of-file address raised to the file's size when tags were written past it (the
       library writes of step 2 must not land on them); one write, under the writer's lock
       taken exclusively, so a file still being written is refused.
    2. An incomplete capture's summaries, through libhdf5: detector counts (and ids of channels
       outside the layout) and the acquisition duration recomputed from the tags the file holds,
       which the last flush before the kill may not have reached (phconvert checks the counts);
       timestamps, detectors and nanotimes cut to their common length when the kill fell
       between their writes. The tags, events, snapshot and the INCOMPLETE mark are untouched.

    One-line OSError: missing, not HDF5, damaged superblock, still written, no write access.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such capture file")
    try:
        fd = os.open(path, os.O_RDWR)
    except PermissionError:
        raise OSError(
            f"{path}: no write permission (the repair rewrites the file's header)"
        ) from None
    done = []
    try:
        sb = _read_superblock(fd, path)
        if sb.flags & _CONSISTENCY_FLAGS:
            alive = _writer_alive(fd, take=True)  # held until os.close below
            if alive:
                raise OSError(
                    f"{path}: still being written by a running capture (it holds the file's "
                    "lock); wait for it to end, or stop it, then repair"
                )
            if alive is None:
                raise OSError(
                    f"{path}: cannot tell whether a writer is still running (no file locks "
                    "here); copy the file to a local disk and repair the copy"
                )
            body = bytearray(sb.body)
            body[11] &= ~_CONSISTENCY_FLAGS & 0xFF
            o = body[9]  # size of offsets: base, extension, end-of-file, root addresses follow
            base = int.from_bytes(body[12 : 12 + o], "little")
            eof = int.from_bytes(body[12 + 2 * o : 12 + 3 * o], "little")
            size = os.fstat(fd).st_size
            if sb.offset == 0 and base == 0 and size > eof:
                body[12 + 2 * o : 12 + 3 * o] = size.to_bytes(o, "little")
            # flags, address and checksum in one write of the whole superblock (48 bytes, one
            # disk sector: no moment where they disagree)
            os.pwrite(fd, bytes(body) + lookup3(bytes(body)).to_bytes(4, "little"), sb.offset)
            os.fsync(fd)
            done.append("consistency flags cleared")
    finally:
        os.close(fd)  # drops the lock: a dead writer does not come back, libhdf5 locks next
    try:
        done += _mend_summaries(path)
    except OSError as exc:  # e.g. another program holds the file open (HDF5's own lock)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OSError(
            f"{path}: {', '.join(done) or 'superblock fine'}, but the detector counts could "
            f"not be updated ({first}); close other programs reading it and run the repair again"
        ) from None
    return done


def _mend_summaries(path: str | Path) -> list[str]:
    """Step 2 of ``repair_capture``: an incomplete capture's summaries brought in line with its
    tags. Looked at read-only first: nothing is written to a complete capture, to a file that is
    not a capture, or when the summaries already agree."""
    need = ("user/qkd/complete", "photon_data/timestamps", "photon_data/detectors",
            "setup/detectors/counts", "setup/detectors/id", "acquisition_duration")  # fmt: skip
    with h5py.File(path, "r") as f:
        if any(k not in f for k in need) or f["user/qkd/complete"][()]:
            return []
        pd = f["photon_data"]
        names = [k for k in ("timestamps", "detectors", "nanotimes") if k in pd]
        lengths = {pd[k].shape[0] for k in names}
        n = min(lengths)
        counts = np.zeros(N_CHANNEL_IDS, dtype=np.int64)
        for i in range(0, n, CHUNK_TAGS):
            chunk = pd["detectors"][i : i + CHUNK_TAGS]
            counts += count_channels(np.ascontiguousarray(chunk, "u1"))
        ts = pd["timestamps"]
        duration = float((int(ts[n - 1]) - int(ts[0])) * 1e-12) if n else 0.0
        d = f["setup/detectors"]
        ids = [int(i) for i in d["id"][:]]
        stale_counts = any(counts[c] and c not in ids for c in range(N_CHANNEL_IDS)) or not (
            np.array_equal(d["counts"][:], counts[ids])
        )
        stale_duration = f["acquisition_duration"][()] != duration
    done = []
    if len(lengths) == 1 and not stale_counts and not stale_duration:
        return done
    with h5py.File(path, "r+", libver=LIBVER) as f:
        pd = f["photon_data"]
        if len(lengths) > 1:
            for k in names:
                pd[k].resize((n,))
            done.append(f"tag arrays cut to their common {n} tags")
        d = f["setup/detectors"]
        if _write_detector_counts(d["id"], d["label"], d["counts"], counts):
            done.append(f"detector counts recomputed from the {n} tags")
        if stale_duration:
            f["acquisition_duration"][()] = duration
            done.append("duration recomputed")
    return done
