"""Tests of the finite-key bounds (Lim et al. 2014; Rusca et al. 2018)."""

import math

import numpy as np
import pytest

from hil.analysis import finitekey as fk
from hil.analysis import planning as pl

# Simulation model of Lim et al., PRA 89 022307 (2014), Sec. IV (see planning.py for the
# eta_sys reading of the misalignment term).
LIM = dict(
    eta_bob=0.1, p_dc=6e-7, p_ap=4e-2, e_mis=5e-3, alpha_db_per_km=0.2, f_ec=1.16, eps_cor=1e-15
)
LINK3 = pl.LinkModel(mu=(0.42, 0.22, 2e-4), p_mu=(0.47, 0.4, 0.13), q_z=0.9, **LIM)
LINK1 = pl.LinkModel(mu=(0.37, 0.09), p_mu=(0.77, 0.23), q_z=0.9, **LIM)


def photon_number_truth(link, loss_db, n_pulses):
    """True expected vacuum/single-photon detections and single-photon X errors.

    Derived independently of the bounds: the detector model of Lim14 is the Poisson mixture
    of photon-number yields Y_n = [1 - (1 - 2 p_dc)(1 - eta)^n](1 + p_ap) and errors
    e_n Y_n = p_dc + e_mis [1 - (1 - eta)^n] + p_ap [1 - (1 - 2 p_dc)(1 - eta)^n] / 2.
    """
    eta = link.eta_bob * 10 ** (-loss_db / 10)
    mu, p = np.array(link.mu), np.array(link.p_mu)

    def y(n):
        return (1 - (1 - 2 * link.p_dc) * (1 - eta) ** n) * (1 + link.p_ap)

    def ey(n):
        d = 1 - (1 - 2 * link.p_dc) * (1 - eta) ** n
        return link.p_dc + link.e_mis * (1 - (1 - eta) ** n) + link.p_ap * d / 2

    tau = [np.sum(p * np.exp(-mu) * mu**n) / math.factorial(n) for n in (0, 1)]
    fz, fx = link.q_z**2, (1 - link.q_z) ** 2
    return {
        "s_z0": n_pulses * fz * tau[0] * y(0),
        "s_z1": n_pulses * fz * tau[1] * y(1),
        "s_x1": n_pulses * fx * tau[1] * y(1),
        "v_x1": n_pulses * fx * tau[1] * ey(1),
        "e1": ey(1) / y(1),
        "poisson_check": (y, ey, eta),
    }


def lim_result(link, loss_db, block, **kw):
    c = pl.expected_counts(link, loss_db, block_size=block)
    return fk.finite_key_three_intensity(
        c.n_z, c.n_x, c.m_x, float(c.qber_z), link.mu, link.p_mu, **kw
    ), c


def rusca_result(link, loss_db, block, **kw):
    c = pl.expected_counts(link, loss_db, block_size=block)
    return fk.finite_key_one_decoy(
        c.n_z, c.n_x, c.m_x, c.m_z, float(c.qber_z), link.mu, link.p_mu, **kw
    ), c


@pytest.mark.parametrize("make", [lim_result, rusca_result], ids=["lim14", "rusca18"])
@pytest.mark.parametrize("loss_db", [3.0, 15.0, 25.0])
def test_bounds_are_safe_against_photon_number_truth(make, loss_db):
    link = LINK3 if make is lim_result else LINK1
    res, c = make(link, loss_db, 1e9)
    truth = photon_number_truth(link, loss_db, float(c.n_pulses))
    assert res.key_length > 0, res.abort_reason
    # lower bounds below the truth, the error upper bound above it
    assert 0 < res.s_z1 <= truth["s_z1"]
    assert 0 < res.s_x1 <= truth["s_x1"]
    assert res.s_z0 <= truth["s_z0"]
    assert res.v_x1 >= truth["v_x1"]
    assert res.phi_z >= truth["e1"]
    if make is rusca_result:
        assert res.s_z0_u >= truth["s_z0"]
    # and not absurdly loose: a block of 1e9 recovers at least half of the single photons
    assert res.s_z1 > 0.5 * truth["s_z1"]


def test_detection_model_is_the_photon_number_mixture():
    # Independent check of planning.detection_model: Poisson average of Y_n and e_n Y_n.
    link, loss = LINK3, 12.0
    y, ey, eta = photon_number_truth(link, loss, 1.0)["poisson_check"]
    n = np.arange(60)
    for mu in link.mu:
        w = np.exp(-mu) * mu**n / np.array([math.factorial(int(k)) for k in n])
        r, e = pl.detection_model(mu, eta, link.p_dc, link.p_ap, link.e_mis)
        assert r == pytest.approx(np.sum(w * y(n)), rel=1e-12)
        assert e == pytest.approx(np.sum(w * ey(n)), rel=1e-12)


@pytest.mark.parametrize("make", [lim_result, rusca_result], ids=["lim14", "rusca18"])
def test_intercept_resend_qber_25_percent_aborts(make):
    # Intercept-resend on every pulse with random bases gives a QBER of 25 % in both bases.
    link = LINK3 if make is lim_result else LINK1
    c = pl.expected_counts(link, 5.0, block_size=1e9)
    m_x, m_z = 0.25 * c.n_x, 0.25 * c.n_z
    if make is lim_result:
        res = fk.finite_key_three_intensity(c.n_z, c.n_x, m_x, 0.25, link.mu, link.p_mu)
    else:
        res = fk.finite_key_one_decoy(c.n_z, c.n_x, m_x, m_z, 0.25, link.mu, link.p_mu)
    assert res.key_length == 0
    assert res.abort_reason
    assert res.phi_z >= 0.25  # the phase error bound sees the attack


@pytest.mark.parametrize("make", [lim_result, rusca_result], ids=["lim14", "rusca18"])
@pytest.mark.parametrize("block", [1e2, 1e3])
def test_tiny_blocks_give_no_key(make, block):
    res, _ = make(LINK3 if make is lim_result else LINK1, 5.0, block)
    assert res.key_length == 0
    assert res.abort_reason


@pytest.mark.parametrize("link", [LINK3, LINK1], ids=["lim14", "rusca18"])
def test_finite_rate_rises_monotonically_to_asymptotic(link):
    loss = 10.0
    asym = pl.key_rate(link, loss)
    blocks = 10.0 ** np.arange(5, 15)
    rates = np.array([pl.key_rate(link, loss, b) for b in blocks])
    # zero for the smallest blocks (these fixed settings put only 1 % of detections in X),
    # then strictly increasing
    pos = rates > 0
    assert pos[-6:].all() and np.all(np.diff(pos.astype(int)) >= 0), rates
    assert np.all(np.diff(rates[pos]) > 0), rates
    assert np.all(rates < asym)
    # the finite-size terms shrink as 1/sqrt(block): at 1e14 within 0.5 % of the limit
    assert rates[-1] == pytest.approx(asym, rel=5e-3)


def test_scalar_api_matches_vectorised_planner():
    res, c = lim_result(LINK3, 10.0, 1e8, eps_sec=1e-10, eps_cor=1e-15, f_ec=1.16)
    rate = pl.key_rate(LINK3, 10.0, 1e8)
    assert res.key_length == pytest.approx(rate * float(c.n_pulses), rel=1e-12)


def test_lambda_ec_override_reduces_key_bit_for_bit():
    res, c = lim_result(LINK3, 10.0, 1e8)
    res2 = fk.finite_key_three_intensity(
        c.n_z,
        c.n_x,
        c.m_x,
        float(c.qber_z),
        LINK3.mu,
        LINK3.p_mu,
        lambda_ec=res.lambda_ec + 1000.0,
    )
    assert res2.length_bound == pytest.approx(res.length_bound - 1000.0, abs=1e-6)


def test_gamma_shrinks_with_sample_size():
    # Lim14 Eq. (5): the sampling correction falls roughly as 1/sqrt(n).
    g = [float(fk.gamma(1e-10, 0.02, n, n)) for n in (1e4, 1e6, 1e8)]
    assert g[0] > g[1] > g[2] > 0
    assert g[1] / g[2] == pytest.approx(10.0, rel=0.1)
    # a clean test basis still pays a correction (b floored at one error)
    assert float(fk.gamma(1e-10, 0.0, 1e4, 1e4)) > 0


def test_input_errors_are_clear():
    c = pl.expected_counts(LINK3, 10.0, block_size=1e8)
    with pytest.raises(ValueError, match="mu_1 > mu_2 \\+ mu_3"):
        fk.finite_key_three_intensity(c.n_z, c.n_x, c.m_x, 0.02, (0.2, 0.15, 0.1), LINK3.p_mu)
    with pytest.raises(ValueError, match="n_z needs 3"):
        fk.finite_key_three_intensity(c.n_z[:2], c.n_x, c.m_x, 0.02, LINK3.mu, LINK3.p_mu)
    with pytest.raises(ValueError, match="exceeds"):
        fk.finite_key_three_intensity(c.n_z, c.n_x, c.n_x * 2, 0.02, LINK3.mu, LINK3.p_mu)
    with pytest.raises(ValueError, match="qber_z"):
        fk.finite_key_three_intensity(c.n_z, c.n_x, c.m_x, 1.5, LINK3.mu, LINK3.p_mu)
    with pytest.raises(ValueError, match="mu_1 > mu_2 > 0"):
        fk.finite_key_one_decoy(
            [1e6, 1e5], [1e4, 1e3], [10, 5], [1e3, 1e2], 0.02, (0.1, 0.3), (0.5, 0.5)
        )


def test_result_carries_every_intermediate_bound():
    res, _ = rusca_result(LINK1, 10.0, 1e8)
    d = res.as_dict()
    for key in (
        "s_z0",
        "s_z1",
        "s_x0",
        "s_x1",
        "s_z0_u",
        "s_x0_u",
        "v_x1",
        "phi_z",
        "lambda_ec",
        "key_length",
        "abort_reason",
    ):
        assert key in d
    assert res.key_length == math.floor(res.length_bound) and res.abort_reason == ""


def test_no_detections_aborts_without_nan_errors():
    zeros = np.zeros(3)
    res = fk.finite_key_three_intensity(zeros, zeros, zeros, 0.0, LINK3.mu, LINK3.p_mu)
    assert res.key_length == 0 and "s_z1" in res.abort_reason
