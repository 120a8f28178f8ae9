"""Capture files pass phconvert's Photon-HDF5 validation, list with h5ls, and carry the bench
snapshot as readable datasets."""

from __future__ import annotations

import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest
from phvalidate import validate

from hil.store import CaptureWriter, open_capture

SNAPSHOT = {
    "bench_name": "emulated",
    "bench_file": "fixtures/benches/emulated.yaml",
    "bench_file_text": "name: emulated\ninstruments: {}\n",
    "criteria_file": "testplans/pilot/criteria.yaml",
    "criteria_file_text": "criteria: []\n",
    "qkd_hil_version": "0.1.0",
    "git_revision": "0123456789abcdef",
    "control_plane_latency_s": {"source": 1.5e-4},
    "instruments": {
        "source": {
            "idn": "qkd-hil,QKD-TX-EMU,EMU0002,1.0",
            "resource": "TCPIP::127.0.0.1::5025::SOCKET",
            "settings": {"clock_hz": 1e9, "intensities": [0.5, 0.1, 2e-4], "output_enabled": True},
        },
        "attenuator": {
            "idn": "Keysight Technologies,N7764A-EMU,EMU0001,1.0",
            "settings": {"attenuation_db": 10.0, "wavelength_m": 1.55e-6},
        },
        "tagger": {"idn": "qkd-hil,TAGGER-EMU", "settings": {"inputs": {"0": {"enabled": True}}}},
        "switch": {"idn": "OSW", "broken": "no answer"},
    },
}


def write_capture(path, n_chunks=4, chunk=50_000, seed=1, **kw) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    all_ts, all_ch = [], []
    t = 0
    with CaptureWriter(path, snapshot=SNAPSHOT, **kw) as w:
        for _ in range(n_chunks):
            ts = t + np.cumsum(rng.integers(1, 20_000, chunk))
            ch = rng.choice(np.array([0, 1, 2, 3, 4], "u1"), chunk)
            ch[::997] = 8
            w.append(ts, ch)
            all_ts.append(ts)
            all_ch.append(ch)
            t = int(ts[-1])
        w.add_event(int(all_ts[1][0]), "action", "fiber cut")
        w.set_result("count_rate_hz", {"H": 1.0})
    return np.concatenate(all_ts), np.concatenate(all_ch)


def test_captures_pass_photon_hdf5_validation(tmp_path):
    paths = []
    for compression in ("none", "shuffle+gzip-1"):
        paths.append(tmp_path / f"cap-{compression}.h5")
        write_capture(paths[-1], compression=compression)
    paths.append(tmp_path / "empty.h5")  # a capture that saw no tag is still a valid file
    CaptureWriter(paths[-1], snapshot=SNAPSHOT).close()
    validate(paths)


@pytest.mark.parametrize("compression", ["none", "shuffle+gzip-1"])
def test_core_fields(tmp_path, compression):
    path = tmp_path / "cap.h5"
    ts, ch = write_capture(path, compression=compression)
    with h5py.File(path, "r") as f:
        assert f["photon_data/timestamps"].dtype == np.dtype("<i8")
        assert f["photon_data/detectors"].dtype == np.dtype("u1")
        assert f["photon_data/timestamps_specs/timestamps_unit"][()] == 1e-12
        assert f["photon_data/timestamps"].chunks is not None
        assert f["photon_data/timestamps"].maxshape == (None,)
        np.testing.assert_array_equal(f["photon_data/timestamps"][:], ts)
        np.testing.assert_array_equal(f["photon_data/detectors"][:], ch)
        for group in ("setup", "identity", "provenance", "user/qkd", "user/bench"):
            assert group in f
        assert f["identity/format_version"][()] == b"0.5"
        assert f["setup/laser_repetition_rates"][0] == 1e9
        assert f["setup/excitation_wavelengths"][0] == 1.55e-6
        ids = list(f["setup/detectors/id"][:])
        counts = dict(zip(ids, f["setup/detectors/counts"][:], strict=True))
        for c in (0, 1, 2, 3, 4, 8):
            assert counts[c] == np.count_nonzero(ch == c)


def test_bench_snapshot_is_readable_not_only_json(tmp_path):
    path = tmp_path / "cap.h5"
    write_capture(path)
    with h5py.File(path, "r") as f:
        b = f["user/bench"]
        assert b["bench_file_text"][()].decode() == SNAPSHOT["bench_file_text"]
        assert b["criteria_file_text"][()].decode() == SNAPSHOT["criteria_file_text"]
        assert b["git_revision"][()] == b"0123456789abcdef"
        assert b["qkd_hil_version"][()] == b"0.1.0"
        assert b["host"][()].decode()
        assert b["start_time_utc"][()].decode().endswith("Z")
        assert b["stop_time_utc"][()].decode().endswith("Z")
        src = b["instruments/source"]
        assert src["idn"][()] == b"qkd-hil,QKD-TX-EMU,EMU0002,1.0"
        assert src["settings/clock_hz"][()] == 1e9
        np.testing.assert_array_equal(src["settings/intensities"][:], [0.5, 0.1, 2e-4])
        assert bool(src["settings/output_enabled"][()]) is True
        assert b["instruments/tagger/settings/inputs/0/enabled"][()]
        assert b["instruments/switch/broken"][()] == b"no answer"
    with open_capture(path) as cap:
        assert cap.snapshot() == SNAPSHOT
        info = cap.bench_info()
        assert info["bench_name"] == "emulated"
        assert info["stop_time_utc"] >= info["start_time_utc"]


def test_h5ls_lists_the_file(tmp_path):
    if shutil.which("h5ls") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("h5ls is missing: install the Debian package hdf5-tools in CI")
        pytest.skip("h5ls not installed (apt-get install hdf5-tools); CI=true makes this fail")
    path = tmp_path / "cap.h5"
    write_capture(path)
    out = subprocess.run(["h5ls", "-r", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    for name in (
        "/photon_data/timestamps",
        "/photon_data/detectors",
        "/photon_data/timestamps_specs/timestamps_unit",
        "/setup/num_pixels",
        "/identity/software",
        "/provenance/software",
        "/user/qkd/complete",
        "/user/bench/instruments/source/idn",
    ):
        assert name in out.stdout
    assert "200000/Inf" in out.stdout  # 4 chunks of 50000 tags, extendable
