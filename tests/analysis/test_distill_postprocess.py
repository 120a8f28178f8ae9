"""Distillation in post-processing on the emulated bench: a capture's key reconciled with the
source over its exchange, verified, amplified and authenticated; the length charged with the
measured leak; an intercept-resend block stops before reconciliation discloses anything."""

from __future__ import annotations

import math

import h5py
import pytest

from hil.analysis.finitekey import finite_key_three_intensity
from hil.bench import Bench
from hil.capture import acquire
from hil.fixtures.procedures import link_up
from hil.postprocess import DistilOptions, KeyParameters, analyse_capture

DURATION_S = 1.0


@pytest.fixture(scope="module")
def distil_bench():
    with Bench.open("emulated", measure_latency=False) as bench:
        src = bench.source
        src.intensities = (0.6, 0.2, 2e-4)
        src.probabilities = (0.7, 0.2, 0.1)
        src.z_probability = 0.6
        yield bench


def _capture(bench, path, eve=0.0, duration_s=DURATION_S):
    bench.control.eavesdropper(eve)
    link_up(bench, 10.0)
    return acquire(bench, path, duration_s, progress=False)


def test_the_capture_key_is_distilled_and_charged_with_what_was_disclosed(distil_bench, tmp_path):
    bench = distil_bench
    cap = _capture(bench, tmp_path / "k.h5", duration_s=2.0)
    keys = []
    kp = KeyParameters(eps_sec=1e-10, eps_cor=1e-12, f_ec=1.16)
    # the bench file's pre-shared pool (a file beside it), loaded into the emulated source
    (tmp_path / "pool.bin").write_bytes(bytes(range(256)) * 8)
    bench.spec.auth_key_file = str(tmp_path / "pool.bin")
    try:
        opts = DistilOptions.for_bench(bench, key_sink=keys.append)
    finally:
        bench.spec.auth_key_file = None
    assert opts.pool.available_bits == 8 * (2048 - 8)
    a = analyse_capture(cap.path, bench.source, key_params=kp, distil=opts)
    d = a.distilled
    assert d["auth_pool_bits_left"] == 8 * (2048 - 8)  # 128 bits used, 128 replenished
    assert d["outcome"] == "key" and d["verified"] and d["authenticated"], d
    assert d["bits_in"] > 10_000 and 1.0 < d["efficiency"] < 1.16
    assert d["key_bits"] > 0 and len(keys) == 1 and 8 * len(keys[0]) == d["key_bits"]
    # the length is the bound's with the measured leak, the verification tag beyond
    # log2(2/eps_cor) and the authentication key: recomputed here from the reported counts
    c = a.total.counts
    n_z = c.n[0] - c.d[0]
    assert d["bits_left_out"] == n_z.sum() - d["n_bits"] >= 0  # multi-click pulses
    lam = d["leak_ec_bits"] + max(0, d["verification_bits"] - math.log2(2 / 1e-12)) + 128
    want = finite_key_three_intensity(
        n_z, c.n_x, c.m_x, c.qber_z, (0.6, 0.2, 2e-4), (0.7, 0.2, 0.1),
        eps_sec=1e-10, eps_cor=1e-12, lambda_ec=lam,
    ).key_length - d["bits_left_out"]  # fmt: skip
    assert d["key_bits"] + d["replenished_bits"] == want - want % 8
    # measured f below the assumed 1.16: the distilled key is longer than the assumed-f bound
    # by about (1.16 - f) n h(Q) less the extra charges (the frame leaves multi-clicks out)
    assert d["bound_key_bits_assumed_f"] > 0
    assert a.distilled_key_rate > 0
    # files hold lengths, counts and a fingerprint: no key byte
    with h5py.File(cap.path) as f:
        stored = f["/user/qkd/results/key_analysis"][()] if "/user/qkd/results" in f else b""
    assert keys[0].hex() not in str(stored) and d["fingerprint"] in str(stored)


def test_an_intercept_resend_block_stops_before_reconciliation(distil_bench, tmp_path):
    bench = distil_bench
    cap = _capture(bench, tmp_path / "eve.h5", eve=1.0)
    try:
        a = analyse_capture(cap.path, bench.source, distil=DistilOptions())
    finally:
        bench.control.eavesdropper(0.0)
    d = a.distilled
    assert d["outcome"].startswith("aborted before reconciliation") and d["key_bits"] == 0
    assert "leak_ec_bits" not in d  # no parity was asked
    assert a.total.qber_z > 0.2
