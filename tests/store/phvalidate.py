"""Validate files with phconvert's Photon-HDF5 validator, in a process of its own.

phconvert's PTU reader compiles numba functions at import (about 10 s on the CI machine); with
NUMBA_DISABLE_JIT set in this separate process the import takes about a second and the
validator itself, plain PyTables and numpy, is unaffected.

Usage: python phvalidate.py FILE...  (exit 0 if every file is valid; else one line per error)
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path


def validate(paths) -> None:
    """Raise AssertionError naming each file that phconvert rejects."""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), *map(str, paths)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert out.stdout.count("valid ") == len(paths), out.stdout


def main(paths: list[str]) -> int:
    import phconvert
    import tables

    bad = 0
    for p in paths:
        try:
            with tables.open_file(p) as h5, warnings.catch_warnings():
                # only optional fields (author, author_affiliation) warn; errors raise
                warnings.simplefilter("ignore")
                phconvert.hdf5.assert_valid_photon_hdf5(h5)
        except Exception as exc:  # noqa: BLE001 - report every file's reason
            print(f"INVALID {p}: {type(exc).__name__}: {exc}")
            bad += 1
        else:
            print(f"valid {p}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
