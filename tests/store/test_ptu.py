"""PTU import: tag counts from the issue, timestamps equal to ptufile's own decode mapped to
picoseconds (exact rational arithmetic as the reference), Photon-HDF5 validity, CLI."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from fractions import Fraction
from pathlib import Path

import numpy as np
import ptufile
import pytest
from phvalidate import validate

from hil.cli import main as hil_main
from hil.ptu import import_ptu
from hil.store import open_capture

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "picoquant-sample-data"
FILES = [
    "picoharp/v30_t2.ptu",
    "hydraharp/v20_t2.ptu",
    "hydraharp/v10_t3.ptu",
    "hydraharp/v20_t3.ptu",
]
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"sample data not found at {DATA}")


def exact_ps(time: int, dtime: int | None, ptu) -> Fraction:
    """One record's time in ps by exact rational arithmetic on the file's resolutions."""
    t = Fraction(int(time)) * Fraction(ptu.global_resolution)
    if dtime is not None:
        t += Fraction(int(dtime)) * Fraction(ptu.tcspc_resolution)
    return t * 10**12


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptu")
    return {name: import_ptu(DATA / name, out / name.replace("/", "_")) for name in FILES}


def test_picoharp_t2_counts_from_the_issue(imported):
    with open_capture(imported["picoharp/v30_t2.ptu"]) as cap:
        _, ch = cap.tags()
        assert np.count_nonzero(ch == 0) == 531477
        assert np.count_nonzero(ch == 1) == 388700
        assert cap.n_tags == 531477 + 388700
        assert cap.complete


@pytest.mark.parametrize("name", FILES)
def test_same_tags_as_ptufile(imported, name):
    with ptufile.PtuFile(DATA / name) as ptu:
        rec = ptu.decode_records()
        t3 = ptu.is_t3
        photon = rec["channel"] >= 0
        with open_capture(imported[name]) as cap:
            ts, ch = cap.tags()
            nt = cap.nanotimes()
            assert cap.complete
            assert cap.duration_s == pytest.approx(ptu.acquisition_time)
        np.testing.assert_array_equal(ch, rec["channel"][photon])
        assert np.all(np.diff(ts) >= 0)
        time = rec["time"][photon]
        dtime = rec["dtime"][photon] if t3 else None
        if t3:
            np.testing.assert_array_equal(nt, dtime)
        else:
            assert nt is None
            # T2: whole picoseconds per unit, so the whole array is checked with integers
            unit = Fraction(ptu.global_resolution) * 10**12
            assert abs(unit - round(unit)) < Fraction(1, 10**6)
            np.testing.assert_array_equal(ts, time.astype(np.int64) * round(unit))
        rng = np.random.default_rng(0)
        idx = np.concatenate([[0, len(ts) - 1], rng.integers(0, len(ts), 2000)])
        for i in idx:
            ref = exact_ps(time[i], None if dtime is None else dtime[i], ptu)
            # rounding to the nearest ps is off by at most 1/2; the float64 evaluation adds at
            # most a few ulps (4 * 2**-52 relative); at an exact half either neighbour is right
            assert abs(ts[i] - ref) <= Fraction(1, 2) + 4 * ref / 2**52, (name, i)


def test_imports_pass_photon_hdf5_validation(imported):
    validate(list(imported.values()))


def test_t3_layout(imported):
    import h5py

    with h5py.File(imported["hydraharp/v20_t3.ptu"], "r") as f:
        assert f["setup/lifetime"][()]
        assert f["photon_data/timestamps_specs/timestamps_unit"][()] == 1e-12
        assert f["photon_data/nanotimes_specs/tcspc_unit"][()] == pytest.approx(64e-12, rel=1e-6)
        assert f["photon_data/measurement_specs/laser_repetition_rate"][()] == 4999960
        assert f["provenance/filename"][()] == b"v20_t3.ptu"


def test_cli_import_and_inspect(tmp_path):
    out = tmp_path / "ph.h5"
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert hil_main(["import", str(DATA / "picoharp/v30_t2.ptu"), "-o", str(out)]) == 0
        assert hil_main(["inspect", str(out)]) == 0
    text = buf.getvalue()
    assert f"{out}: complete" in text
    assert "531477 tags" in text and "388700 tags" in text
    assert "converted from v30_t2.ptu" in text


def test_cli_import_errors(tmp_path, capsys):
    assert hil_main(["import", str(tmp_path / "none.ptu")]) == 2
    assert "no such PTU file" in capsys.readouterr().err
    assert hil_main(["import", str(tmp_path / "x.h5")]) == 2
    assert "expected a PicoQuant .ptu file" in capsys.readouterr().err
