"""Asymptotic secure-key-rate bounds for decoy-state BB84 (GLLP with decoy states).

Estimation functions take measured gains ``Q_k`` (detections per pulse sent with intensity k)
and QBERs ``E_k`` of each intensity, so they work on bench data as well as on simulated
expectations (the channel models that produce expectations live in ``planning.py``).

Sources:
- GLLP key rate with decoy states: Lo, Ma, Chen, PRL 94, 230504 (2005), Eq. (1) there;
  Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), arXiv:quant-ph/0503005 (cited "Ma05" below).
- Vacuum + weak decoy: Ma05 Eqs. (34) (Y_1 lower bound) and (37) (e_1 upper bound), kept in
  full (the truncated form without the Q_mu and Y_0 terms overestimates Y_1: unsafe).
- Two weak decoys nu_1 > nu_2: Ma05, section on the general two-decoy case (the Y_0, Y_1, e_1
  bounds transcribed in /work/shared/reference/qkd-key-rate.md; with nu_2 = 0 they reduce to
  Eqs. (34)/(37), which the tests check). Equation numbers other than (34) and (37) were not
  checked against the paper, so sections are cited instead.

Key is taken from the Z basis; the rate formula is basis-agnostic: ``q`` is the sifting factor
(1/2 for standard BB84, close to 1 for efficient BB84).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: Error rate of a background (vacuum) detection: a random bit (Ma05, e_0 = 1/2).
E0 = 0.5


def binary_entropy(x):
    """Get the binary entropy h(x) in bits, elementwise, with h(0) = h(1) = 0.

    Inputs are clipped to [0, 1] first so that rounding just outside the interval does not
    produce NaN; callers that feed an *upper bound* on an error rate should use
    :func:`entropy_of_upper_bound`, which also saturates above 1/2.
    """
    x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -x * np.log2(x) - (1.0 - x) * np.log2(1.0 - x)
    out = np.where((x <= 0.0) | (x >= 1.0), 0.0, out)
    return out if out.ndim else float(out)


def entropy_of_upper_bound(e_upper):
    """Get h(min(e, 1/2)): the entropy to charge for an error rate known only by an upper bound.

    h is symmetric about 1/2, so an upper bound above 1/2 must not be folded back to a small
    entropy (that would credit secrecy the bound does not prove); it is charged a full bit.
    """
    return binary_entropy(np.minimum(np.asarray(e_upper, dtype=float), 0.5))


def gllp_rate(q_mu, e_mu, q1, e1, f_ec=1.22, q=0.5):
    """Get the GLLP key rate per pulse R = q { -Q_mu f h(E_mu) + Q_1 [1 - h(e_1)] }.

    Lo, Ma, Chen PRL 94 230504 (2005) Eq. (1), restated in Ma05. The result may be negative
    (no key); callers clip where they need a rate.
    """
    return q * (-q_mu * f_ec * binary_entropy(e_mu) + q1 * (1.0 - entropy_of_upper_bound(e1)))


def qber_threshold(f_ec=1.0):
    """Get the QBER at which one-way BB84 with single photons stops giving key.

    Solves 1 - h(e) - f h(e) = 0 on (0, 1/2) by bisection (h is increasing there).
    """
    lo, hi = 1e-12, 0.5
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 1.0 - (1.0 + f_ec) * binary_entropy(mid) > 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class DecoyEstimate:
    """Intermediate bounds and the asymptotic rate of one decoy-state estimate (for reports).

    ``rate_bound`` is the GLLP expression (may be negative); ``rate_per_pulse`` is it clipped
    at 0. ``abort_reason`` is empty when the bounds allow a key.
    """

    method: str
    mu: float
    q_mu: float
    e_mu: float
    y0_l: float
    y1_l: float
    e1_u: float
    q1_l: float
    rate_bound: float
    rate_per_pulse: float
    abort_reason: str = ""

    def as_dict(self) -> dict:
        """Get the fields as a plain dict (for JSON reports)."""
        return asdict(self)


def _finish(method, mu, q_mu, e_mu, y0_l, y1_l, e1_u, f_ec, q) -> DecoyEstimate:
    """Build a DecoyEstimate, turning unusable bounds into an abort reason."""
    q1_l = y1_l * mu * np.exp(-mu)  # Q_1 = Y_1 mu e^-mu: Poisson weight of one photon (Ma05)
    reason = ""
    if not np.all(np.isfinite([y0_l, y1_l, e1_u, q_mu, e_mu])):
        reason = "non-finite bound (check the gains and QBERs given)"
        rate = float("nan")
    elif y1_l <= 0.0:
        reason = f"single-photon yield lower bound Y1_L = {y1_l:.3g} <= 0"
        rate = float(gllp_rate(q_mu, e_mu, 0.0, 0.5, f_ec, q))
    else:
        rate = float(gllp_rate(q_mu, e_mu, q1_l, e1_u, f_ec, q))
        if e1_u >= 0.5:
            reason = f"single-photon error upper bound e1_U = {e1_u:.3g} >= 0.5"
        elif rate <= 0.0:
            reason = "error correction leaks more than the single photons give (rate <= 0)"
    clipped = rate if (rate > 0.0 and not reason) else 0.0
    return DecoyEstimate(
        method=method,
        mu=float(mu),
        q_mu=float(q_mu),
        e_mu=float(e_mu),
        y0_l=float(y0_l),
        y1_l=float(y1_l),
        e1_u=float(e1_u),
        q1_l=float(q1_l),
        rate_bound=rate,
        rate_per_pulse=clipped,
        abort_reason=reason,
    )


def infinite_decoy_estimate(mu, q_mu, e_mu, y0, y1, e1, f_ec=1.22, q=0.5) -> DecoyEstimate:
    """Get the rate when Y_1 and e_1 are known exactly (the infinite-decoy limit).

    With infinitely many decoys the single-photon yield and error are measured, not bounded
    (Lo, Ma, Chen 2005); the caller supplies them, e.g. from the channel model of Ma05 Sec. II
    (``planning.gys_single_photon``).
    """
    return _finish("infinite-decoy", mu, q_mu, e_mu, y0, y1, e1, f_ec, q)


def vacuum_weak_decoy_estimate(
    mu, nu, q_mu, e_mu, q_nu, e_nu, y0, f_ec=1.22, q=0.5
) -> DecoyEstimate:
    """Get the vacuum + one weak decoy (nu < mu) bounds from measured gains and QBERs.

    ``y0`` is the measured vacuum gain Q_0 (the vacuum decoy measures Y_0 directly).
    """
    if not 0.0 < nu < mu:
        raise ValueError(f"need 0 < nu < mu for the weak decoy, got nu={nu}, mu={mu}")
    # Ma05 Eq. (34): Y_1^L = mu/(mu nu - nu^2) [Q_nu e^nu - Q_mu e^mu nu^2/mu^2
    #                                            - (mu^2 - nu^2)/mu^2 Y_0]
    y1_l = (
        mu
        / (mu * nu - nu**2)
        * (q_nu * np.exp(nu) - q_mu * np.exp(mu) * nu**2 / mu**2 - (mu**2 - nu**2) / mu**2 * y0)
    )
    # Ma05 Eq. (37): e_1^U = (E_nu Q_nu e^nu - e_0 Y_0) / (Y_1^L nu)
    with np.errstate(divide="ignore", invalid="ignore"):
        e1_u = (e_nu * q_nu * np.exp(nu) - E0 * y0) / (y1_l * nu) if y1_l > 0 else np.inf
    return _finish("vacuum+weak", mu, q_mu, e_mu, y0, y1_l, e1_u, f_ec, q)


def two_decoy_estimate(
    mu, nu1, nu2, q_mu, e_mu, q_nu1, e_nu1, q_nu2, e_nu2, f_ec=1.22, q=0.5
) -> DecoyEstimate:
    """Get the general two-weak-decoy bounds (mu > nu1 + nu2, nu1 > nu2 >= 0) from data.

    Ma05, general two-decoy case. With nu2 = 0 the bounds equal Eqs. (34)/(37).
    """
    if not (nu1 > nu2 >= 0.0 and mu > nu1 + nu2):
        raise ValueError(
            f"need mu > nu1 + nu2 and nu1 > nu2 >= 0, got mu={mu}, nu1={nu1}, nu2={nu2}"
        )
    # Y_0 >= max{(nu1 Q_nu2 e^nu2 - nu2 Q_nu1 e^nu1) / (nu1 - nu2), 0}
    y0_l = max((nu1 * q_nu2 * np.exp(nu2) - nu2 * q_nu1 * np.exp(nu1)) / (nu1 - nu2), 0.0)
    # Y_1 >= mu/(mu nu1 - mu nu2 - nu1^2 + nu2^2) [Q_nu1 e^nu1 - Q_nu2 e^nu2
    #        - (nu1^2 - nu2^2)/mu^2 (Q_mu e^mu - Y_0^L)]
    y1_l = (
        mu
        / (mu * nu1 - mu * nu2 - nu1**2 + nu2**2)
        * (
            q_nu1 * np.exp(nu1)
            - q_nu2 * np.exp(nu2)
            - (nu1**2 - nu2**2) / mu**2 * (q_mu * np.exp(mu) - y0_l)
        )
    )
    # e_1 <= (E_nu1 Q_nu1 e^nu1 - E_nu2 Q_nu2 e^nu2) / ((nu1 - nu2) Y_1^L)
    if y1_l > 0:
        e1_u = (e_nu1 * q_nu1 * np.exp(nu1) - e_nu2 * q_nu2 * np.exp(nu2)) / ((nu1 - nu2) * y1_l)
    else:
        e1_u = float("inf")
    return _finish("two-decoy", mu, q_mu, e_mu, y0_l, y1_l, e1_u, f_ec, q)
