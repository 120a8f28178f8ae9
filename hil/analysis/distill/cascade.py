"""Cascade information reconciliation (Bob's side), batched: one binary-search round per message.

Brassard and Salvail, "Secret-key reconciliation by public discussion", EUROCRYPT '93 (BINARY,
the cascade effect, the original schedule); Martinez-Mateo, Pacher, Peev, Ciurana, Martin,
"Demystifying the information reconciliation protocol Cascade", QIC 15 (2015), arXiv:1407.3257
(BICONF modification, options 7 and 8, block-parity inference); Yan et al., ICNC 2008 (the
10-pass schedule). Efficiency f = leak / (n h(Q)) with leak the number of parity bits Alice
discloses (one per answered range), the convention of these papers.

Every parity Bob needs from Alice is a *range* of one pass's shuffled order: (pass, lo, hi) asks
the parity of Alice's bits at positions perm_p[(lo + off_p) mod n] .. for lo <= i < hi. All the
active binary searches advance one step per round, so one round is one message to the oracle;
a local oracle (Alice's bits in memory) answers inside numba, the source answers over the bench.
The shuffles are public: a :class:`CascadePlan` is made once per (n, schedule, Q) from a public
seed and reused for every frame (each frame's errors are independent of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

SCHEDULES = ("original", "biconf", "yan", "opt7", "opt8")
BICONF_STREAK = 10  # error-free BICONF rounds before stopping (each misses an odd error w.p. 1/2)
MAX_PASSES = 64


def binary_entropy(q: float) -> float:
    if q <= 0 or q >= 1:
        return 0.0
    return -q * math.log2(q) - (1 - q) * math.log2(1 - q)


def block_sizes(schedule: str, n: int, q: float) -> tuple[list[int], bool, bool]:
    """(block size per pass, infer the last block's parity, BICONF after the listed passes).

    Table of distillation.md; k_i capped at n/2 (a pass is at least two blocks)."""
    q = min(max(float(q), 1e-4), 0.25)
    half = max(n // 2, 1)
    if schedule == "original":  # Brassard-Salvail 1993: k1 = 0.73/Q, doubling, 4 passes
        k1 = math.ceil(0.73 / q)
        ks, infer, biconf = [k1 * 2**i for i in range(4)], False, False
    elif schedule == "biconf":  # Demystifying sec. 5 (mod. 1): k1 = 0.92/Q, k2 = 3 k1, BICONF
        k1 = math.ceil(0.92 / q)
        ks, infer, biconf = [k1, 3 * k1], False, True
    elif schedule == "yan":  # Yan et al. 2008: k1 = 0.8/Q, k2 = 5 k1, then n/2, 10 passes
        k1 = math.ceil(0.80 / q)
        ks, infer, biconf = [k1, 5 * k1] + [half] * 8, False, False
    elif schedule == "opt7":  # Demystifying opt. 7: k1 = 2^ceil(log2 1/Q), k2 = 4 k1, n/2, 14
        k1 = 2 ** math.ceil(math.log2(1 / q))
        ks, infer, biconf = [k1, 4 * k1] + [half] * 12, True, False
    elif schedule == "opt8":  # Demystifying opt. 8: a = log2(1/Q) - 0.5, 2^ceil((a+12)/2), 4096
        a = math.log2(1 / q) - 0.5
        ks = [2 ** math.ceil(a), 2 ** math.ceil((a + 12) / 2), 4096] + [half] * 11
        infer, biconf = True, False
    else:
        raise ValueError(f"Cascade schedule {schedule!r}: one of {', '.join(SCHEDULES)}")
    return [int(min(max(k, 1), half)) for k in ks], infer, biconf


def _splitmix(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return state, z ^ (z >> 31)


@dataclass
class CascadePlan:
    """The public part of a schedule for frames of n bits: block sizes and shuffles per pass.

    ``perm[j]`` is the j-th shuffle; pass p reads shuffle ``perm_of[p]`` through the affine map
    ``off[p]`` (identity for the main passes; BICONF rounds: a fresh random half each time)."""

    schedule: str
    n: int
    qber: float
    ks: np.ndarray
    perm_of: np.ndarray
    off: np.ndarray
    ask_blocks: np.ndarray  # blocks whose parity is asked at the pass start (BICONF: 1)
    infer_last: bool
    n_main: int  # passes before BICONF rounds
    biconf: bool
    perm: np.ndarray = field(repr=False)
    inv: np.ndarray = field(repr=False)
    smallest_first: bool = False  # advance only the searches in the smallest blocks each round

    def __post_init__(self):
        # sub-block cache: block j of pass p holds its binary-search tree at heap indices
        # j * wid[p] + h, h < 2 * 2^ceil(log2 k) (halves split at (lo + hi) // 2)
        self.wid = np.array([2 << max(int(k) - 1, 0).bit_length() for k in self.ks], np.int64)
        nb = (self.n + self.ks - 1) // self.ks
        self.cache_width = int((nb * self.wid).max())

    @classmethod
    def make(cls, schedule: str, n: int, qber: float, seed: int = 1) -> CascadePlan:
        if n < 2:
            raise ValueError(f"Cascade frame of {n} bits: need at least 2")
        ks, infer, biconf = block_sizes(schedule, n, qber)
        n_main = len(ks)
        rng = np.random.default_rng(seed)  # public shuffles: seeded, reproducible on both sides
        n_perm = n_main + (1 if biconf else 0)
        perm = np.empty((n_perm, n), np.int32)
        for j in range(n_perm):
            perm[j] = rng.permutation(n).astype(np.int32)
        inv = np.empty_like(perm)
        ar = np.arange(n, dtype=np.int32)
        for j in range(n_perm):
            inv[j, perm[j]] = ar
        passes = MAX_PASSES if biconf else n_main
        ks_all = np.array(ks + [n // 2] * (passes - n_main), np.int64)
        perm_of = np.array(list(range(n_main)) + [n_main] * (passes - n_main), np.int64)
        # off[p] = (offset, multiplier, multiplier^-1 mod n): BICONF rounds read the shared
        # shuffle through a random affine map, so each round's half is a fresh random half
        # (a rotation alone would keep two close errors together in every round)
        off = np.zeros((passes, 3), np.int64)
        off[:, 1:] = 1
        for p in range(n_main, passes):
            while True:
                mul = int(rng.integers(1, n)) if n > 2 else 1
                if math.gcd(mul, n) == 1:
                    break
            off[p] = (int(rng.integers(0, n)), mul, pow(mul, -1, n) if n > 1 else 1)
        ask = np.array(
            [(n + k - 1) // k for k in ks] + [1] * (passes - n_main), np.int64
        )  # a BICONF round asks the parity of its random half only
        # Demystifying's options correct the shortest blocks first (fewer parities asked in
        # long blocks whose error a short block finds anyway; more round trips)
        smallest_first = schedule in ("opt7", "opt8")
        return cls(schedule, n, float(qber), ks_all, perm_of, off, ask, infer, n_main, biconf,
                   perm, inv, smallest_first)  # fmt: skip

    def positions(self, p: int, lo: int, hi: int) -> np.ndarray:
        """Frame indices of pass ``p``'s positions lo..hi-1 (what a range query covers)."""
        o, mul, _ = (int(v) for v in self.off[p])
        t = np.arange(lo, hi, dtype=np.int64)
        return self.perm[self.perm_of[p], (mul * t + o) % self.n]


@dataclass
class CascadeResult:
    """Bob's corrected frame and what it cost (the corrected bits stay in memory)."""

    bits: np.ndarray = field(repr=False)
    leak_bits: int
    round_trips: int
    passes: int
    corrected: int

    def efficiency(self, qber: float) -> float:
        h = binary_entropy(qber)
        return self.leak_bits / (len(self.bits) * h) if h > 0 else math.inf


# ---------------------------------------------------------------------------------- kernels
# State (all numba arrays): b Bob's bits; fen[p] Fenwick tree (XOR) of Bob's bits in pass p's
# order; apar[p, j] Alice's parity of block j of pass p (-1 unknown); searches s_* with the
# known Alice parity of their current range; dirty (pass, block) pairs to re-check after flips.


@njit(cache=True, inline="always")
def _pos(inv, perm_of, off, n, p, bit):
    """Position of frame bit ``bit`` in pass p: t with perm[(mul t + off) mod n] = bit."""
    x = inv[perm_of[p], bit] - off[p, 0]
    if x < 0:
        x += n
    if off[p, 1] != 1:
        x = (x * off[p, 2]) % n
    return x


@njit(cache=True, inline="always")
def _src(off, n, p, t):
    """Index into the pass's shuffle of its position t: (mul t + off) mod n."""
    if off[p, 1] == 1:
        j = t + off[p, 0]
        return j - n if j >= n else j
    return (off[p, 1] * t + off[p, 0]) % n


@njit(cache=True)
def _fen_build(fen, b, perm, perm_of, off, n, p):
    row = perm[perm_of[p]]
    f = fen[p]
    f[0] = 0
    for i in range(n):
        f[i + 1] = b[row[_src(off, n, p, i)]]
    for i in range(1, n + 1):
        j = i + (i & -i)
        if j <= n:
            f[j] ^= f[i]


@njit(cache=True, inline="always")
def _fen_prefix(f, i):
    s = 0
    while i > 0:
        s ^= f[i]
        i -= i & -i
    return s


@njit(cache=True, inline="always")
def _fen_flip(f, n, i):
    i += 1
    while i <= n:
        f[i] ^= 1
        i += i & -i


@njit(cache=True, inline="always")
def _bob_par(fen, p, lo, hi):
    return _fen_prefix(fen[p], hi) ^ _fen_prefix(fen[p], lo)


@njit(cache=True)
def _pass_queries(ks, ask, n, p, q_pass, q_lo, q_hi):
    """Queries of pass p's opening message: the parities of its asked blocks."""
    k = ks[p]
    nq = ask[p]
    for j in range(nq):
        q_pass[j] = p
        q_lo[j] = j * k
        q_hi[j] = min((j + 1) * k, n)
    return nq


@njit(cache=True)
def _pass_open(fen, apar, ks, wid, cache, ask, n, p, ans, infer_last, total_par, s_pass, s_lo,
               s_hi, s_par, s_node, s_on, n_s):  # fmt: skip
    """Store the answered block parities, infer the last one when allowed, start searches."""
    k = ks[p]
    nb = (n + k - 1) // k
    acc = 0
    cache[p, : nb * wid[p]] = -1
    for j in range(nb):
        apar[p, j] = -1
        s_on[p, j] = 0
    for j in range(ask[p]):
        apar[p, j] = ans[j]
        acc ^= ans[j]
    if infer_last and total_par >= 0 and ask[p] == nb - 1:
        apar[p, nb - 1] = total_par ^ acc
    for j in range(nb):
        if apar[p, j] < 0:
            continue
        lo = j * k
        hi = min(lo + k, n)
        if _bob_par(fen, p, lo, hi) != apar[p, j]:
            s_pass[n_s] = p
            s_lo[n_s] = lo
            s_hi[n_s] = hi
            s_par[n_s] = apar[p, j]
            s_node[n_s] = 1
            s_on[p, j] = 1
            n_s += 1
    return n_s


@njit(cache=True)
def _round_queries(fen, apar, ks, wid, cache, s_pass, s_lo, s_hi, s_par, s_node, s_on, n_s,
                   q_pass, q_lo, q_hi, q_ask, ans, smallest_first):  # fmt: skip
    """Drop searches whose range a correction made even; ask the left half of the others.

    Searches are compacted; query i belongs to search i. A half whose parity Alice already
    disclosed (cached from an earlier search of the same block: the sub-block reuse of
    Demystifying sec. 4) is answered from the cache (q_ask 0) and costs no leak. Returns
    (searches kept, ranges to ask)."""
    m = 0
    n_ask = 0
    kmin = len(fen[0])
    if smallest_first:
        for i in range(n_s):
            kmin = min(kmin, ks[s_pass[i]])
    for i in range(n_s):
        p = s_pass[i]
        lo = s_lo[i]
        hi = s_hi[i]
        par = s_par[i]
        node = s_node[i]
        if _bob_par(fen, p, lo, hi) == par:
            # a correction elsewhere made this range even: search the whole block again if it
            # is still odd (its dirty mark was skipped while this search held it)
            j = lo // ks[p]
            lo = j * ks[p]
            hi = min(lo + ks[p], len(fen[p]) - 1)
            par = apar[p, j]
            node = 1
            if _bob_par(fen, p, lo, hi) == par:
                s_on[p, j] = 0
                continue
        s_pass[m] = p
        s_lo[m] = lo
        s_hi[m] = hi
        s_par[m] = par
        s_node[m] = node
        q_pass[m] = p
        q_lo[m] = lo
        q_hi[m] = (lo + hi) // 2
        c = cache[p, (lo // ks[p]) * wid[p] + 2 * node]
        if ks[p] > kmin:
            q_ask[m] = 2  # waits: a search in a smaller block may correct its error first
        elif c >= 0:
            q_ask[m] = 0
            ans[m] = c
        else:
            q_ask[m] = 1
            n_ask += 1
        m += 1
    return m, n_ask


@njit(cache=True)
def _round_apply(b, fen, apar, ks, wid, cache, inv, perm, perm_of, off, n, n_open, ans, s_pass,
                 s_lo, s_hi, s_par, s_node, s_on, n_s, dirty_p, dirty_j, q_ask):  # fmt: skip
    """Narrow each search by its answer; a range of one bit is an error: flip it in every open
    pass (the cascade effect) and mark its blocks dirty; then start searches in dirty blocks
    that are now odd. Returns (searches, corrections)."""
    n_dirty = 0
    fixed = 0
    m = 0
    for i in range(n_s):
        p = s_pass[i]
        lo = s_lo[i]
        hi = s_hi[i]
        if q_ask[i] == 2:
            s_pass[m] = p
            s_lo[m] = lo
            s_hi[m] = hi
            s_par[m] = s_par[i]
            s_node[m] = s_node[i]
            m += 1
            continue
        mid = (lo + hi) // 2
        a = ans[i]
        node = s_node[i]
        base = (lo // ks[p]) * wid[p]
        cache[p, base + 2 * node] = a
        cache[p, base + 2 * node + 1] = s_par[i] ^ a
        if _bob_par(fen, p, lo, mid) != a:
            hi = mid
            par = a
            node = 2 * node
        else:
            par = s_par[i] ^ a
            lo = mid
            node = 2 * node + 1
        if hi - lo == 1:
            bit = perm[perm_of[p], _src(off, n, p, lo)]
            if _bob_par(fen, p, lo, hi) == par:  # corrected meanwhile by another search
                s_on[p, lo // ks[p]] = 0
                continue
            b[bit] ^= 1
            fixed += 1
            s_on[p, lo // ks[p]] = 0
            for q in range(n_open):
                x = _pos(inv, perm_of, off, n, q, bit)
                _fen_flip(fen[q], n, x)
                dirty_p[n_dirty] = q
                dirty_j[n_dirty] = x // ks[q]
                n_dirty += 1
            continue
        s_pass[m] = p
        s_lo[m] = lo
        s_hi[m] = hi
        s_par[m] = par
        s_node[m] = node
        m += 1
    for d in range(n_dirty):
        q = dirty_p[d]
        j = dirty_j[d]
        if s_on[q, j] or apar[q, j] < 0:
            continue
        lo = j * ks[q]
        hi = min(lo + ks[q], n)
        if _bob_par(fen, q, lo, hi) != apar[q, j]:
            s_pass[m] = q
            s_lo[m] = lo
            s_hi[m] = hi
            s_par[m] = apar[q, j]
            s_node[m] = 1
            s_on[q, j] = 1
            m += 1
    return m, fixed


@njit(cache=True)
def _local_answers(a_pre, perm, perm_of, off, n, p_built, nq, q_pass, q_lo, q_hi, q_ask, ans):
    """The local oracle: Alice's prefix parities per pass (built on first use)."""
    for i in range(nq):
        if q_ask[i] != 1:
            continue
        p = q_pass[i]
        if not p_built[p]:
            row = perm[perm_of[p]]
            acc = 0
            pre = a_pre[p]
            pre[0] = 0
            for t in range(n):
                acc ^= a_pre[-1, row[_src(off, n, p, t)]]
                pre[t + 1] = acc
            p_built[p] = True
        ans[i] = a_pre[p, q_hi[i]] ^ a_pre[p, q_lo[i]]


class _State:
    """Bob's arrays for one frame (sized by the plan)."""

    def __new__(cls, plan: CascadePlan, bob: np.ndarray):
        # the buffers of the plan's last frame are reused (fresh pages cost more than Cascade
        # itself at n = 1e5); every array is written before it is read within a frame
        st = plan.__dict__.get("_state")
        if st is None:
            st = super().__new__(cls)
            st._alloc(plan)
            plan.__dict__["_state"] = st
        st.b = np.array(bob, dtype=np.uint8, copy=True)
        return st

    def _alloc(self, plan: CascadePlan):
        n = plan.n
        passes = len(plan.ks)
        max_blocks = int((n + plan.ks.min() - 1) // plan.ks.min())
        self.fen = np.empty((passes, n + 1), np.uint8)
        self.apar = np.empty((passes, max_blocks), np.int8)
        self.s_on = np.zeros((passes, max_blocks), np.uint8)
        self.wid = plan.wid
        self.cache = np.empty((passes, plan.cache_width), np.int8)  # rows reset when used
        cap = passes * max_blocks + 1
        self.s_pass = np.empty(cap, np.int64)
        self.s_lo = np.empty(cap, np.int64)
        self.s_hi = np.empty(cap, np.int64)
        self.s_par = np.empty(cap, np.int8)
        self.s_node = np.empty(cap, np.int64)
        self.q_pass = np.empty(cap, np.int64)
        self.q_lo = np.empty(cap, np.int64)
        self.q_hi = np.empty(cap, np.int64)
        self.q_ask = np.ones(cap, np.uint8)
        self.ans = np.empty(cap, np.int8)
        self.dirty_p = np.empty(passes * max(cap, 1), np.int64)
        self.dirty_j = np.empty_like(self.dirty_p)


@njit(cache=True)
def _cascade_local(a, b, ks, ask, inv, perm, perm_of, off, n, n_main, biconf, infer_last, fen,
                   apar, s_on, wid, cache, s_pass, s_lo, s_hi, s_par, s_node, q_pass, q_lo, q_hi,
                   q_ask, ans, dirty_p, dirty_j, streak_needed, smallest_first):  # fmt: skip
    """The whole protocol against Alice's bits in memory: (leak, round trips, passes, fixed)."""
    passes = len(ks)
    a_pre = np.empty((passes + 1, n + 1), np.uint8)
    a_pre[-1, :n] = a
    p_built = np.zeros(passes, np.bool_)
    leak = 0
    rounds = 0
    fixed = 0
    total_par = -1
    streak = 0
    p = 0
    while p < passes:
        if p >= n_main and (not biconf or streak >= streak_needed):
            break
        _fen_build(fen, b, perm, perm_of, off, n, p)
        nq = _pass_queries(ks, ask, n, p, q_pass, q_lo, q_hi)
        nb = (n + ks[p] - 1) // ks[p]
        if infer_last and p > 0 and total_par >= 0 and nq == nb:
            nq -= 1  # Demystifying: the last block's parity follows from the frame's parity
        q_ask[:nq] = 1
        _local_answers(a_pre, perm, perm_of, off, n, p_built, nq, q_pass, q_lo, q_hi, q_ask, ans)
        leak += nq
        rounds += 1
        saved = ask[p]
        ask[p] = nq
        n_s = _pass_open(fen, apar, ks, wid, cache, ask, n, p, ans, infer_last, total_par,
                         s_pass, s_lo, s_hi, s_par, s_node, s_on, 0)  # fmt: skip
        ask[p] = saved
        if p == 0:
            total_par = 0
            for j in range(nb):
                total_par ^= apar[0, j]
        found = n_s > 0
        while n_s > 0:
            nq, n_ask = _round_queries(fen, apar, ks, wid, cache, s_pass, s_lo, s_hi, s_par,
                                       s_node, s_on, n_s, q_pass, q_lo, q_hi, q_ask, ans,
                                       smallest_first)  # fmt: skip
            if nq == 0:
                break
            if n_ask:
                _local_answers(a_pre, perm, perm_of, off, n, p_built, nq, q_pass, q_lo, q_hi,
                               q_ask, ans)  # fmt: skip
                leak += n_ask
                rounds += 1
            n_s, f = _round_apply(b, fen, apar, ks, wid, cache, inv, perm, perm_of, off, n, p + 1,
                                  ans, s_pass, s_lo, s_hi, s_par, s_node, s_on, nq, dirty_p,
                                  dirty_j, q_ask)  # fmt: skip
            fixed += f
        if p >= n_main:
            streak = 0 if found else streak + 1
        p += 1
    return leak, rounds, p, fixed


def cascade_local(plan: CascadePlan, alice: np.ndarray, bob: np.ndarray) -> CascadeResult:
    """Reconcile ``bob`` to ``alice`` (both uint8 0/1 of plan.n bits) with a local oracle."""
    alice = np.ascontiguousarray(alice, dtype=np.uint8)
    if len(alice) != plan.n or len(bob) != plan.n:
        raise ValueError(f"Cascade: frames of {len(alice)} and {len(bob)} bits, plan is {plan.n}")
    st = _State(plan, bob)
    leak, rounds, passes, fixed = _cascade_local(
        alice, st.b, plan.ks, plan.ask_blocks.copy(), plan.inv, plan.perm, plan.perm_of,
        plan.off, plan.n, plan.n_main, plan.biconf, plan.infer_last, st.fen, st.apar, st.s_on,
        st.wid, st.cache, st.s_pass, st.s_lo, st.s_hi, st.s_par, st.s_node, st.q_pass, st.q_lo,
        st.q_hi, st.q_ask, st.ans, st.dirty_p, st.dirty_j, BICONF_STREAK, plan.smallest_first,
    )  # fmt: skip
    return CascadeResult(st.b, int(leak), int(rounds), int(passes), int(fixed))


def cascade(plan: CascadePlan, bob: np.ndarray, oracle) -> CascadeResult:
    """Reconcile ``bob`` against a remote oracle: ``oracle(passes, lo, hi) -> parities`` gets
    one round's ranges (int64 arrays; pass p's positions lo..hi-1, see
    :meth:`CascadePlan.positions`) and returns Alice's parities (0/1), one message per round.
    The protocol is the one :func:`cascade_local` runs (same kernels, same leak and result)."""
    n = plan.n
    st = _State(plan, bob)
    ks, ask = plan.ks, plan.ask_blocks.copy()
    leak = rounds = fixed = 0
    total_par = -1
    streak = 0
    p = 0
    passes = len(ks)
    while p < passes:
        if p >= plan.n_main and (not plan.biconf or streak >= BICONF_STREAK):
            break
        _fen_build(st.fen, st.b, plan.perm, plan.perm_of, plan.off, n, p)
        nq = int(_pass_queries(ks, ask, n, p, st.q_pass, st.q_lo, st.q_hi))
        nb = (n + int(ks[p]) - 1) // int(ks[p])
        if plan.infer_last and p > 0 and total_par >= 0 and nq == nb:
            nq -= 1
        st.ans[:nq] = _ask(oracle, st.q_pass[:nq], st.q_lo[:nq], st.q_hi[:nq])
        leak += nq
        rounds += 1
        ask_p = ask.copy()
        ask_p[p] = nq
        n_s = _pass_open(st.fen, st.apar, ks, st.wid, st.cache, ask_p, n, p, st.ans,
                         plan.infer_last, total_par, st.s_pass, st.s_lo, st.s_hi, st.s_par,
                         st.s_node, st.s_on, 0)  # fmt: skip
        if p == 0:
            total_par = int(np.bitwise_xor.reduce(st.apar[0, :nb].astype(np.int64)))
        found = n_s > 0
        while n_s > 0:
            nq, n_ask = _round_queries(st.fen, st.apar, ks, st.wid, st.cache, st.s_pass, st.s_lo,
                                       st.s_hi, st.s_par, st.s_node, st.s_on, n_s, st.q_pass,
                                       st.q_lo, st.q_hi, st.q_ask, st.ans,
                                       plan.smallest_first)  # fmt: skip
            if nq == 0:
                break
            if n_ask:
                sel = np.flatnonzero(st.q_ask[:nq] == 1)
                st.ans[sel] = _ask(oracle, st.q_pass[sel], st.q_lo[sel], st.q_hi[sel])
                leak += int(n_ask)
                rounds += 1
            n_s, f = _round_apply(st.b, st.fen, st.apar, ks, st.wid, st.cache, plan.inv,
                                  plan.perm, plan.perm_of, plan.off, n, p + 1, st.ans, st.s_pass,
                                  st.s_lo, st.s_hi, st.s_par, st.s_node, st.s_on, nq, st.dirty_p,
                                  st.dirty_j, st.q_ask)  # fmt: skip
            fixed += int(f)
        if p >= plan.n_main:
            streak = 0 if found else streak + 1
        p += 1
    return CascadeResult(st.b, int(leak), int(rounds), int(p), int(fixed))


def _ask(oracle, q_pass, q_lo, q_hi) -> np.ndarray:
    nq = len(q_pass)
    ans = np.asarray(oracle(q_pass.copy(), q_lo.copy(), q_hi.copy()))
    if ans.shape != (nq,) or (nq and int(ans.max(initial=0)) > 1):
        raise ValueError(f"Cascade oracle answered {ans.shape} values for {nq} ranges")
    return ans.astype(np.int8)
