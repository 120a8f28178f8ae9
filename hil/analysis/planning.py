"""Expected key rates of a described QKD link: channel/detector models and rate planners.

Given a link (intensities and their probabilities, basis bias, detector efficiency, dark
counts per gate, afterpulsing, misalignment, fiber attenuation, clock rate, dead time) this
module predicts the expected per-intensity detection and error counts at a given loss, and
from them the asymptotic and finite-key rates (per pulse and bits/s) of ``keyrate.py`` and
``finitekey.py``, plus a scipy-free optimiser of intensities, probabilities and basis bias.

Models:
- ``gys_*``: the channel model of Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005) Sec. II with the
  GYS parameters (Gobby, Yuan, Shields, APL 84, 3762 (2004)), used to reproduce their figures.
- :class:`LinkModel`: the detector model of Lim et al., PRA 89, 022307 (2014) Sec. IV:
  D_k = 1 - (1 - 2 p_dc) exp(-eta_sys mu_k), R_k = D_k (1 + p_ap),
  e_k = p_dc + e_mis (1 - exp(-eta_sys mu_k)) + p_ap D_k / 2.
  Lim14 prints eta_ch (channel only) in the misalignment term of e_k; that gives a 6 % QBER
  at 0 km for their own parameters, so we read it as eta_sys (a typo), which gives the
  ~2.4 % their curves imply. Optional dead-time factor of Rusca et al., APL 112 171104
  (2018) Eq. (B3): c_dt = 1 / (1 + f_clock P_det t_dead).
The receiver picks its basis with the same bias q_z as the source (passive beam splitter on
the default bench, active choice in Lim14): sifted fractions q_z^2 (Z) and (1 - q_z)^2 (X).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from hil.analysis.finitekey import lim_bounds_core, rusca_bounds_core

PROTOCOLS = ("three-intensity", "one-decoy")


# --- GYS / Ma05 channel model (asymptotic reproductions) ---------------------------------


def gys_gain_qber(mu, eta, y0=1.7e-6, e_det=0.033, e0=0.5):
    """Get the expected gain Q_mu and QBER E_mu of a coherent state through the Ma05 channel.

    Q_mu = Y_0 + 1 - exp(-eta mu); E_mu Q_mu = e_0 Y_0 + e_det (1 - exp(-eta mu)) (Ma05 Sec. II).
    """
    mu = np.asarray(mu, dtype=float)
    signal = 1.0 - np.exp(-eta * mu)
    q = y0 + signal
    return q, (e0 * y0 + e_det * signal) / q


def gys_single_photon(eta, y0=1.7e-6, e_det=0.033, e0=0.5):
    """Get the true single-photon yield and error Y_1 = Y_0 + eta - Y_0 eta, e_1 (Ma05 Sec. II)."""
    y1 = y0 + eta - y0 * eta
    return y1, (e0 * y0 + e_det * eta) / y1


def gys_eta(distance_km, eta_bob=0.045, alpha_db_per_km=0.21):
    """Get the overall transmittance eta = eta_Bob 10^(-alpha L / 10) of the GYS link."""
    return eta_bob * 10.0 ** (-alpha_db_per_km * np.asarray(distance_km, dtype=float) / 10.0)


# --- Lim14 detector model ------------------------------------------------------------------


@dataclass(frozen=True)
class LinkModel:
    """Describe a decoy-state BB84 link for planning (SI units; dB where named).

    The defaults are an illustrative metro pilot (not a vendor datasheet): 1 GHz gated InGaAs
    receiver with 20 % efficiency including Bob's internal loss, 1e-6 dark counts per gate per
    detector, 3 % afterpulsing, no dead time, 1 % optical misalignment, standard fiber at
    0.2 dB/km, f_EC = 1.16; intensities 0.42/0.23/2e-4 sent with 0.46/0.41/0.13 and a 90 %
    key-basis bias, which are the optimiser's choice (rounded) for 1e8-bit blocks at 10 dB.
    Two intensities in ``mu`` describe a 1-decoy link.
    """

    mu: tuple = (0.42, 0.23, 2e-4)
    p_mu: tuple = (0.46, 0.41, 0.13)
    q_z: float = 0.9
    eta_bob: float = 0.2
    p_dc: float = 1e-6
    p_ap: float = 0.03
    e_mis: float = 0.01
    alpha_db_per_km: float = 0.2
    clock_hz: float = 1e9
    dead_time_s: float = 0.0
    f_ec: float = 1.16
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15

    def __post_init__(self):
        mu = np.asarray(self.mu, dtype=float)
        p = np.asarray(self.p_mu, dtype=float)
        if mu.shape != p.shape or mu.ndim != 1 or len(mu) not in (2, 3):
            raise ValueError(f"mu and p_mu need 2 or 3 values each, got {self.mu}, {self.p_mu}")
        if np.any(p <= 0) or abs(p.sum() - 1.0) > 1e-6:
            raise ValueError(f"p_mu must be positive and sum to 1, got {self.p_mu}")
        if np.any(np.diff(mu) >= 0) or mu[-1] < 0:
            raise ValueError(f"mu must be strictly decreasing and >= 0, got {self.mu}")
        for name in ("q_z", "eta_bob"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("p_dc", "p_ap", "e_mis", "alpha_db_per_km", "dead_time_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.clock_hz <= 0:
            raise ValueError(f"clock_hz must be > 0, got {self.clock_hz}")

    @property
    def protocol(self) -> str:
        """Get the protocol the intensities describe: 'three-intensity' or 'one-decoy'."""
        return PROTOCOLS[0] if len(self.mu) == 3 else PROTOCOLS[1]

    def loss_db(self, distance_km):
        """Get the fiber loss in dB over ``distance_km``."""
        return self.alpha_db_per_km * np.asarray(distance_km, dtype=float)

    def as_dict(self) -> dict:
        """Get the fields as a plain dict (for JSON reports)."""
        return asdict(self)


def detection_model(mu, eta_sys, p_dc, p_ap, e_mis):
    """Get (R_k, e_k): detection and error probability per pulse of intensity mu (Lim14 IV)."""
    mu = np.asarray(mu, dtype=float)
    signal = 1.0 - np.exp(-eta_sys * mu)
    d = 1.0 - (1.0 - 2.0 * p_dc) * np.exp(-eta_sys * mu)
    r = d * (1.0 + p_ap)
    e = p_dc + e_mis * signal + p_ap * d / 2.0
    return r, e


@dataclass(frozen=True)
class ExpectedCounts:
    """Expected per-intensity counts of one block (floats; intensities on the last axis)."""

    n_pulses: np.ndarray
    n_z: np.ndarray
    n_x: np.ndarray
    m_z: np.ndarray
    m_x: np.ndarray
    qber_z: np.ndarray


def _counts(mu, p, q_z, link: LinkModel, loss_db, n_pulses=None, block_size=None):
    """Expected counts for arrays of settings (vectorised; see :func:`expected_counts`)."""
    mu = np.asarray(mu, dtype=float)
    p = np.asarray(p, dtype=float)
    q_z = np.asarray(q_z, dtype=float)
    eta_sys = link.eta_bob * 10.0 ** (-np.asarray(loss_db, dtype=float) / 10.0)
    eta_sys = np.asarray(eta_sys)[..., None] if np.ndim(eta_sys) else eta_sys
    r, e = detection_model(mu, eta_sys, link.p_dc, link.p_ap, link.e_mis)
    p_det = np.sum(p * r, axis=-1)  # detections per pulse, all bases
    # Rusca18 (B3): a detector dead after each click misses a fraction of the pulses.
    c_dt = 1.0 / (1.0 + link.clock_hz * p_det * link.dead_time_s)
    fz, fx = q_z**2, (1.0 - q_z) ** 2
    if n_pulses is None:
        # the block is the number of key-basis detections (Lim14's n_X, our n_Z)
        n_pulses = np.asarray(block_size, dtype=float) / (fz * p_det * c_dt)
    n = np.asarray(n_pulses, dtype=float)[..., None] * c_dt[..., None] * p
    n_z = n * fz[..., None] * r
    m_z = n * fz[..., None] * e
    n_x = n * fx[..., None] * r
    m_x = n * fx[..., None] * e
    return ExpectedCounts(
        n_pulses=np.asarray(n_pulses, dtype=float) * np.ones_like(p_det),
        n_z=n_z,
        n_x=n_x,
        m_z=m_z,
        m_x=m_x,
        qber_z=m_z.sum(axis=-1) / n_z.sum(axis=-1),
    )


def expected_counts(link: LinkModel, loss_db: float, n_pulses=None, block_size=None):
    """Get the expected counts of one block at ``loss_db`` of channel loss.

    Give either ``n_pulses`` (pulses sent) or ``block_size`` (key-basis detections n_Z).
    """
    if (n_pulses is None) == (block_size is None):
        raise ValueError("give exactly one of n_pulses and block_size")
    return _counts(link.mu, link.p_mu, link.q_z, link, loss_db, n_pulses, block_size)


def _bounds(link, mu, p, q_z, loss_db, block_size, eps_sec, finite):
    if finite:
        c = _counts(mu, p, q_z, link, loss_db, block_size=block_size)
        scale = c.n_pulses
    else:
        # asymptotic: the bounds are linear in the counts, use per-pulse probabilities
        c = _counts(mu, p, q_z, link, loss_db, n_pulses=1.0)
        scale = np.ones_like(c.qber_z)
    args = dict(eps_sec=eps_sec, eps_cor=link.eps_cor, f_ec=link.f_ec, finite=finite)
    if np.shape(mu)[-1] == 3:
        d = lim_bounds_core(c.n_z, c.n_x, c.m_x, c.qber_z, mu, p, **args)
    else:
        d = rusca_bounds_core(c.n_z, c.n_x, c.m_x, c.m_z, c.qber_z, mu, p, **args)
    return d, scale


def _rate_batch(link, mu, p, q_z, loss_db, block_size, kappa=None):
    """Finite-key (``block_size`` given) or asymptotic key rate per pulse for arrays of settings.

    With ``kappa`` the secrecy parameter scales with the key: eps_sec = kappa l (Lim14 Sec. IV),
    solved by fixed-point iteration (l depends on eps_sec only through log terms).
    """
    finite = block_size is not None
    if not finite:
        d, scale = _bounds(link, mu, p, q_z, loss_db, None, link.eps_sec, False)
        return np.maximum(np.nan_to_num(d["length_bound"], nan=0.0, neginf=0.0), 0.0)
    eps = link.eps_sec if kappa is None else kappa * float(block_size) * 1e-3
    for _ in range(1 if kappa is None else 4):
        d, n_pulses = _bounds(link, mu, p, q_z, loss_db, block_size, eps, True)
        length = np.nan_to_num(d["length_bound"], nan=0.0, neginf=0.0)
        length = np.where(length >= 1.0, np.floor(length), 0.0)
        if kappa is not None:
            eps = np.clip(kappa * np.maximum(length, 1.0), 1e-300, 0.5)
    return length / n_pulses


def key_rate(link: LinkModel, loss_db, block_size=None, kappa=None):
    """Get the key rate per pulse at ``loss_db`` (array-like) with the link's own settings.

    ``block_size`` = key-basis detections per block for the finite-key rate (Lim14 for three
    intensities, Rusca18 for two); ``None`` gives the asymptotic rate of the same bound
    (no statistical fluctuations). Multiply by ``link.clock_hz`` for bits/s.
    """
    loss = np.asarray(loss_db, dtype=float)
    out = np.array(
        [
            _rate_batch(
                link, np.array(link.mu), np.array(link.p_mu), link.q_z, x, block_size, kappa
            )
            for x in loss.ravel()
        ],
        dtype=float,
    )
    return out.reshape(loss.shape) if loss.ndim else float(out[0])


def finite_key_result(link: LinkModel, loss_db: float, block_size: float):
    """Get the full :class:`~hil.analysis.finitekey.FiniteKeyResult` for the expected counts."""
    from hil.analysis.finitekey import finite_key_one_decoy, finite_key_three_intensity

    c = expected_counts(link, loss_db, block_size=block_size)
    args = dict(eps_sec=link.eps_sec, eps_cor=link.eps_cor, f_ec=link.f_ec)
    if link.protocol == PROTOCOLS[0]:
        return finite_key_three_intensity(
            c.n_z, c.n_x, c.m_x, float(c.qber_z), link.mu, link.p_mu, **args
        )
    return finite_key_one_decoy(
        c.n_z, c.n_x, c.m_x, c.m_z, float(c.qber_z), link.mu, link.p_mu, **args
    )


# --- optimiser ------------------------------------------------------------------------------


def _settings_valid(mu, p, q_z):
    """Mask of settings the bounds accept (Lim14: mu1 > mu2 + mu3, mu2 > mu3; p in (0, 1))."""
    ok = (q_z > 0.0) & (q_z < 1.0) & np.all(p > 0.0, axis=-1) & np.all(mu > 0, axis=-1)
    if mu.shape[-1] == 3:
        ok &= (mu[..., 0] > mu[..., 1] + mu[..., 2]) & (mu[..., 1] > mu[..., 2])
    else:
        ok &= mu[..., 0] > mu[..., 1]
    return ok


def optimise_link(
    link: LinkModel,
    loss_db: float,
    block_size=None,
    kappa=None,
    rounds=8,
    points=25,
    samples=4096,
    seed=0,
):
    """Get (best link, rate per pulse) maximising the key rate per pulse at ``loss_db``.

    Free parameters as in Lim14 Sec. IV: q_z, the signal and decoy intensities and the
    signal/decoy probabilities (the weakest intensity mu_3 stays fixed, the last probability
    takes the remainder). First ``samples`` seeded random settings (plus the link's own) are
    evaluated in one vectorised call, so a start with no key does not trap the search; then a
    coordinate search scans each parameter on ``points`` values around the best so far and
    halves the scan width every round. Deterministic for a given ``seed``.
    """
    n_int = len(link.mu)
    # coordinates: (name, index); multiplicative scan for intensities, additive for the rest
    coords = [("mu", 0), ("mu", 1), ("p", 0), ("q", 0)] + ([("p", 1)] if n_int == 3 else [])

    def evaluate(mus, ps, qs):
        ok = _settings_valid(mus, ps, qs)
        with np.errstate(all="ignore"):
            rate = _rate_batch(link, mus, ps, qs, loss_db, block_size, kappa)
        return np.where(ok, rate, -1.0)

    rng = np.random.default_rng(seed)
    mus = np.empty((samples, n_int))
    mus[:, 0] = np.exp(rng.uniform(np.log(0.05), np.log(1.0), samples))
    mus[:, 1] = mus[:, 0] * np.exp(rng.uniform(np.log(0.02), np.log(0.9), samples))
    ps = np.empty((samples, n_int))
    ps[:, 0] = rng.uniform(0.05, 0.95, samples)
    if n_int == 3:
        mus[:, 2] = link.mu[2]
        ps[:, 1] = rng.uniform(0.01, 1.0, samples) * (0.99 - ps[:, 0])
    ps[:, -1] = 1.0 - ps[:, :-1].sum(axis=1)
    qs = rng.uniform(0.5, 0.995, samples)
    mus = np.vstack([np.array(link.mu)[None], mus])
    ps = np.vstack([np.array(link.p_mu)[None], ps])
    qs = np.concatenate([[link.q_z], qs])
    rates = evaluate(mus, ps, qs)
    j = int(np.argmax(rates))
    best = float(rates[j])
    mu, p, q = mus[j].copy(), ps[j].copy(), float(qs[j])
    width_log, width_lin = 0.5, 0.1
    for _ in range(rounds):
        for name, i in coords:
            mus = np.repeat(mu[None], points, axis=0)
            ps = np.repeat(p[None], points, axis=0)
            qs = np.full(points, q)
            if name == "mu":
                mus[:, i] = mu[i] * np.exp(np.linspace(-width_log, width_log, points))
            elif name == "p":
                ps[:, i] = p[i] + np.linspace(-width_lin, width_lin, points)
                ps[:, -1] = 1.0 - ps[:, :-1].sum(axis=1)
            else:
                qs = np.clip(q + np.linspace(-width_lin, width_lin, points), 1e-3, 1 - 1e-3)
            rates = evaluate(mus, ps, qs)
            j = int(np.argmax(rates))
            if rates[j] > best:
                best = float(rates[j])
                mu, p, q = mus[j].copy(), ps[j].copy(), float(qs[j])
        width_log *= 0.5
        width_lin *= 0.5
    best_link = replace(
        link, mu=tuple(float(x) for x in mu), p_mu=tuple(float(x) for x in p), q_z=q
    )
    return best_link, max(best, 0.0)


def max_distance_km(rate_at, lo_km=0.0, hi_km=400.0, tol_km=0.05):
    """Get the largest distance where ``rate_at(distance_km) > 0``, by bisection.

    Assumes the rate is positive at ``lo_km`` and falls to zero once (true for these bounds).
    """
    if not rate_at(lo_km) > 0:
        return lo_km
    if rate_at(hi_km) > 0:
        return hi_km
    while hi_km - lo_km > tol_km:
        mid = 0.5 * (lo_km + hi_km)
        if rate_at(mid) > 0:
            lo_km = mid
        else:
            hi_km = mid
    return lo_km


def rate_table(link: LinkModel, losses_db, block_size=None, optimise=False, kappa=None):
    """Get rows of expected rates against loss: asymptotic and finite-key, per pulse and bits/s.

    Each row: loss_db, distance_km (loss / alpha), rate per pulse and bits/s for the
    asymptotic bound and (if ``block_size``) the finite-key bound, with the settings used.
    With ``optimise`` each point gets its own optimised settings (slow: ~0.1 s a point).
    """
    rows = []
    for loss in np.asarray(losses_db, dtype=float).ravel():
        row = {
            "loss_db": float(loss),
            "distance_km": float(loss / link.alpha_db_per_km) if link.alpha_db_per_km else None,
        }
        a_link, a_rate = optimise_link(link, loss) if optimise else (link, key_rate(link, loss))
        row["asymptotic_per_pulse"] = float(a_rate)
        row["asymptotic_bps"] = float(a_rate * link.clock_hz)
        if block_size is not None:
            f_link, f_rate = (
                optimise_link(link, loss, block_size, kappa)
                if optimise
                else (link, key_rate(link, loss, block_size, kappa))
            )
            row["finite_per_pulse"] = float(f_rate)
            row["finite_bps"] = float(f_rate * link.clock_hz)
            row["finite_settings"] = {"mu": f_link.mu, "p_mu": f_link.p_mu, "q_z": f_link.q_z}
        rows.append(row)
    return rows
