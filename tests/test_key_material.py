"""No key material in what a run leaves, and no widening of a disclosure (issue 14, item 9).

A pilot run (the key-rate tests, in a pytest subprocess) is made against an emulator served in
this process through a lab-style bench file. Every integer the run leaves — HDF5 attributes and
datasets of the captures (the /user/bench snapshot included), summary.json/html, every other
file of the run folder, the bench file, pytest's output — is then tried as the source's pattern
seed in the emulator's own generator, and the Z-basis bits it regenerates are compared with the
bits the source discloses for those pulses: agreement must stay at chance for every candidate.
The positive control, the true seed (known in this process only), agrees on every bit.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from numba import njit

from hil.emulator import _physics_kernels as _k
from hil.emulator.physics import LinkParams, pulse_choices
from hil.emulator.server import Emulator
from hil.instruments.base import InstrumentError
from hil.instruments.source import QKDSource

REPO = Path(__file__).resolve().parents[1]
CHANNEL_SEED = 424242  # the bench's emulator seed: it keys the channel, never the pattern
N_PULSES = 1_000_000  # pulses asked about: ~60 000 disclosed Z bits at p_Z 0.6, fraction 0.1
SCREEN_BITS = 64  # first pass over every candidate on this many disclosed bits
SIGMAS = 5.0
ROLES = ("source", "attenuator", "switch", "detectors", "tagger", "powermeter")
_INT = re.compile(rb"(?<![0-9A-Za-z.])[0-9]{1,40}(?![0-9])")
_HEX = re.compile(rb"(?<![0-9A-Za-z])[0-9a-fA-F]{8,32}(?![0-9A-Za-z])")


@njit(cache=False, nogil=True)
def _screen(seeds, idx, bits, c0, c1, p_z):
    """Agreements of the bits each candidate seed gives pulses ``idx`` with ``bits``, through
    the emulator's own kernel functions (stream key, counter mix, source choice)."""
    cms = np.empty(idx.shape[0], np.uint64)
    for j in range(idx.shape[0]):
        cms[j] = _k.counter_mix(idx[j])
    out = np.empty(seeds.shape[0], np.int64)
    for s in range(seeds.shape[0]):
        key = _k.stream_key(seeds[s], _k.STREAM_SOURCE)
        agree = 0
        for j in range(idx.shape[0]):
            _, _, bit = _k.source_choice(_k.keyed(key, cms[j]), c0, c1, p_z)
            agree += bit == bits[j]
        out[s] = agree
    return out


def _bench_file(path: Path, emu: Emulator) -> Path:
    """A lab bench file naming the emulator's resources (no control role: a lab has none)."""
    lines = ["name: lab-under-test", "description: key-material audit", "instruments:"]
    for role in ROLES:
        lines += [f"  {role}:", f"    resource: '{emu.resources[role]}'"]
        if role == "tagger":
            lines.append("    timeout_s: 20")
    path.write_text("\n".join(lines) + "\n")
    return path


def _ints_from_bytes(data: bytes) -> np.ndarray:
    """Decimal and hexadecimal integers written in ``data`` (text or not)."""
    found = [int(m) for m in _INT.findall(data)] + [int(m, 16) for m in _HEX.findall(data)]
    return _seed_range(np.array([v for v in found if v < 2**64], dtype=np.uint64))


def _seed_range(a: np.ndarray) -> np.ndarray:
    """The values of integer array ``a`` (negative ones by magnitude) that can be a pattern
    seed (0 .. 2**63 - 1), as uint64. Not deduplicated: screening a repeat costs less than
    sorting millions of timestamps."""
    a = a.ravel()
    if a.dtype.kind == "i":
        a = np.abs(a.astype(np.int64)).view(np.uint64)  # -2**63 stays out of range
    a = a.astype(np.uint64)
    return a[a < np.uint64(2**63)]


def _ints_from_array(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return _seed_range(a)
    if a.dtype.kind == "f":
        v = a.ravel()
        v = v[np.isfinite(v) & (np.abs(v) < 2.0**63)]
        return _seed_range(np.trunc(v).astype(np.int64))
    if a.dtype.kind in "SOU":
        parts = [
            _ints_from_bytes(x if isinstance(x, bytes) else str(x).encode()) for x in a.ravel()
        ]
        return np.concatenate([np.empty(0, np.uint64), *parts])
    if a.dtype.names:
        return np.concatenate(
            [np.empty(0, np.uint64), *(_ints_from_array(a[n]) for n in a.dtype.names)]
        )
    return np.empty(0, np.uint64)  # booleans, opaque data


def _ints_from_h5(path: Path) -> tuple[list[np.ndarray], int]:
    """Every integer in the attributes and datasets of an HDF5 file, and its object count."""
    found: list[np.ndarray] = []
    with h5py.File(path, "r", locking=False) as f:
        items = [f]
        f.visititems(lambda name, obj: items.append(obj))
        for obj in items:
            for value in obj.attrs.values():
                if isinstance(value, bytes | str):
                    found.append(
                        _ints_from_bytes(value if isinstance(value, bytes) else value.encode())
                    )
                else:
                    found.append(_ints_from_array(np.asarray(value)))
            if isinstance(obj, h5py.Dataset):
                found.append(_ints_from_array(obj[()]))
    return found, len(items)


@pytest.fixture(scope="module")
def pilot_run(tmp_path_factory):
    """The pilot's key-rate tests run against an emulator of this process; yields the emulator
    (still serving), the run folder, the bench file and pytest's output."""
    tmp = tmp_path_factory.mktemp("keymat")
    emu = Emulator(LinkParams(seed=CHANNEL_SEED))  # the pattern seed: drawn from os.urandom
    emu.start()
    try:
        bench = _bench_file(tmp / "lab.yaml", emu)
        results = tmp / "results"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "testplans/pilot",
                "-k",
                "key_rate and not against",
                "--bench",
                str(bench),
                "--results",
                str(results),
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            cwd=REPO,
            capture_output=True,
            timeout=600,
        )
        yield emu, results, bench, proc.stdout + proc.stderr
    finally:
        emu.stop()


def test_nothing_a_run_leaves_regenerates_the_key_bits(pilot_run):
    emu, results, bench, output = pilot_run
    captures = sorted(results.rglob("*.h5"))
    assert captures, f"the run left no capture:\n{output.decode(errors='replace')[-2000:]}"
    assert list(results.rglob("summary.json")) and list(results.rglob("summary.html"))

    parts = [np.array([CHANNEL_SEED], np.uint64), _ints_from_bytes(bench.read_bytes())]
    parts.append(_ints_from_bytes(output))
    h5_objects = 0
    for path in sorted(p for p in results.rglob("*") if p.is_file()):
        if path.suffix == ".h5":
            found, n = _ints_from_h5(path)
            parts += found
            h5_objects += n
        else:  # summary.json/html, manifest, logs: every number written in them
            parts.append(_ints_from_bytes(path.read_bytes()))
    assert h5_objects > 10, "the captures were not read (no /user/bench snapshot?)"
    seeds = np.concatenate(parts)
    assert len(seeds) > 1000  # timestamps, counts, times: the check sees the run's numbers

    # the bits the source discloses, asked as any client would
    src = QKDSource(emu.resources["source"], "source")
    try:
        idx = emu.link.generator.emitted_to - 1 - np.arange(N_PULSES, dtype=np.int64) * 997
        basis, _, bit = src.sift(np.sort(idx))
    finally:
        src.close()
    idx = np.sort(idx)
    z = (basis == 0) & (bit != 255)
    z_idx, z_bit = idx[z], bit[z]
    n = len(z_idx)
    assert n > 40_000
    p_mu, p_z = (0.7, 0.2, 0.1), 0.6  # the bit does not depend on them (own hash field)
    c0, c1 = p_mu[0], p_mu[0] + p_mu[1]

    # first pass: every candidate on SCREEN_BITS bits; beyond 5 sigma of chance, all of them
    agree = _screen(seeds, z_idx[:SCREEN_BITS], z_bit[:SCREEN_BITS], c0, c1, p_z)
    half, sd = SCREEN_BITS / 2, math.sqrt(SCREEN_BITS) / 2
    flagged = seeds[np.abs(agree - half) > SIGMAS * sd]
    sigma = 0.5 / math.sqrt(n)  # binomial: agreement of independent fair bits
    for seed in flagged:
        regen = pulse_choices(int(seed), p_mu, p_z, 0.0, z_idx)[2]
        frac = float(np.mean(regen == z_bit))
        assert abs(frac - 0.5) < SIGMAS * sigma, "a number the run left regenerates key bits"

    # positive control: the true seed (known in this process only) regenerates every bit,
    # through both paths of the check
    true = np.array([emu.link.params.pattern_seed], dtype=np.uint64)
    assert _screen(true, z_idx[:SCREEN_BITS], z_bit[:SCREEN_BITS], c0, c1, p_z)[0] == SCREEN_BITS
    regen = pulse_choices(int(true[0]), p_mu, p_z, 0.0, z_idx)[2]
    assert float(np.mean(regen == z_bit)) == 1.0


@pytest.fixture()
def open_block():
    """An emulator with a known pattern seed (in process), its source emitting (block open)
    and 2 ms of pulses emitted; yields (emulator, source driver, pulse indices)."""
    emu = Emulator(LinkParams(pattern_seed=987654321))
    emu.start()
    src = QKDSource(emu.resources["source"], "source")
    try:
        src.disclose_fraction = 0.1
        src.output_enabled = True
        emu.devices["detectors"].execute(b"COUN:INT 2MS;:COUN:DATA?")
        idx = np.sort(emu.link.generator.emitted_to - 1 - np.arange(200_000) * 7)
        yield emu, src, idx
    finally:
        src.close()
        emu.stop()


def test_a_client_cannot_widen_the_disclosure_of_an_open_block(open_block):
    emu, src, idx = open_block
    p = emu.link.params
    basis, intensity, bit = src.sift(idx)
    # the announced sample: X-basis pulses and the Z pulses the secret selection picked at 0.1
    announced = pulse_choices(p.pattern_seed, p.p_mu, p.p_z, 0.1, idx)[3]
    assert np.array_equal(bit != 255, announced)
    kept_back = (basis == 0) & ~announced
    assert kept_back.sum() > 50_000

    with pytest.raises(InstrumentError, match="-221"):
        src.disclose_fraction = 1.0
    assert src.disclose_fraction == 0.1
    # however often and however it is asked: reversed, one by one, repeated, mixed with pulses
    # not emitted yet; after the block closed and reopened at fraction 1; after the basis
    # probability went to 0 (every pulse X)
    ways = [idx[::-1], np.repeat(idx[:2000], 3), np.concatenate([idx, idx + 10**12])]
    answers = [src.sift(w)[2][: len(idx) if len(w) > len(idx) else None] for w in ways]
    answers += [np.concatenate([src.sift(idx[i : i + 1])[2] for i in range(200)])]
    src.output_enabled = False
    src.disclose_fraction = 1.0  # allowed: no block open, the next block's fraction
    src.z_probability = 0.0
    src.output_enabled = True
    answers.append(src.sift(idx)[2])
    for got, sel in zip(
        answers,
        [idx[::-1], np.repeat(idx[:2000], 3), idx, idx[:200], idx],
        strict=True,
    ):
        pos = np.searchsorted(idx, sel)
        assert (got[kept_back[pos]] == 255).all(), "a kept-back Z bit was disclosed"
        assert np.array_equal(got, bit[pos])
