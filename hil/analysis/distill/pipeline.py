"""One frame's distillation, receiver side: reconcile -> verify -> amplify -> authenticate.

The peer is the source's side of the exchange (``hil.instruments.source.QKDSource`` on a bench,
:class:`LocalPeer` offline): it answers parities and hashes of its frame key and keeps its own
amplified key. Its bits never come here. Every classical message goes into the frame's
transcript; one Wegman-Carter tag per side at the end covers all of them (distillation.md:
Cascade's hundreds of messages would make per-message tags costly).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from .cascade import CascadePlan, binary_entropy, cascade
from .hashing import (
    P61,
    KeyPool,
    Transcript,
    poly_hash,
    toeplitz,
    verification_cost_bits,
    verification_points,
    wc_tag,
)

AUTH_PADS_PER_FRAME = 2  # the receiver's tag and the source's tag
AUTH_BITS_PER_FRAME = 64 * AUTH_PADS_PER_FRAME  # 64 pool bits per pad (61 used)


@dataclass
class FrameResult:
    """What a frame cost and produced: counts, lengths and a fingerprint, never key bits."""

    n_bits: int
    errors_corrected: int
    qber: float
    leak_ec_bits: int
    round_trips: int
    efficiency: float
    verified: bool
    authenticated: bool
    verification_bits: float
    auth_bits: int
    key_bits: int
    replenished_bits: int
    fingerprint: str  # first 16 hex digits of SHA-256 of the final key ("" without a key)
    outcome: str  # "key", or why the frame yields nothing

    def as_dict(self) -> dict:
        return asdict(self)


class LocalPeer:
    """The source's side in memory (tests, benchmarks, offline): same calls as the driver."""

    def __init__(self, key_of_pulse, pool_key: bytes):
        self._key_of = key_of_pulse  # pulse indices -> the source's bits
        self.key = np.zeros(0, np.uint8)
        self.final = b""
        self.shuffles: list[np.ndarray] = []
        self.pool = KeyPool(pool_key)
        self.transcript = Transcript()

    def dist_frame(self, indices, log=None):
        idx = np.ascontiguousarray(indices, dtype="<i8")
        self.key = np.asarray(self._key_of(idx), np.uint8)
        self.transcript, self.final, self.shuffles = Transcript(), b"", []
        self.transcript.add("B", idx.tobytes())
        if log:
            log("B", idx.tobytes())

    def dist_shuffle(self, perm, log=None):
        data = np.ascontiguousarray(perm, dtype="<i4").tobytes()
        self.shuffles.append(np.asarray(perm, np.int64))
        self.transcript.add("B", data)
        if log:
            log("B", data)

    def dist_parities(self, records, log=None):
        rec = np.ascontiguousarray(records, dtype="<i8").reshape(-1, 5)
        n = len(self.key)
        out = np.array(
            [
                int(self.key[self.shuffles[r][(mul * np.arange(lo, hi) + off) % n]].sum() & 1)
                for r, off, mul, lo, hi in rec.tolist()
            ],
            np.uint8,
        )
        for d, p in (("B", rec.tobytes()), ("A", out.tobytes())):
            self.transcript.add(d, p)
            if log:
                log(d, p)
        return out

    def dist_hash(self, points, log=None):
        pts = np.ascontiguousarray(points, dtype="<u8")
        out = poly_hash(self.key, pts)
        for d, p in (("B", pts.tobytes()), ("A", out.astype("<u8").tobytes())):
            self.transcript.add(d, p)
            if log:
                log(d, p)
        return out

    def dist_amplify(self, m, seed_bits, log=None):
        bits = np.asarray(seed_bits, np.uint8)
        payload = int(m).to_bytes(8, "little") + np.packbits(bits, bitorder="little").tobytes()
        out = toeplitz(self.key, bits[: len(self.key) + m - 1], m)
        self.final = np.packbits(out, bitorder="little").tobytes()[: m // 8]
        self.transcript.add("B", payload)
        if log:
            log("B", payload)

    def dist_tag(self, tag):
        data = self.transcript.data()
        h = wc_tag(data, self.pool.hash_key(), 0)
        want, pad2 = (h + self.pool.take_pad()) % int(P61), self.pool.take_pad()
        self.transcript = Transcript()
        if tag != want:
            self.key, self.final = np.zeros(0, np.uint8), b""
            return False, 0
        return True, (h + pad2) % int(P61)

    def dist_replenish(self, n_bytes):
        self.pool.replenish(self.final[:n_bytes])
        self.final = self.final[n_bytes:]


def distil_frame(
    peer,
    indices: np.ndarray,
    bob: np.ndarray,
    qber_estimate: float,
    pool: KeyPool,
    key_length,
    *,
    schedule: str = "yan",
    eps_cor: float = 1e-15,
    plan: CascadePlan | None = None,
    replenish: bool = True,
    on_oracle=None,
) -> tuple[FrameResult, bytes]:
    """Distil one frame. ``key_length(leak_ec, verification_bits, auth_bits) -> int`` is the
    secure length the caller's finite-key bound allows with these charges. Returns the result
    and the final key (bytes, in memory; b"" when the frame yields nothing). ``on_oracle``
    (tests) may change a parity answer as a man in the middle would."""
    n = len(bob)
    transcript = Transcript()
    log = transcript.add
    peer.dist_frame(indices, log)
    plan = plan or CascadePlan.make(schedule, n, qber_estimate)
    for row in plan.perm:
        peer.dist_shuffle(row, log)

    def oracle(passes, lo, hi):
        rec = np.stack(
            [plan.perm_of[passes], plan.off[passes, 0], plan.off[passes, 1], lo, hi], axis=1
        )
        ans = peer.dist_parities(rec, log)
        return on_oracle(ans) if on_oracle else ans

    rec = cascade(plan, bob, oracle)
    qber = rec.corrected / n
    h = binary_entropy(qber)
    eff = rec.leak_bits / (n * h) if h > 0 else math.inf
    points = verification_points(int.from_bytes(os.urandom(8), "little"))
    theirs = peer.dist_hash(points, log)
    verified = bool(np.array_equal(np.asarray(theirs, np.uint64), poly_hash(rec.bits, points)))
    ver_bits = verification_cost_bits(n, eps_cor)
    auth_bits = AUTH_BITS_PER_FRAME
    m = int(key_length(rec.leak_bits, ver_bits, auth_bits)) if verified else 0
    m -= m % 8  # whole bytes: the key's unit downstream (both sides cut the same way)
    m = min(m, n)
    final = b""
    if m > 0:
        seed = np.random.default_rng(int.from_bytes(os.urandom(16), "little")).integers(
            0, 2, n + m - 1, dtype=np.uint8
        )
        peer.dist_amplify(m, seed, log)
        final = np.packbits(toeplitz(rec.bits, seed, m), bitorder="little").tobytes()
    data = transcript.data()
    hsh = wc_tag(data, pool.hash_key(), 0)
    mine, pad2 = (hsh + pool.take_pad()) % int(P61), pool.take_pad()
    accepted, their_tag = peer.dist_tag(mine)
    authenticated = accepted and their_tag == (hsh + pad2) % int(P61)
    if not verified:
        outcome = "verification failed: the frame yields no key"
    elif not authenticated:
        outcome = "authentication failed: the frame is discarded"
    elif m <= 0:
        outcome = "no secure key at this length"
    else:
        outcome = "key"
    if outcome != "key":
        final = b""
    replenished = 0
    if final and replenish:
        k = min(AUTH_BITS_PER_FRAME // 8, len(final))
        pool.replenish(final[:k])
        peer.dist_replenish(k)
        final = final[k:]
        replenished = 8 * k
    fp = hashlib.sha256(final).hexdigest()[:16] if final else ""
    res = FrameResult(
        n_bits=n,
        errors_corrected=rec.corrected,
        qber=qber,
        leak_ec_bits=rec.leak_bits,
        round_trips=rec.round_trips,
        efficiency=eff,
        verified=verified,
        authenticated=authenticated,
        verification_bits=ver_bits,
        auth_bits=auth_bits,
        key_bits=8 * len(final),
        replenished_bits=replenished,
        fingerprint=fp,
        outcome=outcome,
    )
    return res, final
