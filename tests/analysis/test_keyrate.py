"""Tests of the asymptotic GLLP decoy-state bounds against published figures (Ma et al. 2005)."""

import math

import numpy as np
import pytest

from hil.analysis import keyrate as kr
from hil.analysis import planning as pl

# GYS parameter set as used by Ma, Qi, Zhao, Lo, PRA 72 012326 (2005) (and Lo, Ma, Chen 2005):
# alpha = 0.21 dB/km, e_det = 3.3 %, Y0 = 1.7e-6, eta_Bob = 4.5 %, f = 1.22, q = 1/2.
GYS = dict(y0=1.7e-6, e_det=0.033)
MU_GRID = np.linspace(0.02, 1.0, 99)


def infinite_decoy_rate(distance_km, mus=MU_GRID):
    """GLLP rate with exact Y_1, e_1 (infinite decoys), maximised over mu on a grid."""
    eta = pl.gys_eta(distance_km)
    q, e = pl.gys_gain_qber(mus, eta, **GYS)
    y1, e1 = pl.gys_single_photon(eta, **GYS)
    rates = kr.gllp_rate(q, e, y1 * mus * np.exp(-mus), e1, f_ec=1.22, q=0.5)
    j = int(np.argmax(rates))
    return float(rates[j]), float(mus[j])


def vacuum_weak_rate(distance_km, nu=0.1):
    """Vacuum + weak decoy rate from the expected gains/QBERs, maximised over mu."""
    eta = pl.gys_eta(distance_km)
    q_nu, e_nu = pl.gys_gain_qber(nu, eta, **GYS)
    y0, _ = pl.gys_gain_qber(0.0, eta, **GYS)  # the vacuum decoy measures Q_0 = Y_0
    best = 0.0
    for mu in MU_GRID[MU_GRID > nu]:
        q, e = pl.gys_gain_qber(mu, eta, **GYS)
        est = kr.vacuum_weak_decoy_estimate(mu, nu, q, e, q_nu, e_nu, y0, f_ec=1.22, q=0.5)
        best = max(best, est.rate_per_pulse)
    return best


def test_binary_entropy_edges_and_symmetry():
    assert kr.binary_entropy(0.0) == 0.0
    assert kr.binary_entropy(1.0) == 0.0
    assert kr.binary_entropy(0.5) == pytest.approx(1.0, abs=1e-15)
    x = np.array([1e-300, 1e-12, 0.1, 0.3, 1 - 1e-12])
    h = kr.binary_entropy(x)
    assert np.all(np.isfinite(h)) and np.all(h >= 0)
    assert kr.binary_entropy(0.1) == pytest.approx(kr.binary_entropy(0.9), rel=1e-12)
    # -x log2 x - (1-x) log2(1-x) at x = 0.11, by hand: 0.49992...
    assert kr.binary_entropy(0.11) == pytest.approx(
        -0.11 * math.log2(0.11) - 0.89 * math.log2(0.89), rel=1e-12
    )
    # rounding just outside [0, 1] gives 0, not NaN
    assert kr.binary_entropy(-1e-17) == 0.0 and kr.binary_entropy(1 + 1e-16) == 0.0


def test_entropy_of_upper_bound_saturates_above_half():
    # an error-rate upper bound of 0.7 proves nothing: charge a full bit, never h(0.3)
    assert kr.entropy_of_upper_bound(0.7) == 1.0
    assert kr.entropy_of_upper_bound(0.2) == pytest.approx(kr.binary_entropy(0.2))


@pytest.mark.parametrize(
    "f_ec, published",
    # QBER where 1 - h(e) - f h(e) = 0 for one-way BB84, as quoted in Ma05 (and the reference
    # file): 11.0 % (f = 1), 10.2 % (1.1), 9.8 % (1.16), 9.4 % (1.22); published to 0.1 %.
    [(1.0, 0.110), (1.1, 0.102), (1.16, 0.098), (1.22, 0.094)],
)
def test_qber_threshold_matches_published(f_ec, published):
    e = kr.qber_threshold(f_ec)
    assert abs(e - published) <= 0.0005  # half a unit of the published last digit
    # with single photons (Q_1 = Q, e_1 = E) the GLLP rate changes sign there
    assert kr.gllp_rate(1.0, e - 1e-4, 1.0, e - 1e-4, f_ec, 1.0) > 0
    assert kr.gllp_rate(1.0, e + 1e-4, 1.0, e + 1e-4, f_ec, 1.0) < 0


def test_no_key_above_11_percent_with_f_1():
    for e in (0.111, 0.12, 0.25):
        assert kr.gllp_rate(1.0, e, 1.0, e, 1.0, 1.0) < 0


def test_gys_infinite_decoy_rate_at_50_km():
    # Ma05 / Lo-Ma-Chen 2005 with GYS: about 2.2e-4 per pulse at 50 km, optimal mu about 0.5.
    rate, mu = infinite_decoy_rate(50.0)
    assert rate == pytest.approx(2.2e-4, rel=0.05)
    assert 0.4 < mu < 0.6


def test_gys_infinite_decoy_max_distance():
    # Ma05 Fig. (GYS): the infinite-decoy key rate vanishes at about 142 km.
    d = pl.max_distance_km(lambda km: infinite_decoy_rate(km)[0], 0.0, 300.0, 0.05)
    assert abs(d - 142.0) <= 2.0


def test_gys_vacuum_weak_decoy_max_distance():
    # Ma05: vacuum + weak decoy with nu = 0.1 reaches about 140 km (GYS).
    d = pl.max_distance_km(vacuum_weak_rate, 100.0, 200.0, 0.1)
    assert abs(d - 140.0) <= 2.0
    # and never beyond the infinite-decoy limit
    assert d <= pl.max_distance_km(lambda km: infinite_decoy_rate(km)[0], 0.0, 300.0, 0.05)


@pytest.mark.parametrize("distance_km", [0.0, 50.0, 100.0, 130.0])
def test_decoy_bounds_are_safe_on_the_channel_model(distance_km):
    # The estimates must bracket the true single-photon values of the channel (Ma05 Sec. II):
    # Y1_L <= Y_1 and e1_U >= e_1; otherwise the rate would be overstated.
    eta = pl.gys_eta(distance_km)
    y1, e1 = pl.gys_single_photon(eta, **GYS)
    mu, nu1, nu2 = 0.5, 0.1, 0.02
    q, e = pl.gys_gain_qber(mu, eta, **GYS)
    q1, e1m = pl.gys_gain_qber(nu1, eta, **GYS)
    q2, e2m = pl.gys_gain_qber(nu2, eta, **GYS)
    q0, _ = pl.gys_gain_qber(0.0, eta, **GYS)
    vw = kr.vacuum_weak_decoy_estimate(mu, nu1, q, e, q1, e1m, q0)
    td = kr.two_decoy_estimate(mu, nu1, nu2, q, e, q1, e1m, q2, e2m)
    for est in (vw, td):
        assert 0 < est.y1_l <= y1
        assert est.e1_u >= e1
        assert est.y0_l <= GYS["y0"] * (1 + 1e-12)


def test_vacuum_weak_bound_tight_for_small_nu():
    # Ma05: Eq. (34) tends to the true Y_1 as nu -> 0 (the gap is O(nu)).
    eta = pl.gys_eta(50.0)
    y1, e1 = pl.gys_single_photon(eta, **GYS)
    nu = 1e-4
    q, e = pl.gys_gain_qber(0.5, eta, **GYS)
    qn, en = pl.gys_gain_qber(nu, eta, **GYS)
    est = kr.vacuum_weak_decoy_estimate(0.5, nu, q, e, qn, en, GYS["y0"])
    assert est.y1_l == pytest.approx(y1, rel=1e-3)
    assert est.e1_u == pytest.approx(e1, rel=1e-3)


def test_two_decoy_with_vacuum_second_decoy_equals_eqs_34_37():
    # With nu2 = 0 the general bounds reduce algebraically to Ma05 Eqs. (34) and (37).
    eta = pl.gys_eta(80.0)
    q, e = pl.gys_gain_qber(0.48, eta, **GYS)
    qn, en = pl.gys_gain_qber(0.12, eta, **GYS)
    q0, e0 = pl.gys_gain_qber(0.0, eta, **GYS)
    a = kr.vacuum_weak_decoy_estimate(0.48, 0.12, q, e, qn, en, q0)
    b = kr.two_decoy_estimate(0.48, 0.12, 0.0, q, e, qn, en, q0, e0)
    assert b.y0_l == pytest.approx(a.y0_l, rel=1e-12)
    assert b.y1_l == pytest.approx(a.y1_l, rel=1e-12)
    assert b.e1_u == pytest.approx(a.e1_u, rel=1e-12)


def test_truncated_eq34_would_overestimate_y1():
    # Dropping the Q_mu and Y_0 terms of Eq. (34) gives more than the true Y_1 (unsafe);
    # the implemented full form stays below it.
    eta = pl.gys_eta(100.0)
    y1, _ = pl.gys_single_photon(eta, **GYS)
    mu, nu = 0.5, 0.1
    qn, _ = pl.gys_gain_qber(nu, eta, **GYS)
    q, e = pl.gys_gain_qber(mu, eta, **GYS)
    truncated = mu / (mu * nu - nu**2) * qn * math.exp(nu)
    assert truncated > y1
    assert kr.vacuum_weak_decoy_estimate(mu, nu, q, e, qn, 0.03, GYS["y0"]).y1_l < y1


def test_estimates_from_measured_counts_and_abort():
    # Measured data: gains are detections / pulses sent per intensity; at 250 km the decoy
    # bound cannot prove a key and says why.
    eta = pl.gys_eta(250.0)
    n_sent = np.array([1e11, 1e10, 1e10])
    q, e = pl.gys_gain_qber(np.array([0.5, 0.1, 0.0]), eta, **GYS)
    detections = np.round(q * n_sent)
    gains = detections / n_sent
    est = kr.vacuum_weak_decoy_estimate(0.5, 0.1, gains[0], e[0], gains[1], e[1], gains[2])
    assert est.rate_per_pulse == 0.0
    assert est.abort_reason
    assert set(est.as_dict()) >= {"y0_l", "y1_l", "e1_u", "q1_l", "rate_per_pulse"}


def test_invalid_intensities_raise():
    with pytest.raises(ValueError, match="nu"):
        kr.vacuum_weak_decoy_estimate(0.1, 0.5, 1e-3, 0.03, 1e-3, 0.03, 1e-6)
    with pytest.raises(ValueError, match="mu > nu1 \\+ nu2"):
        kr.two_decoy_estimate(0.2, 0.15, 0.1, 1e-3, 0.03, 1e-3, 0.03, 1e-3, 0.03)
