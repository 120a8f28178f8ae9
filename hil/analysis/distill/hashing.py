"""Universal hashing for distillation: verification, Wegman-Carter tags, Toeplitz extraction.

* Polynomial hashing over the prime field GF(p), p = 2^61 - 1: a message of d coefficients
  (56-bit words of the key, then its length) is evaluated at a secret point r. Two different
  messages collide for at most d values of r (a nonzero polynomial of degree <= d has at most d
  roots), so the family is d/p-almost universal (Carter and Wegman, JCSS 18 (1979); the
  polynomial form: den Boer 1993, Bierbrauer et al. 1994; Stinson 1994). Verification uses
  ``VERIFY_HASHES`` independent points: collision <= (d/p)^r.
* Wegman-Carter authentication (Wegman and Carter, JCSS 22 (1981)): tag = h_r(m) + s mod p with
  s a fresh uniform pad from the pre-shared key pool; h_r is d/p-almost Delta-universal, so a
  forger succeeds with probability at most d/p per tag whatever he saw. r is reused, s never.
* Toeplitz hashing: the m x n Toeplitz matrix over GF(2) from an (n + m - 1)-bit seed is a
  two-universal family (Carter-Wegman 1979; Krawczyk 1994; its use for privacy amplification:
  Hayashi and Tsurumaru, IEEE TIT 62 (2016); Tang et al., Sci. Rep. 9, 15733 (2019)). The seed
  convention is cryptomite's (Foreman et al. 2024), so outputs are bit-exact with
  ``cryptomite.Toeplitz(n, m).extract(x, seed)``: out[i] = sum_j x[j] g[i - j + n - 1] mod 2
  with g = seed[m:] followed by seed[:m]. That is the coefficient n - 1 + i of the product
  x(z) g(z) in GF(2)[z]; ``toeplitz_clmul`` computes it exactly with the carry-less multiply,
  ``toeplitz_fft`` and ``toeplitz_ntt`` as an integer convolution taken mod 2.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

P61 = np.uint64((1 << 61) - 1)
_M32 = np.uint64(0xFFFFFFFF)
_M29 = np.uint64((1 << 29) - 1)
VERIFY_HASHES = 2  # independent evaluation points of the verification hash


@njit(cache=True, inline="always")
def _mulmod61(a, b):
    """a * b mod 2^61 - 1 for a, b < 2^61, in 64-bit halves (2^61 = 1 and 2^64 = 8 mod p)."""
    a_lo = a & _M32
    a_hi = a >> np.uint64(32)
    b_lo = b & _M32
    b_hi = b >> np.uint64(32)
    lo = a_lo * b_lo
    mid = a_lo * b_hi + a_hi * b_lo
    hi = a_hi * b_hi
    r = (lo & P61) + (lo >> np.uint64(61)) + (mid >> np.uint64(29))
    r += ((mid & _M29) << np.uint64(32)) + (hi << np.uint64(3))
    r = (r & P61) + (r >> np.uint64(61))
    r = (r & P61) + (r >> np.uint64(61))
    return r - P61 if r >= P61 else r


@njit(cache=True)
def _poly_eval(words, length, r):
    """Horner: sum_i words[i] r^(d - i) + length r^0, over GF(2^61 - 1)."""
    h = np.uint64(0)
    for i in range(len(words)):
        h = _mulmod61(h, r) + words[i]
        if h >= P61:
            h -= P61
    h = _mulmod61(h, r) + np.uint64(length)
    return h - P61 if h >= P61 else h


@njit(cache=True)
def _poly_eval_many(words, length, rs):
    """_poly_eval at several points in one sweep (independent chains overlap in the pipeline)."""
    k = len(rs)
    h = np.zeros(k, np.uint64)
    for i in range(len(words)):
        w = words[i]
        for j in range(k):
            v = _mulmod61(h[j], rs[j]) + w
            h[j] = v - P61 if v >= P61 else v
    for j in range(k):
        v = _mulmod61(h[j], rs[j]) + np.uint64(length)
        h[j] = v - P61 if v >= P61 else v
    return h


@njit(cache=True)
def _words56(data):
    """Bytes -> 56-bit little-endian words (7 bytes each, the last zero-padded): the field
    coefficients (each < 2^56 < p)."""
    nw = (len(data) + 6) // 7
    out = np.zeros(nw, np.uint64)
    for w in range(nw):
        v = np.uint64(0)
        for t in range(min(7, len(data) - 7 * w) - 1, -1, -1):
            v = (v << np.uint64(8)) | np.uint64(data[7 * w + t])
        out[w] = v
    return out


def message_words(data) -> np.ndarray:
    """A byte string (or uint8 array) as field coefficients: 7-byte little-endian words."""
    return _words56(np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray)
                    else data)  # fmt: skip


def poly_hash(bits: np.ndarray, points) -> np.ndarray:
    """The polynomial hash of a bit string (uint8 0/1, packed little-endian into bytes, then
    7-byte coefficients, then its length in bits) at each point, uint64 per point."""
    words = _words56(np.packbits(np.asarray(bits, np.uint8), bitorder="little"))
    return _poly_eval_many(words, len(bits), np.asarray(points, np.uint64))


def poly_collision_bound(n_bits: int) -> float:
    """Collision probability of two different strings of n_bits at one random point: d/p."""
    d = (n_bits + 55) // 56 + 1
    return d / float(P61)


def verification_points(seed: int) -> np.ndarray:
    """The receiver's seed -> VERIFY_HASHES points in GF(2^61 - 1) (the seed is public after
    reconciliation; the hash only has to be independent of the errors left)."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, int(P61), VERIFY_HASHES, dtype=np.uint64)


def verification_cost_bits(n_bits: int, eps_cor: float) -> float:
    """Key length charged for verification: the disclosed tag bits or log2(2/eps_cor) (Lim et
    al., PRA 89, 022307 (2014)), whichever is larger. Raises if the hash cannot reach eps_cor."""
    bound = poly_collision_bound(n_bits) ** VERIFY_HASHES
    if bound > eps_cor:
        raise ValueError(
            f"verification: collision bound {bound:.3g} for {n_bits} bits exceeds eps_cor "
            f"{eps_cor:g} (use shorter blocks or a larger eps_cor)"
        )
    return max(61.0 * VERIFY_HASHES, math.log2(2 / eps_cor))


# ---------------------------------------------------------------- Wegman-Carter (pool of key)


class KeyPool:
    """Pre-shared secret key for authentication tags: consumed bit by bit, never reused, and
    replenished from distilled key. Holds bytes in memory only; prints lengths, never bits."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError(f"authentication key pool of {len(key)} bytes: need at least 16")
        # the first 8 bytes are the hash key r (reused, Wegman-Carter 1981); the rest are pads
        self._r = int.from_bytes(key[:8], "little") % int(P61) or 1
        self._pads = bytearray(key[8:])
        self.consumed_bits = 0
        self.replenished_bits = 0

    def __repr__(self) -> str:
        return f"KeyPool({len(self._pads) * 8} pad bits left, {self.consumed_bits} consumed)"

    @property
    def available_bits(self) -> int:
        return len(self._pads) * 8

    def hash_key(self) -> int:
        return self._r

    def take_pad(self) -> int:
        """A uniform element of GF(2^61 - 1) from 64 fresh bits (61 used; value p rejected)."""
        while True:
            if len(self._pads) < 8:
                raise RuntimeError(
                    "authentication key pool exhausted: replenish it from distilled key "
                    "(or give a larger pre-shared pool in the bench file)"
                )
            chunk, self._pads = bytes(self._pads[:8]), self._pads[8:]
            self.consumed_bits += 64
            s = int.from_bytes(chunk, "little") & int(P61)
            if s != int(P61):
                return s

    def replenish(self, key: bytes) -> None:
        self._pads.extend(key)
        self.replenished_bits += 8 * len(key)


def wc_tag(data: bytes, r: int, pad: int) -> int:
    """Wegman-Carter tag of a message: (poly_r(data) + pad) mod 2^61 - 1."""
    h = int(_poly_eval(message_words(data), len(data), np.uint64(r)))
    return (h + pad) % int(P61)


def wc_forgery_bound(n_bytes: int) -> float:
    """Probability that a forged message passes one tag: d/p (d coefficients incl. length)."""
    return ((n_bytes + 6) // 7 + 1) / float(P61)


class Transcript:
    """Running authenticated transcript of one block's classical messages (both directions):
    the tag at the end covers every message, so one tag (and one pad) per side per block."""

    def __init__(self):
        self._parts: list[bytes] = []
        self.n_bytes = 0

    def add(self, direction: str, payload: bytes) -> None:
        part = direction.encode() + len(payload).to_bytes(8, "little") + payload
        self._parts.append(part)
        self.n_bytes += len(part)

    def data(self) -> bytes:
        return b"".join(self._parts)


# ---------------------------------------------------------------------------- Toeplitz


def toeplitz_reference(x: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    """Plain numpy reference (O(n m)): the cryptomite convention, row by row."""
    n = len(x)
    g = np.concatenate([seed[m:], seed[:m]]).astype(np.int64)
    x = x.astype(np.int64)
    out = np.empty(m, np.uint8)
    for i in range(m):
        out[i] = int(np.dot(g[i : i + n][::-1], x)) & 1
    return out


def _check_sizes(x, seed, m):
    n = len(x)
    if not 0 < m <= n or len(seed) != n + m - 1:
        raise ValueError(
            f"Toeplitz: need 0 < m <= n and a seed of n + m - 1 bits, got n={n}, m={m}, "
            f"seed={len(seed)}"
        )


def _smooth_size(k: int) -> int:
    """Smallest 2^a 3^b 5^c >= k (sizes pocketfft transforms fastest)."""
    best = 1 << (k - 1).bit_length()
    f5 = 1
    while f5 < best:
        f35 = f5
        while f35 < best:
            v = f35
            while v < k:
                v *= 2
            best = min(best, v)
            f35 *= 3
        f5 *= 5
    return best


def fft_rounding_bound(n: int, weight_x: int, weight_g: int, size: int) -> float:
    """A priori bound on the float64 FFT convolution error (Brent, Percival and Zimmermann,
    "Error bounds on complex floating-point multiplication with an FFT", 2010, Thm. 3.6):
    ||z' - z||_inf <= ||x||_2 ||y||_2 ((1+e)^3L (1+e sqrt5)^(3L+1) (1+b)^3L - 1), L = log2 N,
    e = 2^-53, with twiddle error b taken as 2e (pocketfft computes its twiddles to ~1 ulp)."""
    e = 2.0**-53
    b = 2 * e
    L = math.ceil(math.log2(max(size, 2)))
    growth = (1 + e) ** (3 * L) * (1 + e * math.sqrt(5)) ** (3 * L + 1) * (1 + b) ** (3 * L) - 1
    return math.sqrt(weight_x) * math.sqrt(weight_g) * growth


def toeplitz_fft(x: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    """Toeplitz hash by a float64 real FFT of 5-smooth size N >= n + m - 1 (the cyclic wrap
    then only lands below output index n - 1). Exact: the a priori rounding bound must be
    < 1/4 and every coefficient is checked within 1/4 of an integer, else ArithmeticError."""
    _check_sizes(x, seed, m)
    n = len(x)
    size = _smooth_size(n + m - 1)
    wx, wg = int(np.count_nonzero(x)), int(np.count_nonzero(seed))
    bound = fft_rounding_bound(n, wx, wg, size)
    if bound >= 0.25:
        raise ArithmeticError(f"Toeplitz FFT: rounding bound {bound:.3g} >= 1/4 at n={n}")
    g = np.zeros(size, np.float64)
    g[: n - 1] = seed[m:]
    g[n - 1 : n + m - 1] = seed[:m]
    xf = np.zeros(size, np.float64)
    xf[:n] = x
    spec = np.fft.rfft(xf)
    spec *= np.fft.rfft(g)
    z = np.fft.irfft(spec, size)[n - 1 : n + m - 1]
    r = np.rint(z)
    if m and float(np.abs(z - r).max()) >= 0.25:
        raise ArithmeticError("Toeplitz FFT: a coefficient is not within 1/4 of an integer")
    return (r.astype(np.int64) & 1).astype(np.uint8)


# NTT over p = 998244353 = 119 * 2^23 + 1 (primitive root 3): exact, since every coefficient of
# the 0/1 convolution is at most min(n, m) < p. Sizes up to 2^23.
NTT_P = 998244353
NTT_G = 3


@njit(cache=True, inline="always")
def _mulmod(a, b):
    return (a * b) % 998244353


@njit(cache=True)
def _powmod(a, e):
    r = 1
    a %= 998244353
    while e:
        if e & 1:
            r = r * a % 998244353
        a = a * a % 998244353
        e >>= 1
    return r


@njit(cache=True)
def _ntt(a, invert):
    n = len(a)
    j = 0
    for i in range(1, n):
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j ^= bit
        if i < j:
            a[i], a[j] = a[j], a[i]
    length = 2
    while length <= n:
        w = _powmod(3, (998244353 - 1) // length)
        if invert:
            w = _powmod(w, 998244353 - 2)
        half = length // 2
        tw = np.empty(half, np.int64)
        tw[0] = 1
        for k in range(1, half):
            tw[k] = tw[k - 1] * w % 998244353
        for i in range(0, n, length):
            for k in range(half):
                u = a[i + k]
                v = a[i + k + half] * tw[k] % 998244353
                s = u + v
                a[i + k] = s - 998244353 if s >= 998244353 else s
                d = u - v
                a[i + k + half] = d + 998244353 if d < 0 else d
        length <<= 1
    if invert:
        inv_n = _powmod(n, 998244353 - 2)
        for i in range(n):
            a[i] = a[i] * inv_n % 998244353


@njit(cache=True)
def _toeplitz_ntt(x, seed, m):
    n = len(x)
    size = 1
    while size < n + m - 1:
        size <<= 1
    g = np.zeros(size, np.int64)
    g[: n - 1] = seed[m:]
    g[n - 1 : n + m - 1] = seed[:m]
    xf = np.zeros(size, np.int64)
    xf[:n] = x
    _ntt(xf, False)
    _ntt(g, False)
    for i in range(size):
        xf[i] = xf[i] * g[i] % 998244353
    _ntt(xf, True)
    out = np.empty(m, np.uint8)
    for i in range(m):
        out[i] = xf[n - 1 + i] & 1
    return out


def toeplitz_ntt(x: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    """Toeplitz hash by an exact number-theoretic transform (no rounding question)."""
    _check_sizes(x, seed, m)
    if len(x) + m - 1 > 1 << 23:
        raise ValueError(f"Toeplitz NTT: n + m - 1 = {len(x) + m - 1} exceeds 2^23")
    return _toeplitz_ntt(
        np.ascontiguousarray(x, np.int64), np.ascontiguousarray(seed, np.int64), int(m)
    )


# Carry-less multiplication: the Toeplitz hash is the slice [n - 1, n + m - 1) of the product
# x(z) g(z) in GF(2)[z], so multiplying bit-packed 64-bit words with the CPU's carry-less
# multiply (PCLMULQDQ) and Karatsuba (Karatsuba and Ofman 1962; for GF(2)[z]: Bernstein,
# "Batch binary Edwards", CRYPTO 2009, and the gf2x library of Brent, Gaudry, Thome and
# Zimmermann, ANTS 2008) is exact by construction: there is no rounding to bound or check.
_SCHOOL_MAX = 63  # Karatsuba stops at <= 63 words (measured: 4- to 16-word bases were slower)


def _clmul_supported() -> bool:
    import llvmlite.binding as llvm

    return "+pclmul" in llvm.get_host_cpu_features().flatten().split(",")


CLMUL = _clmul_supported()


@intrinsic
def _clmul64(typingctx, a, b):
    """(lo, hi) 64-bit halves of the carry-less product of two uint64 (llvm.x86.pclmulqdq)."""
    sig = types.UniTuple(types.uint64, 2)(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i64, i32 = ir.IntType(64), ir.IntType(32)
        v2 = ir.VectorType(i64, 2)
        undef = ir.Constant(v2, ir.Undefined)
        va = builder.insert_element(undef, args[0], ir.Constant(i32, 0))
        vb = builder.insert_element(undef, args[1], ir.Constant(i32, 0))
        fnty = ir.FunctionType(v2, [v2, v2, ir.IntType(8)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.pclmulqdq")
        r = builder.call(fn, [va, vb, ir.Constant(ir.IntType(8), 0)])
        lo = builder.extract_element(r, ir.Constant(i32, 0))
        hi = builder.extract_element(r, ir.Constant(i32, 1))
        return context.make_tuple(builder, signature.return_type, [lo, hi])

    return sig, codegen


@njit(cache=True, nogil=True)
def _clmul_school(a, b, out, n):
    for i in range(2 * n):
        out[i] = 0
    for i in range(n):
        ai = a[i]
        prev = np.uint64(0)  # high half of the previous word's product (one store per word)
        for j in range(n):
            lo, hi = _clmul64(ai, b[j])
            out[i + j] ^= lo ^ prev
            prev = hi
        out[i + n] ^= prev


@njit(cache=True, nogil=True)
def _clmul_kara(a, b, out, n, scratch):
    """out[:2n] = a[:n] b[:n] in GF(2)[z]; n = c 2^k with c <= _SCHOOL_MAX; scratch >= 4n."""
    if n <= _SCHOOL_MAX:
        _clmul_school(a, b, out, n)
        return
    h = n // 2
    _clmul_kara(a[:h], b[:h], out[:n], h, scratch)
    _clmul_kara(a[h:], b[h:], out[n:], h, scratch)
    sa = scratch[:h]
    sb = scratch[h:n]
    mid = scratch[n : 2 * n]
    for i in range(h):
        sa[i] = a[i] ^ a[h + i]
        sb[i] = b[i] ^ b[h + i]
    _clmul_kara(sa, sb, mid, h, scratch[2 * n :])
    for i in range(n):
        mid[i] ^= out[i] ^ out[n + i]
    for i in range(n):
        out[h + i] ^= mid[i]


def _padded_words(w: int) -> int:
    """Smallest c 2^k >= w with c <= _SCHOOL_MAX (so every Karatsuba level halves evenly)."""
    k = 0
    while -(-w // (1 << k)) > _SCHOOL_MAX:
        k += 1
    return -(-w // (1 << k)) << k


def _words64(bits: np.ndarray, nw: int) -> np.ndarray:
    packed = np.packbits(bits, bitorder="little")
    out = np.zeros(nw, np.uint64)
    out.view(np.uint8)[: len(packed)] = packed
    return out


_POOL = None


def _chunk_product(xw, gw, a, b, w, p):
    xa = np.zeros(p, np.uint64)
    gb = np.zeros(p, np.uint64)
    seg = xw[a * w : (a + 1) * w]
    xa[: len(seg)] = seg
    seg = gw[b * w : (b + 1) * w]
    gb[: len(seg)] = seg
    out = np.empty(2 * p, np.uint64)
    _clmul_kara(xa, gb, out, p, np.empty(4 * p, np.uint64))
    return out


def toeplitz_clmul(x: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    """Toeplitz hash as a GF(2)[z] product of bit-packed words (carry-less multiply, Karatsuba).
    x and g are cut into chunks of w words; only the chunk pairs whose product reaches output
    bits [n - 1, n + m - 1) are multiplied, on one thread per core (the kernels drop the GIL)."""
    global _POOL
    _check_sizes(x, seed, m)
    if not CLMUL:
        raise RuntimeError("Toeplitz clmul: this CPU has no carry-less multiply; use 'fft'")
    n = len(x)
    g = np.concatenate([seed[m:], seed[:m]])
    nxw, ngw = -(-n // 64), -(-(n + m - 1) // 64)
    w = max(1, -(-nxw // 2))  # two chunks of x: balanced products, few of them (measured)
    p = _padded_words(w)
    xw, gw = _words64(np.asarray(x, np.uint8), nxw), _words64(np.asarray(g, np.uint8), ngw)
    lo_word, hi_word = (n - 1) // 64, (n + m - 2) // 64 + 1  # words holding the output bits
    bw, ng = 64 * w, n + m - 1  # chunk width in bits
    pairs = [  # degrees of chunk a times chunk b: [bw (a + b), top of x chunk + top of g chunk]
        (a, b)
        for a in range(-(-n // bw))
        for b in range(-(-ng // bw))
        if bw * (a + b) <= ng - 1 and min(n, bw * (a + 1)) + min(ng, bw * (b + 1)) - 2 >= n - 1
    ]
    if _POOL is None or _POOL[0] != os.getpid():  # a forked child has no pool threads
        _POOL = (os.getpid(), ThreadPoolExecutor(os.cpu_count() or 1, "toeplitz"))
    prods = _POOL[1].map(lambda ab: (ab, _chunk_product(xw, gw, ab[0], ab[1], w, p)), pairs)
    acc = np.zeros(hi_word - lo_word, np.uint64)
    for (a, b), prod in prods:
        off = (a + b) * w  # product word index of prod[0]
        s, e = max(lo_word, off), min(hi_word, off + 2 * p)
        acc[s - lo_word : e - lo_word] ^= prod[s - off : e - off]
    bits = np.unpackbits(acc.view(np.uint8), bitorder="little")
    start = n - 1 - 64 * lo_word
    return bits[start : start + m].copy()


def toeplitz(x: np.ndarray, seed: np.ndarray, m: int, method: str | None = None) -> np.ndarray:
    """Privacy amplification: the m-bit Toeplitz hash of x under seed (cryptomite convention).
    ``method`` "clmul" (carry-less multiply, exact; the default where the CPU has it and the
    fastest here, see benchmarks/bench_distill.py), "fft" (float64, rounding proven and
    checked) or "ntt" (exact by construction)."""
    method = method or ("clmul" if CLMUL else "fft")
    if method == "clmul":
        return toeplitz_clmul(x, seed, m)
    if method == "fft":
        return toeplitz_fft(x, seed, m)
    if method == "ntt":
        return toeplitz_ntt(x, seed, m)
    raise ValueError(f"Toeplitz method {method!r}: 'clmul', 'fft' or 'ntt'")
