"""Finite-key secret key length for decoy-state BB84 from per-intensity counts.

Two protocols:
- three intensities (signal, decoy, vacuum/weakest): Lim, Curty, Walenta, Xu, Zbinden,
  PRA 89, 022307 (2014), arXiv:1311.7129, Eqs. (1)-(5) ("Lim14" below);
- two intensities (1-decoy): Rusca, Boaron, Gruenfelder, Martin, Zbinden, APL 112, 171104
  (2018), arXiv:1801.03443, Appendix A, Eqs. (A16)-(A25) ("Rusca18" below).

Labels. Our key comes from Z and the phase error is estimated from X (efficient BB84, see
DESIGN.md). Lim14 extracts the key from X and estimates from Z, so every Lim14 formula below
appears with X and Z swapped; Rusca18 already keys from Z, so its labels are ours.

Inputs are counts per intensity class k (0 = signal mu_1, 1 = decoy mu_2, 2 = vacuum/weakest
mu_3): detections ``n_z[k]``, ``n_x[k]`` and X-basis errors ``m_x[k]`` (all X bits are
disclosed). The Z-basis QBER estimate ``qber_z`` sets the error-correction leakage
lambda_EC = f_EC n_Z h(qber_z) (Lim14 Sec. IV) unless a measured ``lambda_ec`` is given.

The ``*_core`` functions are vectorised (any leading shape, intensities on the last axis) so
that the planner can evaluate many candidate settings at once; the public functions wrap them
for one block and return a :class:`FiniteKeyResult` carrying every intermediate bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from hil.analysis.keyrate import entropy_of_upper_bound

LN2 = math.log(2.0)


@dataclass(frozen=True)
class FiniteKeyResult:
    """Every intermediate bound of one finite-key evaluation (for reports).

    Counts of events (not rates): s_* are vacuum (0) / single-photon (1) detection bounds in
    the key basis Z and test basis X; ``s_z0_u``/``s_x0_u`` are the vacuum upper bounds the
    1-decoy protocol needs (NaN for three intensities); ``v_x1`` bounds the single-photon
    errors in X; ``phi_z`` bounds the single-photon phase error rate of the Z key.
    ``length_bound`` is the key-length expression before flooring; ``key_length`` is the
    secret key length in bits, 0 with a non-empty ``abort_reason`` when no key is allowed.
    """

    protocol: str
    n_z: float
    n_x: float
    m_x: float
    s_z0: float
    s_z1: float
    s_x0: float
    s_x1: float
    s_z0_u: float
    s_x0_u: float
    v_x1: float
    phi_z: float
    lambda_ec: float
    eps_sec: float
    eps_cor: float
    length_bound: float
    key_length: int
    abort_reason: str

    def as_dict(self) -> dict:
        """Get the fields as a plain dict (for JSON reports)."""
        return asdict(self)


def tau(n: int, mu, p):
    """Get tau_n = sum_k p_k e^-mu_k mu_k^n / n!: the probability of sending n photons.

    Lim14 below Eq. (2); Rusca18 (A5). Intensities on the last axis.
    """
    mu = np.asarray(mu, dtype=float)
    return np.sum(np.asarray(p, dtype=float) * np.exp(-mu) * mu**n, axis=-1) / math.factorial(n)


def gamma(a, b, c, d, const=21.0):
    """Get the sampling correction gamma(a, b, c, d) of Lim14 Eq. (5) (and Rusca18 (A21)).

    gamma = sqrt( (c+d)(1-b) b / (c d ln 2) * log2[ (c+d) / (c d (1-b) b) * const^2 / a^2 ] ),
    with a = eps_sec, b = observed single-photon error rate in the test basis, c, d the
    single-photon counts of the two bases.

    Sources disagree on the constant in the logarithm for Rusca18 (21^2, 19^2 and 2^21 all
    appear in transcriptions). Lim14 prints 21^2 (its eps_sec = 21 eps). We use 21^2 for both
    protocols: it is at least as large as 19^2 (the value consistent with Rusca18's 19-term
    composition), so gamma, and hence the charged phase error, is never smaller; 2^21 is a
    misreading of a superscript. At b -> 0 the formula collapses to 0; we floor b at one error
    in the sample (1/c) so that a clean X basis still pays a statistical correction.
    """
    c = np.asarray(c, dtype=float)
    d = np.asarray(d, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.clip(np.maximum(np.asarray(b, dtype=float), 1.0 / c), 0.0, 0.5)
        bb = (1.0 - b) * b
        arg = (c + d) / (c * d * bb) * const**2 / np.asarray(a, dtype=float) ** 2
        inner = (c + d) * bb / (c * d * LN2) * np.log2(arg)
    return np.sqrt(np.maximum(inner, 0.0))


def _hoeffding(n, eps, finite=True):
    """Get delta(n, eps) = sqrt(n/2 ln(1/eps)) (Lim14 (A1); Rusca18 (A2)); 0 if not finite."""
    if not finite:
        return np.zeros_like(np.asarray(n, dtype=float))
    return np.sqrt(np.asarray(n, dtype=float) / 2.0 * np.log(1.0 / eps))


def _check_counts(name, arr, n_int):
    arr = np.asarray(arr, dtype=float)
    if arr.shape[-1] != n_int:
        raise ValueError(
            f"{name} needs {n_int} intensity classes on its last axis, got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must hold finite non-negative counts, got {arr}")
    return arr


def _assemble(protocol, d, eps_sec, eps_cor):
    """Turn a scalar bounds dict into a FiniteKeyResult, choosing the abort reason."""
    vals = {k: float(np.asarray(v)) for k, v in d.items()}
    reason = ""
    if not all(math.isfinite(vals[k]) for k in ("s_z1", "s_x1", "v_x1", "lambda_ec")):
        reason = "a bound is not finite (empty intensity class or degenerate counts)"
    elif vals["s_z1"] <= 0:
        reason = f"single-photon lower bound in Z s_z1 = {vals['s_z1']:.3g} <= 0 (block too small?)"
    elif vals["s_x1"] <= 0:
        reason = f"single-photon lower bound in X s_x1 = {vals['s_x1']:.3g} <= 0 (block too small?)"
    elif not vals["phi_z"] < 0.5:  # also catches NaN
        reason = f"phase error bound phi_z = {vals['phi_z']:.3g} >= 0.5 (QBER too high)"
    elif not vals["length_bound"] >= 1.0:
        reason = (
            f"key length bound {vals['length_bound']:.4g} < 1 bit: error correction and "
            "finite-size terms exceed the single-photon secrecy"
        )
    key_length = 0 if reason else int(math.floor(vals["length_bound"]))
    return FiniteKeyResult(
        protocol=protocol,
        n_z=vals["n_z"],
        n_x=vals["n_x"],
        m_x=vals["m_x"],
        s_z0=vals["s_z0"],
        s_z1=vals["s_z1"],
        s_x0=vals["s_x0"],
        s_x1=vals["s_x1"],
        s_z0_u=vals.get("s_z0_u", float("nan")),
        s_x0_u=vals.get("s_x0_u", float("nan")),
        v_x1=vals["v_x1"],
        phi_z=vals["phi_z"],
        lambda_ec=vals["lambda_ec"],
        eps_sec=float(eps_sec),
        eps_cor=float(eps_cor),
        length_bound=vals["length_bound"],
        key_length=key_length,
        abort_reason=reason,
    )


def _phase_and_length(d, eps_sec, eps_cor, const, n_terms, finite=True):
    """Add phi_z and the key-length bound to a bounds dict (Lim14 Eqs. (1), (5); Rusca18
    (A23), (A25)); ``n_terms`` is 21 (Lim14) or 19 (Rusca18). With ``finite`` False the
    sampling correction and the composition terms are dropped (asymptotic limit)."""
    s_z1, s_x1, v_x1 = d["s_z1"], d["s_x1"], d["v_x1"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (s_z1 > 0) & (s_x1 > 0)
        b = np.where(ok, v_x1 / np.where(ok, s_x1, 1.0), np.nan)
        # Lim14 Eq. (5), labels swapped: phi_Z <= v_X1/s_X1 + gamma(eps_sec, v_X1/s_X1, s_X1, s_Z1)
        g = gamma(eps_sec, b, s_x1, s_z1, const) if finite else 0.0
        phi = np.where(ok, np.maximum(b, 0.0) + g, np.nan)
        penalty = 6.0 * np.log2(n_terms / eps_sec) + np.log2(2.0 / eps_cor) if finite else 0.0
        # Lim14 Eq. (1) / Rusca18 (A25): the vacuum bits are secret, single photons give
        # 1 - h(phi), multi-photon bits none; minus EC leakage and the composition terms.
        length = (
            np.maximum(d["s_z0"], 0.0)
            + s_z1 * (1.0 - entropy_of_upper_bound(phi))
            - d["lambda_ec"]
            - penalty
        )
    d["phi_z"] = phi
    d["length_bound"] = np.where(ok & (phi < 0.5), length, -np.inf)
    return d


def _lambda_ec(n_z_total, qber_z, f_ec, lambda_ec):
    if lambda_ec is not None:
        return np.asarray(lambda_ec, dtype=float)
    # Lim14 Sec. IV: lambda_EC = f_EC h(e_obs) per key bit, times the block n_Z.
    return f_ec * n_z_total * entropy_of_upper_bound(qber_z)


def lim_bounds_core(
    n_z, n_x, m_x, qber_z, mu, p, eps_sec, eps_cor=1e-15, f_ec=1.16, lambda_ec=None, finite=True
):
    """Get the three-intensity bounds of Lim14 as a dict of arrays (vectorised).

    Shapes: counts, ``mu`` and ``p`` broadcast with 3 intensities on the last axis; scalars
    or arrays of the leading shape for the rest. See :func:`finite_key_three_intensity`.
    With ``finite`` False every statistical deviation and composition term is dropped: the
    bounds are linear in the counts, so per-pulse probabilities give the asymptotic rate.
    """
    n_z = np.asarray(n_z, dtype=float)
    n_x = np.asarray(n_x, dtype=float)
    m_x = np.asarray(m_x, dtype=float)
    mu = np.asarray(mu, dtype=float)
    p = np.asarray(p, dtype=float)
    mu1, mu2, mu3 = mu[..., 0], mu[..., 1], mu[..., 2]
    t0, t1 = tau(0, mu, p), tau(1, mu, p)
    eps1 = eps_sec / 21.0  # Lim14 (B4): eps_sec = 21 eps with every error term equal
    scale = np.exp(mu) / p  # e^{mu_k} / p_k

    def bounds_s(n):
        tot = n.sum(axis=-1)
        dev = _hoeffding(tot, eps1, finite)[..., None]
        # Lim14 Eq. (2) definitions: n^{+-}_k = e^{mu_k}/p_k [n_k +- sqrt(n/2 ln(21/eps_sec))]
        n_m = scale * (n - dev)
        n_p = scale * (n + dev)
        # Lim14 Eq. (2): s_0 >= tau_0 (mu_2 n^-_{mu3} - mu_3 n^+_{mu2}) / (mu_2 - mu_3)
        s0 = t0 * (mu2 * n_m[..., 2] - mu3 * n_p[..., 1]) / (mu2 - mu3)
        s0 = np.maximum(s0, 0.0)  # a count is >= 0, and s_0 enters Eq. (3) with + sign
        # Lim14 Eq. (3): s_1 >= tau_1 mu_1 [n^-_{mu2} - n^+_{mu3}
        #        - (mu_2^2 - mu_3^2)/mu_1^2 (n^+_{mu1} - s_0/tau_0)]
        #        / [mu_1 (mu_2 - mu_3) - mu_2^2 + mu_3^2]
        s1 = (
            t1
            * mu1
            * (n_m[..., 1] - n_p[..., 2] - (mu2**2 - mu3**2) / mu1**2 * (n_p[..., 0] - s0 / t0))
            / (mu1 * (mu2 - mu3) - mu2**2 + mu3**2)
        )
        return s0, s1, tot

    s_z0, s_z1, n_z_tot = bounds_s(n_z)
    s_x0, s_x1, n_x_tot = bounds_s(n_x)
    m_x_tot = m_x.sum(axis=-1)
    dev_m = _hoeffding(m_x_tot, eps1, finite)[..., None]
    m_m = scale * (m_x - dev_m)
    m_p = scale * (m_x + dev_m)
    # Lim14 Eq. (4), labels swapped: v_X1 <= tau_1 (m^+_{X,mu2} - m^-_{X,mu3}) / (mu_2 - mu_3)
    v_x1 = t1 * (m_p[..., 1] - m_m[..., 2]) / (mu2 - mu3)
    d = {
        "n_z": n_z_tot,
        "n_x": n_x_tot,
        "m_x": m_x_tot,
        "s_z0": s_z0,
        "s_z1": s_z1,
        "s_x0": s_x0,
        "s_x1": s_x1,
        "v_x1": v_x1,
        "lambda_ec": _lambda_ec(n_z_tot, qber_z, f_ec, lambda_ec),
    }
    return _phase_and_length(d, eps_sec, eps_cor, 21.0, 21.0, finite)


def rusca_bounds_core(
    n_z,
    n_x,
    m_x,
    m_z,
    qber_z,
    mu,
    p,
    eps_sec,
    eps_cor=1e-15,
    f_ec=1.16,
    lambda_ec=None,
    finite=True,
):
    """Get the two-intensity (1-decoy) bounds of Rusca18 as a dict of arrays (vectorised).

    See :func:`finite_key_one_decoy`. Intensities on the last axis: 0 = mu_1, 1 = mu_2.
    """
    n_z = np.asarray(n_z, dtype=float)
    n_x = np.asarray(n_x, dtype=float)
    m_x = np.asarray(m_x, dtype=float)
    m_z = np.asarray(m_z, dtype=float)
    mu = np.asarray(mu, dtype=float)
    p = np.asarray(p, dtype=float)
    mu1, mu2 = mu[..., 0], mu[..., 1]
    t0, t1 = tau(0, mu, p), tau(1, mu, p)
    # Rusca18 (A24): eps_sec = 19 eps with every error term equal. (A16) is printed with
    # delta(m_Z, eps_1) where (A4) defines the error deviation with eps_2; both equal eps here.
    eps1 = eps_sec / 19.0
    scale = np.exp(mu) / p

    def bounds(n, m):
        tot = n.sum(axis=-1)
        m_tot = m.sum(axis=-1)
        dev = _hoeffding(tot, eps1, finite)[..., None]
        # (A18) printed without e^k/p_k; (A10) and Lim14 need it, so we use the Lim14 form.
        n_m = scale * (n - dev)
        n_p = scale * (n + dev)
        # (A16): s_0 <= 2 [tau_0 e^{mu2}/p_2 (m_{mu2} + delta(m, eps)) + delta(n, eps)],
        # vacuum detections err with probability 1/2; the decoy's errors give the tighter bound.
        s0_u = 2.0 * (
            t0 * scale[..., 1] * (m[..., 1] + _hoeffding(m_tot, eps1, finite))
            + _hoeffding(tot, eps1, finite)
        )
        # (A19): s_0 >= tau_0/(mu_1 - mu_2) (mu_1 n^-_{mu2} - mu_2 n^+_{mu1})
        s0_l = np.maximum(t0 / (mu1 - mu2) * (mu1 * n_m[..., 1] - mu2 * n_p[..., 0]), 0.0)
        # (A17): s_1 >= tau_1 mu_1/(mu_2 (mu_1 - mu_2)) [n^-_{mu2} - mu_2^2/mu_1^2 n^+_{mu1}
        #                                               - (mu_1^2 - mu_2^2)/mu_1^2 s0_u/tau_0]
        s1_l = (
            t1
            * mu1
            / (mu2 * (mu1 - mu2))
            * (n_m[..., 1] - mu2**2 / mu1**2 * n_p[..., 0] - (mu1**2 - mu2**2) / mu1**2 * s0_u / t0)
        )
        return s0_l, s0_u, s1_l, tot

    s_z0, s_z0_u, s_z1, n_z_tot = bounds(n_z, m_z)
    s_x0, s_x0_u, s_x1, n_x_tot = bounds(n_x, m_x)
    m_x_tot = m_x.sum(axis=-1)
    dev_m = _hoeffding(m_x_tot, eps1, finite)[..., None]
    # (A22): v_X1 <= tau_1/(mu_1 - mu_2) (m^+_{X,mu1} - m^-_{X,mu2})
    v_x1 = (
        t1
        / (mu1 - mu2)
        * (
            scale[..., 0] * (m_x[..., 0] + dev_m[..., 0])
            - scale[..., 1] * (m_x[..., 1] - dev_m[..., 0])
        )
    )
    d = {
        "n_z": n_z_tot,
        "n_x": n_x_tot,
        "m_x": m_x_tot,
        "s_z0": s_z0,
        "s_z1": s_z1,
        "s_x0": s_x0,
        "s_x1": s_x1,
        "s_z0_u": s_z0_u,
        "s_x0_u": s_x0_u,
        "v_x1": v_x1,
        "lambda_ec": _lambda_ec(n_z_tot, qber_z, f_ec, lambda_ec),
    }
    return _phase_and_length(d, eps_sec, eps_cor, 21.0, 19.0, finite)


def _check_common(mu, p, eps_sec, eps_cor, f_ec, qber_z, n_int):
    mu = np.asarray(mu, dtype=float)
    p = np.asarray(p, dtype=float)
    if mu.shape != (n_int,) or p.shape != (n_int,):
        raise ValueError(f"mu and p need {n_int} values each, got {mu.shape} and {p.shape}")
    if np.any(p <= 0) or np.any(p > 1) or p.sum() > 1 + 1e-9:
        raise ValueError(f"intensity probabilities must be in (0, 1] and sum to <= 1, got {p}")
    if not (0 < eps_sec < 1 and 0 < eps_cor < 1):
        raise ValueError(f"eps_sec and eps_cor must be in (0, 1), got {eps_sec}, {eps_cor}")
    if f_ec < 1:
        raise ValueError(f"f_ec is an inefficiency >= 1, got {f_ec}")
    if not 0 <= qber_z <= 1:
        raise ValueError(f"qber_z must be in [0, 1], got {qber_z}")
    return mu, p


def finite_key_three_intensity(
    n_z, n_x, m_x, qber_z, mu, p, eps_sec=1e-10, eps_cor=1e-15, f_ec=1.16, lambda_ec=None
) -> FiniteKeyResult:
    """Get the Lim14 finite-key length for one block from per-intensity counts.

    ``n_z``, ``n_x``, ``m_x``: counts for intensity classes (signal, decoy, vacuum/weakest);
    ``mu`` = (mu_1, mu_2, mu_3) with mu_1 > mu_2 + mu_3 and mu_2 > mu_3 >= 0; ``p`` their
    probabilities; ``qber_z`` the key-basis QBER estimate; ``lambda_ec`` (bits) overrides
    f_EC n_Z h(qber_z) when the error-correction leakage was measured.
    """
    mu, p = _check_common(mu, p, eps_sec, eps_cor, f_ec, qber_z, 3)
    if not (mu[0] > mu[1] + mu[2] and mu[1] > mu[2] >= 0):
        raise ValueError(f"Lim14 needs mu_1 > mu_2 + mu_3 and mu_2 > mu_3 >= 0, got {mu}")
    n_z = _check_counts("n_z", n_z, 3)
    n_x = _check_counts("n_x", n_x, 3)
    m_x = _check_counts("m_x", m_x, 3)
    if np.any(m_x > n_x):
        raise ValueError("m_x (errors) exceeds n_x (detections) in some intensity class")
    d = lim_bounds_core(n_z, n_x, m_x, qber_z, mu, p, eps_sec, eps_cor, f_ec, lambda_ec)
    return _assemble("three-intensity (Lim et al. 2014)", d, eps_sec, eps_cor)


def finite_key_one_decoy(
    n_z, n_x, m_x, m_z, qber_z, mu, p, eps_sec=1e-10, eps_cor=1e-15, f_ec=1.16, lambda_ec=None
) -> FiniteKeyResult:
    """Get the Rusca18 (1-decoy) finite-key length for one block from per-intensity counts.

    Two intensity classes (signal mu_1 > decoy mu_2 > 0). Besides the X errors ``m_x`` this
    bound needs the key-basis errors per intensity ``m_z`` (Rusca18 (A16) bounds the vacuum
    detections by the decoy's errors): on a real link they are known after error correction
    (the number of bits it flipped, per intensity class), not from the disclosed sample.
    """
    mu, p = _check_common(mu, p, eps_sec, eps_cor, f_ec, qber_z, 2)
    if not mu[0] > mu[1] > 0:
        raise ValueError(f"the 1-decoy protocol needs mu_1 > mu_2 > 0, got {mu}")
    n_z = _check_counts("n_z", n_z, 2)
    n_x = _check_counts("n_x", n_x, 2)
    m_x = _check_counts("m_x", m_x, 2)
    m_z = _check_counts("m_z", m_z, 2)
    if np.any(m_x > n_x) or np.any(m_z > n_z):
        raise ValueError("error counts exceed detection counts in some intensity class")
    d = rusca_bounds_core(n_z, n_x, m_x, m_z, qber_z, mu, p, eps_sec, eps_cor, f_ec, lambda_ec)
    return _assemble("1-decoy (Rusca et al. 2018)", d, eps_sec, eps_cor)
