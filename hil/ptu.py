"""Import PicoQuant PTU files (T2 and T3 time-tag modes) into the capture layout of hil.store.

Records are decoded by the ``ptufile`` package (no decoder of our own), into a disk-backed
memory map, and copied into the capture in bounded pieces, so memory stays bounded for any
file size.

Timestamp mapping (picoseconds, int64):

- T2: ``timestamps_ps = time * round(global_resolution * 1e12)``: ``time`` counts the global
  resolution (1 ps on HydraHarp, 4 ps on PicoHarp), an integer number of picoseconds.
- T3: ``time`` counts sync periods and ``dtime`` TCSPC bins after the sync; the photon's
  arrival is ``timestamps_ps = rint((time * global_resolution + dtime * tcspc_resolution) *
  1e12)``, evaluated in float64: the nearest picosecond to the exact value, give or take a few
  ulps (5e-4 ps at 5 s), so a value at an exact half picosecond may go to either neighbour.
  The raw ``dtime`` is kept in /photon_data/nanotimes with
  ``nanotimes_specs/tcspc_unit = tcspc_resolution``, so the sync index is recoverable as
  ``rint((timestamps_ps * 1e-12 - nanotimes * tcspc_unit) / global_resolution)``.

Channels: ``/photon_data/detectors`` = ptufile's photon channel (0 = first input). Marker
records (external markers, channel < 0 and marker > 0) become events ``ptu_marker`` with the
marker bits as detail; overflow records are dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import hil

from .store import CaptureWriter, Layout, Provenance

PIECE_RECORDS = 1 << 22  # records copied per step (~4 Mi x 16 B of decoded records)


def ptu_timestamps_ps(time: np.ndarray, dtime: np.ndarray | None, ptu) -> np.ndarray:
    """Picosecond timestamps of decoded PTU records (mapping in the module docstring)."""
    if dtime is None:
        unit_ps = round(ptu.global_resolution * 1e12)
        if abs(unit_ps - ptu.global_resolution * 1e12) > 1e-6:
            raise ValueError(f"T2 global resolution {ptu.global_resolution} s is not whole ps")
        return time.astype(np.int64) * np.int64(unit_ps)
    t_s = time.astype(np.float64) * ptu.global_resolution + dtime * ptu.tcspc_resolution
    return np.rint(t_s * 1e12).astype(np.int64)


def import_ptu(
    src: str | Path, dst: str | Path | None = None, *, compression="shuffle+gzip-1"
) -> Path:
    """Convert ``src`` (.ptu, T2 or T3) into a capture file ``dst`` (default: beside it, .h5)."""
    import ptufile

    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_suffix(".h5")
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such PTU file")
    with ptufile.PtuFile(src) as ptu:
        if ptu.tags.get("Measurement_Mode") not in (2, 3):
            raise ValueError(f"{src}: PTU measurement is not T2 or T3 time-tag data")
        t3 = ptu.is_t3
        sync_hz = float(ptu.tags.get("TTResult_SyncRate") or 0) or None
        channels = tuple(int(c) for c in range(ptu.number_channels_max))
        active = tuple(int(c) for c in ptu.active_channels) or channels
        layout = Layout(
            detector_ids=active,
            detector_labels=tuple(f"channel {c}" for c in active),
            polarization_ch=(),
            num_pixels=len(active),
            repetition_rate_hz=sync_hz if t3 else None,
            tcspc_unit_s=float(ptu.tcspc_resolution) if t3 else None,
            tcspc_num_bins=int(ptu.number_bins_max) if t3 else None,
        )
        created = ptu.datetime.strftime("%Y-%m-%dT%H:%M:%S") if ptu.datetime else None
        prov = Provenance(
            software=str(ptu.tags.get("CreatorSW_Name", "PicoQuant")),
            software_version=str(ptu.tags.get("CreatorSW_Version", "")),
            filename=src.name,
            filename_full=str(src.resolve()),
            creation_time=created,
            modification_time=None,
        )
        snapshot = {
            "source": "ptu import",
            "qkd_hil_version": hil.__version__,
            "ptu_file": str(src),
            "ptu_record_type": str(ptu.record_type),
            "ptu_tags": {k: v for k, v in ptu.tags.items() if isinstance(v, int | float | str)},
        }
        desc = f"PicoQuant {'T3' if t3 else 'T2'} file {src.name} converted by qkd-hil"
        records = ptu.read_records(memmap=True)
        decoded = ptu.decode_records(records, out="memmap")  # disk-backed, not RAM
        writer = CaptureWriter(
            dst,
            description=desc,
            snapshot=snapshot,
            compression=compression,
            layout=layout,
            provenance=prov,
        )
        ok, duration = False, None
        try:
            for i in range(0, len(decoded), PIECE_RECORDS):
                piece = decoded[i : i + PIECE_RECORDS]
                ch = np.asarray(piece["channel"])
                photon = ch >= 0
                time = np.asarray(piece["time"])
                dtime = np.asarray(piece["dtime"]) if t3 else None
                ts = ptu_timestamps_ps(time, dtime, ptu)
                marks = np.flatnonzero(~photon & (np.asarray(piece["marker"]) > 0))
                for k in marks:
                    writer.add_event(int(ts[k]), "ptu_marker", str(int(piece["marker"][k])))
                writer.append(
                    ts[photon],
                    ch[photon].astype(np.uint8),
                    dtime[photon].astype(np.uint16) if t3 else None,
                )
            duration = float(ptu.acquisition_time)
            ok = True
        finally:
            writer.close(complete=ok, duration_s=duration if ok else None)
    return dst
