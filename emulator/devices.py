"""The emulated instruments of the default bench, each a command set over one shared Link.

Command sets are documented in ``emulator/README.md``: the attenuator follows the Keysight
8156A/8157xA manual, the power meter the Thorlabs PM100 manual, the switch the Thorlabs OSW
serial protocol; the QKD source, the four-channel detector unit, the time tagger and the
emulator's control instrument have command sets of this project's own.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import math
import re
import threading
import time
from collections import deque

import numpy as np
from numba import njit

from .link import LONG_CHUNK_PS, PS, Link
from .physics import dark_count_rate_hz, validate
from .scpi import (
    Block,
    Bool,
    Choice,
    Num,
    Optional,
    ScpiDevice,
    ScpiError,
    Str,
    block,
    split_message,
)

N_DETECTORS = 4
N_TAGGER_CHANNELS = 9  # 0 sync, 1..4 detectors, 5..7 spare, 8 software marker
MARKER_CHANNEL = 8
MAX_FETCH_TAGS = 1_000_000  # a fetch never returns more than this many tags in one block
MAX_SIFT_INDICES = 1_000_000
H_PLANCK = 6.62607015e-34  # J s (SI 2019, exact)
C_LIGHT = 299_792_458.0  # m/s (exact)


class LinkDevice(ScpiDevice):
    """A SCPI device that acts on the shared link; ``lock`` serialises its clients."""

    def __init__(self, link: Link):
        self.link = link
        self.lock = threading.RLock()
        super().__init__()
        self.reset()

    def execute(self, message: bytes, session=None) -> bytes | None:
        with self.lock:
            return super().execute(message, session)


# ----------------------------------------------------------------------------- attenuator


_MMD = ("MINimum", "MAXimum", "DEFault")


def _need_slot(s: list[int]) -> None:
    if s[0] != 1:
        raise ScpiError(-241, f"no module in slot {s[0]}")


class Attenuator(LinkDevice):
    """Keysight 8156A / 8157xA variable optical attenuator (one channel, INP1/OUTP1)."""

    IDN = ("Keysight Technologies", "N7764A-EMU", "EMU0001", "1.0")
    ATT_MAX_DB = 60.0

    def reset(self) -> None:
        self.offset_db = 0.0
        self.wavelength_m = 1550e-9
        self.speed_db_per_s = 12.0
        self.target_db = 0.0
        self.link.set("attenuation_db", 0.0)
        self.link.set("attenuator_shutter_open", False)  # *RST state: shutter closed

    def __init__(self, link: Link):
        super().__init__(link)
        c = self.command
        # An 8163/8164 mainframe has up to four module slots; this one holds the VOA in slot 1,
        # so INP2..INP4 name empty slots (-241) and INP5.. do not exist (-114).
        sfx = {"suffix_range": (1, 4)}
        att = Num(lambda: self._limits()[0], lambda: self._limits()[1], unit="DB")
        att.default = att.lo  # DEF: the filter at 0 dB, i.e. attenuation = offset
        c("INPut#:ATTenuation", self._set_att, att, **sfx)
        c("INPut#:ATTenuation?", self._get_att, Optional(Choice(_MMD)), **sfx)
        c("INPut#:ATTenuation:SPEed", self._set_speed, Num(0.1, 12.0), **sfx)
        c("INPut#:ATTenuation:SPEed?", self._slot(lambda s: self.speed_db_per_s), **sfx)
        c("INPut#:OFFSet", self._set_offset, Num(-200.0, 200.0, unit="DB", default=0.0), **sfx)
        c("INPut#:OFFSet?", self._slot(lambda s: self.offset_db), **sfx)
        wav = Num(self.WAV_MIN_M, self.WAV_MAX_M, unit="M", default=1550e-9)
        c("INPut#:WAVelength", self._set_wav, wav, **sfx)
        c("INPut#:WAVelength?", self._get_wav, Optional(Choice(_MMD)), **sfx)
        c("OUTPut#[:STATe]", self._set_shutter, Bool(), **sfx)
        c("OUTPut#[:STATe]?", self._slot(lambda s: self.link.get("attenuator_shutter_open")), **sfx)

    WAV_MIN_M, WAV_MAX_M = 1200e-9, 1700e-9

    @staticmethod
    def _slot(fn):
        """Wrap a handler: only slot 1 holds a module."""

        def wrapped(s, *args):
            _need_slot(s)
            return fn(s, *args)

        return wrapped

    # The displayed attenuation is the filter attenuation plus the offset (8157xA manual,
    # "INPut:OFFSet"): att = filter + offset, and the filter spans 0 .. ATT_MAX_DB.
    def _limits(self) -> tuple[float, float]:
        return self.offset_db, self.offset_db + self.ATT_MAX_DB

    def _set_att(self, s, value) -> None:
        _need_slot(s)
        self.target_db = float(value)
        self.link.ramp("attenuation_db", self.target_db - self.offset_db, self.speed_db_per_s)
        self.pending.append(_until(self.link, self.link.ramp_end_ps("attenuation_db")))

    def _get_att(self, s, which: str | None = None):
        _need_slot(s)
        lo, hi = self._limits()
        return {None: self.target_db, "MINIMUM": lo, "MAXIMUM": hi, "DEFAULT": lo}[which]

    def _get_wav(self, s, which: str | None = None):
        _need_slot(s)
        return {
            None: self.wavelength_m,
            "MINIMUM": self.WAV_MIN_M,
            "MAXIMUM": self.WAV_MAX_M,
            "DEFAULT": 1550e-9,
        }[which]

    def _set_speed(self, s, v) -> None:
        _need_slot(s)
        self.speed_db_per_s = v

    def _set_offset(self, s, v) -> None:
        _need_slot(s)
        self.target_db += v - self.offset_db
        self.offset_db = v

    def _set_wav(self, s, v) -> None:
        _need_slot(s)
        self.wavelength_m = v

    def _set_shutter(self, s, v) -> None:
        _need_slot(s)
        self.link.set("attenuator_shutter_open", bool(v))

    def wait_pending(self) -> None:
        _wait_link_pending(self)


class _until:
    """A pending operation done when the link clock reaches ``t_ps``."""

    def __init__(self, link: Link, t_ps: int):
        self.link, self.t_ps = link, t_ps

    def done(self) -> bool:
        return self.link.now_ps >= self.t_ps


def _wait_link_pending(dev: LinkDevice, timeout_s: float = 600.0) -> None:
    """*OPC?/*WAI: wait for pending transitions in link time. While an acquisition runs the
    tagger moves the clock; otherwise nothing is recorded, so idle link time is skipped."""
    deadline = time.monotonic() + timeout_s
    for p in dev.pending:
        while not p.done():
            if not getattr(dev.link, "acquiring", False):
                dev.link.idle_until(p.t_ps)
            elif time.monotonic() > deadline:
                raise ScpiError(-200, "pending operation timed out")
            else:
                time.sleep(0.001)
    dev.pending = []


# ----------------------------------------------------------------------------- source


P61 = (1 << 61) - 1  # the field of the polynomial hashes: GF(2^61 - 1)
MAX_SHUFFLES = 16  # per frame (Cascade's schedules use at most 15)
MAX_DIST_BITS = 1 << 21  # key bits per distillation frame


@njit(cache=True)
def _horner61(data, length, r):
    """sum_i c_i r^(d-i) + length mod 2^61 - 1, c_i the 7-byte little-endian words of data.

    Products of 61-bit numbers in 32-bit halves; 2^64 = 2^3 and 2^61 = 1 modulo p."""
    p = np.uint64(P61)
    m32 = np.uint64(0xFFFFFFFF)
    r_lo, r_hi = r & m32, r >> np.uint64(32)
    h = np.uint64(0)
    nw = (len(data) + 6) // 7
    for w in range(nw + 1):
        if w < nw:
            c = np.uint64(0)
            for t in range(min(7, len(data) - 7 * w) - 1, -1, -1):
                c = (c << np.uint64(8)) | np.uint64(data[7 * w + t])
        else:
            c = np.uint64(length)
        h_lo, h_hi = h & m32, h >> np.uint64(32)
        cross = h_lo * r_hi + h_hi * r_lo  # < 2^62
        low = h_lo * r_lo  # < 2^64
        # h r = h_hi r_hi 2^64 + cross 2^32 + low
        v = (h_hi * r_hi) << np.uint64(3)
        v += (cross >> np.uint64(29)) + ((cross << np.uint64(32)) & p)
        v += (low >> np.uint64(61)) + (low & p)
        v = (v >> np.uint64(61)) + (v & p)
        v += c
        v = (v >> np.uint64(61)) + (v & p)
        h = v - p if v >= p else v
    return h


class _SourceDistiller:
    """The source's side of distillation, written for the emulator from the README's protocol
    (not shared with the receiver's code, so one misreading cannot cancel on both sides).

    Holds the frame key (its bits never leave), the public shuffles, the transcript of the
    frame's messages, the authentication pool and the amplified key."""

    def __init__(self):
        self.key = np.zeros(0, np.uint8)
        self.final = b""
        self.shuffles: list[np.ndarray] = []
        self._prefix: dict[tuple[int, int, int], np.ndarray] = {}
        self._transcript: list[bytes] = []
        self._pool = bytearray()
        self._r = 0

    def _log(self, direction: bytes, payload: bytes) -> None:
        self._transcript.append(direction + len(payload).to_bytes(8, "little") + payload)

    def new_frame(self, bits: np.ndarray, payload: bytes) -> None:
        self.key, self.final, self._transcript, self._prefix = bits, b"", [], {}
        self.shuffles = []  # each frame sends its (public) shuffles after DIST:FRAM
        self._log(b"B", payload)

    def _need_frame(self) -> int:
        if not len(self.key):
            raise ScpiError(-200, "no frame: send DIST:FRAM first")
        return len(self.key)

    def shuffle(self, payload: bytes) -> None:
        n = self._need_frame()
        if len(self.shuffles) >= MAX_SHUFFLES:
            raise ScpiError(-225, f"at most {MAX_SHUFFLES} shuffles per frame")
        perm = np.frombuffer(payload, dtype="<i4")
        if len(payload) != 4 * n or not np.array_equal(np.sort(perm), np.arange(n)):
            raise ScpiError(-222, f"shuffle: a permutation of 0..{n - 1} as int32 expected")
        self.shuffles.append(perm.astype(np.int64))
        self._log(b"B", payload)

    def parities(self, payload: bytes) -> bytes:
        """Records (shuffle, offset, multiplier, lo, hi) int64: parity of the key bits at
        shuffle[(multiplier t + offset) mod n] for lo <= t < hi."""
        n = self._need_frame()
        if len(payload) % 40:
            raise ScpiError(-224, "parity block: records of 5 int64")
        rec = np.frombuffer(payload, dtype="<i8").reshape(-1, 5)
        out = np.empty(len(rec), np.uint8)
        for i, (row, off, mul, lo, hi) in enumerate(rec.tolist()):
            if not (0 <= row < len(self.shuffles) and 0 <= off < n and 0 < mul < max(n, 2)):
                raise ScpiError(-222, f"parity record {i}: shuffle, offset or multiplier")
            if not 0 <= lo < hi <= n:
                raise ScpiError(-222, f"parity record {i}: range {lo}..{hi} not in 0..{n}")
            pre = self._prefix.get((row, off, mul))
            if pre is None:
                order = self.shuffles[row][(mul * np.arange(n, dtype=np.int64) + off) % n]
                pre = np.concatenate([[0], np.cumsum(self.key[order], dtype=np.int64)]) & 1
                self._prefix[(row, off, mul)] = pre
            out[i] = pre[hi] ^ pre[lo]
        self._log(b"B", payload)
        self._log(b"A", out.tobytes())
        return out.tobytes()

    @staticmethod
    def _poly(data: bytes, length: int, r: int) -> int:
        """Horner over GF(2^61 - 1): 7-byte little-endian coefficients, then the length."""
        return int(_horner61(np.frombuffer(data, np.uint8), length, np.uint64(r)))

    def hash(self, payload: bytes) -> bytes:
        """Verification: the frame key's polynomial hash at each uint64 point the receiver
        sent (points in 1..2^61-2)."""
        n = self._need_frame()
        if len(payload) % 8 or not payload:
            raise ScpiError(-224, "hash block: uint64 points")
        pts = np.frombuffer(payload, dtype="<u8").tolist()
        if any(not 0 < r < P61 for r in pts):
            raise ScpiError(-222, "hash point outside 1..2^61-2")
        packed = np.packbits(self.key, bitorder="little").tobytes()
        out = b"".join(self._poly(packed, n, r).to_bytes(8, "little") for r in pts)
        self._log(b"B", payload)
        self._log(b"A", out)
        return out

    def amplify(self, payload: bytes) -> None:
        """Privacy amplification: 8-byte m, then the n + m - 1 seed bits (packed, little-endian
        bit order). The m-bit Toeplitz hash out[i] = sum_j key[j] g[i - j + n - 1] mod 2 with
        g = seed[m:] + seed[:m] (cryptomite's convention), kept as the final key."""
        n = self._need_frame()
        if len(payload) < 8:
            raise ScpiError(-224, "amplification block: 8-byte m then the seed bits")
        m = int.from_bytes(payload[:8], "little")
        seed = np.unpackbits(np.frombuffer(payload[8:], np.uint8), bitorder="little")
        if not 0 < m <= n or len(seed) < n + m - 1:
            raise ScpiError(-222, f"amplification: m={m} for a frame of {n} bits")
        seed = seed[: n + m - 1].astype(np.float64)
        size = 1 << (n + m - 1).bit_length()
        g = np.zeros(size)
        g[: n - 1] = seed[m:]
        g[n - 1 : n + m - 1] = seed[:m]
        x = np.zeros(size)
        x[:n] = self.key
        conv = np.fft.irfft(np.fft.rfft(x) * np.fft.rfft(g), size)[n - 1 : n + m - 1]
        exact = np.rint(conv)
        if np.abs(conv - exact).max() > 0.25:
            raise ScpiError(-200, "amplification: FFT rounding too large")
        self.final = np.packbits(exact.astype(np.int64) & 1, bitorder="little").tobytes()
        self.final = self.final[: m // 8]  # whole bytes only: the key's unit downstream
        self._log(b"B", payload)

    def load_pool(self, payload: bytes) -> None:
        """Write-only pre-shared key: 8 bytes hash key, then pads (never read back)."""
        if len(payload) < 16:
            raise ScpiError(-222, "authentication pool: at least 16 bytes")
        self._r = int.from_bytes(payload[:8], "little") % P61 or 1
        self._pool = bytearray(payload[8:])

    def pool_bits(self) -> int:
        return 8 * len(self._pool)

    def _pad(self) -> int:
        while True:
            if len(self._pool) < 8:
                raise ScpiError(-200, "authentication pool exhausted")
            chunk, self._pool = bytes(self._pool[:8]), self._pool[8:]
            s = int.from_bytes(chunk, "little") & P61
            if s != P61:
                return s

    def tag(self, payload: bytes) -> bytes:
        """Ends the frame's transcript: checks the receiver's Wegman-Carter tag (first pad),
        answers 1 byte (1 accepted, 0 refused: frame discarded) and its own tag (second
        pad). Both pads are consumed either way, so the two pools stay in step."""
        if len(payload) != 8:
            raise ScpiError(-224, "tag block: 8 bytes")
        if self._r == 0:
            raise ScpiError(-200, "no authentication pool: send DIST:AUTH:POOL first")
        data = b"".join(self._transcript)
        h = self._poly(data, len(data), self._r)
        want, pad2 = (h + self._pad()) % P61, self._pad()
        ok = int.from_bytes(payload, "little") == want
        if not ok:
            self.key, self.final, self.shuffles, self._prefix = np.zeros(0, np.uint8), b"", [], {}
        self._transcript = []
        return bytes([ok]) + (((h + pad2) % P61) if ok else 0).to_bytes(8, "little")

    def replenish(self, payload: bytes) -> None:
        """Moves the first k bytes (8-byte LE count) of the final key into the pool."""
        k = int.from_bytes(payload, "little")
        if not 0 < k <= len(self.final):
            raise ScpiError(-222, f"replenish: {k} bytes of a {len(self.final)}-byte key")
        self._pool.extend(self.final[:k])
        self.final = self.final[k:]


class Source(LinkDevice):
    """Pulsed decoy-state BB84 transmitter (command set of this project; see README).

    Key material never leaves it: the pattern seed is write-only, and the sifting exchange
    answers each pulse from the settings it was emitted with. A disclosure *block* is the
    pulses emitted from ``OUTP ON`` to ``OUTP OFF`` (or ``*RST``): its Z-basis sample is fixed
    when it opens (a pseudo-random function of the pulse index under the secret pattern seed,
    with the disclosure fraction of that moment), so it cannot depend on the receiver's
    detections, and neither the fraction nor the seed can change while it is open."""

    IDN = ("qkd-hil", "QKD-TX-EMU", "EMU0002", "1.0")

    def reset(self) -> None:
        from .physics import LinkParams

        d = LinkParams()
        self.block_open = False  # *RST closes the block (before the fraction is reset)
        # not the pattern seed (the source's secret, kept) nor the channel seed (the emulator's)
        for name in ("clock_hz", "mu", "p_mu", "p_z", "sync_divider", "disclose_fraction"):
            self.link.set(name, getattr(d, name))
        self.link.set("output_on", False)
        self.wavelength_m = 1550e-9

    def __init__(self, link: Link):
        super().__init__(link)
        c = self.command
        c(
            "SOURce:CLOCk[:FREQuency]",
            lambda s, v: self._set("clock_hz", v),
            Num(1e6, 5e9, unit="HZ"),
        )
        c("SOURce:CLOCk[:FREQuency]?", lambda s: float(self.link.get("clock_hz")))
        c("SOURce:INTensity#", self._set_mu, Num(0.0, 10.0), suffix_range=(1, 3))
        c("SOURce:INTensity#?", lambda s: float(self.link.get("mu", s[0] - 1)), suffix_range=(1, 3))
        c("SOURce:INTensity#:PROBability", self._set_p, Num(0.0, 1.0), suffix_range=(1, 3))
        c(
            "SOURce:INTensity#:PROBability?",
            lambda s: float(self.link.get("p_mu", s[0] - 1)),
            suffix_range=(1, 3),
        )
        c("SOURce:BASis:PROBability", lambda s, v: self._set("p_z", v), Num(0.0, 1.0))
        c("SOURce:BASis:PROBability?", lambda s: float(self.link.get("p_z")))
        # write-only: a seed that could be read back would regenerate every key bit
        c("SOURce:SEED", self._set_seed, Num(0, 2**63 - 1, integer=True))
        c(
            "SOURce:SYNC:DIVider",
            lambda s, v: self._set("sync_divider", v),
            Num(1, 2**20, integer=True),
        )
        c("SOURce:SYNC:DIVider?", lambda s: int(self.link.get("sync_divider")))
        c("OUTPut[:STATe]", self._set_output, Bool())
        c("OUTPut[:STATe]?", lambda s: bool(self.link.get("output_on")))
        c("SIFT:DISClose:FRACtion", self._set_fraction, Num(0.0, 1.0))
        c("SIFT:DISClose:FRACtion?", lambda s: float(self.link.get("disclose_fraction")))
        c("SIFT:BLOCk[:STATe]?", lambda s: self.block_open)
        c("SIFT:QUERy?", self._sift, Block(max_bytes=8 * MAX_SIFT_INDICES))
        # distillation exchange (see README "Distillation exchange"): parities and hashes of
        # the source's frame key, never its bits
        self._dist = _SourceDistiller()
        c("DIST:FRAMe", self._dist_frame, Block(max_bytes=8 * MAX_DIST_BITS))
        c("DIST:FRAMe?", lambda s: len(self._dist.key))
        c("DIST:SHUFfle", lambda s, v: self._dist.shuffle(v), Block(max_bytes=4 * MAX_DIST_BITS))
        c(
            "DIST:PARity?",
            lambda s, v: self._answer(self._dist.parities, v),
            Block(max_bytes=40 * 65536),
        )
        c("DIST:HASH?", lambda s, v: self._answer(self._dist.hash, v), Block(max_bytes=8 * 16))
        c("DIST:PA", lambda s, v: self._dist.amplify(v), Block(max_bytes=8 + MAX_DIST_BITS // 4))
        c("DIST:KEY:LENGth?", lambda s: len(self._dist.final) * 8 if self._dist.final else 0)
        c("DIST:AUTH:POOL", lambda s, v: self._dist.load_pool(v), Block(max_bytes=1 << 20))
        c("DIST:AUTH:POOL?", lambda s: self._dist.pool_bits())
        c("DIST:AUTH:TAG?", lambda s, v: self._answer(self._dist.tag, v), Block(max_bytes=8))
        c("DIST:AUTH:REPLenish", lambda s, v: self._dist.replenish(v), Block(max_bytes=8))

    def _set(self, name, v) -> None:
        if self.link.get("output_on") and name in ("sync_divider", "clock_hz"):
            raise ScpiError(-221, f"{name} cannot change while the output is on")
        self.link.set(name, v)

    def _set_seed(self, s, v) -> None:
        if self.block_open or self.link.get("output_on"):
            raise ScpiError(-221, "the pattern seed cannot change while a block is open")
        self.link.set("pattern_seed", int(v))

    def _set_fraction(self, s, v) -> None:
        if self.block_open and v != self.link.get("disclose_fraction"):
            # the block's sample was announced when it opened: it must not widen (or shrink)
            raise ScpiError(-221, "the disclosure fraction is fixed while a block is open")
        self.link.set("disclose_fraction", v)

    def _set_mu(self, s, v) -> None:
        self.link.set("mu", v, s[0] - 1)

    def _set_p(self, s, v) -> None:
        self.link.set("p_mu", v, s[0] - 1)

    def _set_output(self, s, on) -> None:
        if on:
            mu, p = self.link.get("mu"), self.link.get("p_mu")
            if abs(sum(p) - 1.0) > 1e-9:
                raise ScpiError(-221, f"intensity probabilities sum to {sum(p):g}, not 1")
            if not (mu[0] > mu[1] + mu[2] and mu[1] > mu[2] >= 0):
                raise ScpiError(-221, "intensities must satisfy mu1 > mu2 + mu3, mu2 > mu3 >= 0")
        self.block_open = bool(on)
        self.link.set("output_on", bool(on))

    def _answer(self, fn, payload: bytes) -> bytes:
        """A refused DIST query still answers (an empty block), so the client need not wait
        for its timeout; the error is in the queue."""
        try:
            return block(fn(payload))
        except ScpiError as e:
            self.error(e.code, e.detail)
            return block(b"")

    def _dist_frame(self, s, payload: bytes) -> None:
        """A frame of the key: the receiver's sifted pulse indices (int64 LE); each must be an
        emitted Z-basis pulse outside its block's disclosed sample (else -222)."""
        if len(payload) % 8 or not payload:
            raise ScpiError(-224, "frame block: a non-empty list of int64 pulse indices")
        idx = np.frombuffer(payload, dtype="<i8")
        if idx.min() < 0:
            raise ScpiError(-222, "negative pulse index")
        basis, _, bit, disclosed, emitted = self.link.generator.source_answers(idx)
        bad = np.flatnonzero(~emitted | (basis != 0) | disclosed)
        if len(bad):
            raise ScpiError(
                -222, f"pulse {int(idx[bad[0]])} is not an undisclosed Z-basis pulse emitted"
            )
        self._dist.new_frame(np.asarray(bit, np.uint8), payload)

    def _sift(self, s, payload: bytes) -> bytes:
        """Sifting exchange: int64 little-endian pulse indices in; out a block of
        3*N bytes: N bases (0 Z, 1 X), N intensity classes (0..2), N bits (255 = undisclosed).
        A pulse not emitted yet answers 255 in all three (its choices are still secret)."""
        if len(payload) % 8:
            raise ScpiError(-224, "index block length is not a multiple of 8")
        idx = np.frombuffer(payload, dtype="<i8")
        if len(idx) > MAX_SIFT_INDICES:
            raise ScpiError(-222, f"at most {MAX_SIFT_INDICES} indices per query")
        if len(idx) and idx.min() < 0:
            raise ScpiError(-222, "negative pulse index")
        basis, intensity, bit, disclosed, emitted = self.link.generator.source_answers(idx)
        shown = np.where(disclosed & emitted, bit, 255).astype(np.uint8)
        basis = np.where(emitted, basis, 255).astype(np.uint8)
        intensity = np.where(emitted, intensity, 255).astype(np.uint8)
        return block(np.concatenate([basis, intensity, shown]).tobytes())


# ----------------------------------------------------------------------------- detectors


class Detectors(LinkDevice):
    """Four single-photon detector channels H, V, D, A (ID120-like; units SI)."""

    IDN = ("qkd-hil", "SPD4-EMU", "EMU0003", "1.0")

    def reset(self) -> None:
        from .physics import LinkParams

        d = LinkParams()
        for name in ("efficiency", "dead_time_s", "temperature_c", "detector_on"):
            self.link.set(name, getattr(d, name))
        self.setpoint_c = list(d.temperature_c)
        self.integration_s = 0.1

    def __init__(self, link: Link):
        super().__init__(link)
        c = self.command
        r = {"suffix_range": (1, N_DETECTORS)}
        c(
            "DETector#:EFFiciency",
            lambda s, v: self.link.set("efficiency", v, s[0] - 1),
            Num(0.01, 0.95),
            **r,
        )
        c("DETector#:EFFiciency?", lambda s: float(self.link.get("efficiency", s[0] - 1)), **r)
        c(
            "DETector#:DEADtime",
            lambda s, v: self.link.set("dead_time_s", v, s[0] - 1),
            Num(1e-9, 100e-6, unit="S"),
            **r,
        )
        c("DETector#:DEADtime?", lambda s: float(self.link.get("dead_time_s", s[0] - 1)), **r)
        c("DETector#:TEMPerature:SETPoint", self._set_temp, Num(-60.0, 25.0, unit="CEL"), **r)
        c("DETector#:TEMPerature:SETPoint?", lambda s: float(self.setpoint_c[s[0] - 1]), **r)
        c("DETector#:TEMPerature?", lambda s: float(self.link.get("temperature_c", s[0] - 1)), **r)
        c(
            "DETector#:RUN",
            lambda s, v: self.link.set("detector_on", bool(v), s[0] - 1),
            Bool(),
            **r,
        )
        c("DETector#:RUN?", lambda s: bool(self.link.get("detector_on", s[0] - 1)), **r)
        c("DETector#:DARK?", lambda s: dark_count_rate_hz(self.link.params, s[0] - 1), **r)
        c("COUNter:INTegration", self._set_integration, Num(1e-3, 60.0, unit="S"))
        c("COUNter:INTegration?", lambda s: self.integration_s)
        c("COUNter:DATA?", self._counts)

    def _set_temp(self, s, v) -> None:
        self.setpoint_c[s[0] - 1] = v
        self.link.set("temperature_c", v, s[0] - 1)  # the regulator is ideal (see README)

    def _set_integration(self, s, v) -> None:
        self.integration_s = v

    def _counts(self, s) -> str:
        """Counts of the four channels over one integration time of link time."""
        if getattr(self.link, "acquiring", False):
            raise ScpiError(-221, "counters unavailable while the tagger acquires")
        t_stop = self.link.now_ps + int(self.integration_s * PS)
        counts = np.zeros(N_DETECTORS, dtype=np.int64)
        while self.link.now_ps < t_stop:
            _, ch = self.link.step(t_stop)
            counts += np.bincount(ch, minlength=N_TAGGER_CHANNELS)[1 : 1 + N_DETECTORS]
        return ",".join(str(int(x)) for x in counts)


# ----------------------------------------------------------------------------- power meter


class PowerMeter(LinkDevice):
    """Thorlabs PM100-style power meter on a calibrated tap at the source output."""

    IDN = ("Thorlabs", "PM100D-EMU", "EMU0004", "1.0")

    def reset(self) -> None:
        self.wavelength_m = 1550e-9
        self.unit = "W"
        self.noise_floor_w = 1e-12

    def __init__(self, link: Link):
        super().__init__(link)
        c = self.command
        c("MEASure[:SCALar]:POWer?", lambda s: self._power())
        c("READ?", lambda s: self._power())
        # PM100 manual: a bare number is in nm; a suffix (1550NM, 1.55E-6M) is also accepted.
        wav = Num(400e-9, 1800e-9, unit="M", bare=1e-9)
        c("SENSe:CORRection:WAVelength", self._set_wav, wav)
        c("SENSe:CORRection:WAVelength?", self._get_wav, Optional(Choice(("MINimum", "MAXimum"))))
        c("SENSe:POWer:UNIT", self._set_unit, Choice(("W", "DBM")))
        c("SENSe:POWer:UNIT?", lambda s: self.unit)

    def _set_wav(self, s, v) -> None:
        self.wavelength_m = v

    def _get_wav(self, s, which=None) -> float:
        return {None: self.wavelength_m * 1e9, "MINIMUM": 400.0, "MAXIMUM": 1800.0}[which]

    def _set_unit(self, s, v) -> None:
        self.unit = v

    def _power(self) -> float:
        # mean optical power of the pulse train: f_clock * sum_k p_k mu_k * h c / lambda
        p = self.link.params
        watts = self.noise_floor_w
        if p.output_on:
            photon_j = H_PLANCK * C_LIGHT / self.wavelength_m
            watts += (
                p.clock_hz * sum(pk * mk for pk, mk in zip(p.p_mu, p.mu, strict=True)) * photon_j
            )
        return watts if self.unit == "W" else 10 * math.log10(watts / 1e-3)


# ----------------------------------------------------------------------------- tagger


class Tagger(LinkDevice):
    """Time tagger: 9 inputs (0 sync, 1..4 detectors, 8 software marker), acquisition of link
    time, tags fetched as bounded binary blocks (see README for the record layout)."""

    IDN = ("qkd-hil", "TAGGER-EMU", "EMU0005", "1.0")
    BUFFER_TAGS = 50_000_000  # on-board memory: beyond this, tags are lost (loss flag set)
    MAX_HOLDS = 1000  # hold points per acquisition (each costs the client a round trip or two)

    def reset(self) -> None:
        self.stop_acquisition()
        from .physics import LinkParams

        d = LinkParams()
        for name in ("resolution_ps", "channel_delay_ps", "channel_enabled"):
            self.link.set(name, getattr(d, name))
        self.thresholds_v = [-0.1] * N_TAGGER_CHANNELS
        self.duration_s = 1.0
        self.pace = 0.0  # 0 = as fast as generation allows (with back-pressure, no loss)
        self._buf: deque[tuple[np.ndarray, np.ndarray]] = deque()  # (ts, ch) oldest first
        self._buffered = 0
        self._unsorted = False
        self.lost = False
        self.state = "IDLE"
        self.holds_s: list[float] = []  # hold offsets for the next acquisition (s after start)
        self.hold_timeout_s = 30.0  # wall-clock s a hold waits for ACQ:CONT before it ends
        self.held_ps: int | None = None  # link time of the hold reached last
        self.hold_expired = False  # the last acquisition ended because a hold timed out

    def __init__(self, link: Link):
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._buf_lock = threading.Lock()
        self._room = threading.Condition(self._buf_lock)
        self._marks_pending = 0
        self._continue = False  # ACQ:CONT arrived for the hold in progress
        super().__init__(link)
        c = self.command
        r = {"suffix_range": (0, N_TAGGER_CHANNELS - 1)}
        c("INPut#:ENABle", self._enable, Bool(), **r)
        c("INPut#:ENABle?", lambda s: self._enabled(s[0]), **r)
        c(
            "INPut#:THReshold",
            lambda s, v: self.thresholds_v.__setitem__(s[0], v),
            Num(-2.5, 2.5, unit="V"),
            **r,
        )
        c("INPut#:THReshold?", lambda s: float(self.thresholds_v[s[0]]), **r)
        c("INPut#:DELay", self._set_delay, Num(-1e-6, 1e-6, unit="S"), **r)
        c("INPut#:DELay?", lambda s: self._get_delay(s[0]), **r)
        c("DEVice:RESolution?", lambda s: self.link.get("resolution_ps") * 1e-12)
        c(
            "ACQuire:DURation",
            lambda s, v: setattr(self, "duration_s", v),
            Num(1e-6, 86400.0, unit="S"),
        )
        c("ACQuire:DURation?", lambda s: float(self.duration_s))
        c("ACQuire:PACE", lambda s, v: setattr(self, "pace", v), Num(0.0, 1e6))
        c("ACQuire:PACE?", lambda s: float(self.pace))
        c("ACQuire:STARt", lambda s: self.start_acquisition())
        c("ACQuire:STOP", lambda s: self.stop_acquisition())
        c("ACQuire:STATus?", lambda s: self.state)
        c("ACQuire:LOSS?", lambda s: self.lost)
        c("ACQuire:TIME?", lambda s: _seconds(self.link.now_ps))
        c("ACQuire:MARKer", lambda s: self._mark())
        c("ACQuire:HOLD", self._add_hold, Num(0.0, 86400.0, unit="S"))
        c("ACQuire:HOLD?", lambda s: ",".join(f"{t:.12g}" for t in sorted(self.holds_s)) or "NONE")
        c("ACQuire:HOLD:CLEar", lambda s: self._clear_holds())
        c("ACQuire:HOLD:TIME?", lambda s: self._held_time())
        c(
            "ACQuire:HOLD:TIMeout",
            lambda s, v: setattr(self, "hold_timeout_s", v),
            Num(0.01, 3600.0, unit="S"),
        )
        c("ACQuire:HOLD:TIMeout?", lambda s: float(self.hold_timeout_s))
        c("ACQuire:HOLD:EXPired?", lambda s: self.hold_expired)
        c("ACQuire:CONTinue", lambda s: self._continue_hold())
        c("FETCh:COUNt?", lambda s: self._buffered)
        c("FETCh:TAGS?", self._fetch, Optional(Num(1, MAX_FETCH_TAGS, integer=True)))

    def _enabled(self, ch: int) -> bool:
        if ch >= len(self.link.params.channel_enabled):
            return ch == MARKER_CHANNEL
        return bool(self.link.get("channel_enabled", ch))

    def _enable(self, s, v) -> None:
        if s[0] >= len(self.link.params.channel_enabled):
            raise ScpiError(-241, f"input {s[0]} has no physical input")
        self.link.set("channel_enabled", bool(v), s[0])

    def _set_delay(self, s, v) -> None:
        if s[0] >= len(self.link.params.channel_delay_ps):
            raise ScpiError(-241, f"input {s[0]} has no physical input")
        self.link.set("channel_delay_ps", int(round(v * PS)), s[0])

    def _get_delay(self, ch: int) -> float:
        if ch >= len(self.link.params.channel_delay_ps):
            return 0.0
        return self.link.get("channel_delay_ps", ch) * 1e-12

    # -- acquisition -------------------------------------------------------------------------
    def start_acquisition(self) -> None:
        if self.state in ("RUNNING", "HELD"):
            raise ScpiError(-221, "acquisition already running")
        with self._buf_lock:
            self._buf, self._buffered, self._unsorted = deque(), 0, False
            self._marks_pending = 0
        self.lost = False
        self.hold_expired = False
        self.held_ps = None
        # the hold points belong to this acquisition: taken here, so none reaches a later one
        holds, self.holds_s = sorted(set(self.holds_s)), []
        self._stop.clear()
        self.state = "RUNNING"
        self.link.acquiring = True
        self._thread = threading.Thread(
            target=self._run, args=(holds,), name="tagger-acquisition", daemon=True
        )
        self._thread.start()

    # -- hold points: the link clock stops at an exact link time until ACQ:CONT --------------
    def _add_hold(self, s, offset_s: float) -> None:
        if self.state in ("RUNNING", "HELD"):
            raise ScpiError(-221, "hold points are set before ACQ:STAR")
        if len(self.holds_s) >= self.MAX_HOLDS:
            raise ScpiError(-223, f"at most {self.MAX_HOLDS} hold points per acquisition")
        self.holds_s.append(float(offset_s))

    def _clear_holds(self) -> None:
        if self.state in ("RUNNING", "HELD"):
            raise ScpiError(-221, "hold points are set before ACQ:STAR")
        self.holds_s = []

    def _held_time(self) -> str:
        if self.held_ps is None:
            raise ScpiError(-200, "no hold point reached in this acquisition")
        return _seconds(self.held_ps)

    def _continue_hold(self) -> None:
        with self._room:
            if self.state != "HELD":
                raise ScpiError(-200, f"acquisition is {self.state}, not HELD")
            self._continue = True
            # RUNNING from this answer on: a status query right after ACQ:CONT must not see
            # the hold still there (the acquisition thread may not have woken up yet)
            self.state = "RUNNING"
            self._room.notify_all()

    def _hold(self, t_ps: int) -> bool:
        """Stop the link clock at ``t_ps`` (it is there: the chunk before ended on it) until
        ACQ:CONT, ACQ:STOP or the wall-clock hold timeout; False when the acquisition must end
        (stopped, or the client never continued: a dead client must not hold the emulator)."""
        with self._room:
            self._place_marks(t_ps)  # markers asked for before the hold: in order, at t_ps
            self.held_ps = t_ps
            self._continue = False
            self.state = "HELD"
            deadline = time.monotonic() + self.hold_timeout_s
            while not self._continue and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    self.hold_expired = True
                    return False
                self._room.wait(min(left, 0.5))
            if self._stop.is_set():
                return False
            self.state = "RUNNING"
            return True

    def stop_acquisition(self) -> None:
        t = getattr(self, "_thread", None)
        if t is not None and t.is_alive():
            self._stop.set()
            with self._room:
                self._room.notify_all()
            t.join()
        self._thread = None
        if getattr(self, "state", "IDLE") == "RUNNING":
            self.state = "DONE"
        self.link.acquiring = False

    def _run(self, holds_s: list[float]) -> None:
        t_stop = self.link.now_ps + int(self.duration_s * PS)
        wall0, link0 = time.monotonic(), self.link.now_ps
        # hold points as link times; one at or beyond the end is never reached
        holds = [link0 + int(round(h * PS)) for h in holds_s]
        holds = [t for t in holds if t < t_stop]
        try:
            while self.link.now_ps < t_stop and not self._stop.is_set():
                if holds and self.link.now_ps >= holds[0]:
                    held_at = time.monotonic()
                    holds.pop(0)
                    if not self._hold(self.link.now_ps):
                        break
                    wall0 += time.monotonic() - held_at  # the pace resumes where it stopped
                    continue
                if self.pace > 0:  # hold link time to pace x wall time
                    ahead = (self.link.now_ps - link0) / PS - self.pace * (time.monotonic() - wall0)
                    if ahead > 0:
                        time.sleep(min(ahead / self.pace, 0.05))
                        continue
                    if ahead < -0.01:  # fell behind (a stall): resume the pace, never burst
                        wall0 += -ahead / self.pace
                # paced: 1 ms chunks, so that commands and markers land within 1 ms of link
                # time of their wall-clock arrival; unpaced: longer chunks while nothing ramps
                # a chunk ends exactly on the next hold point (link.step stops at its target)
                ts, ch = self.link.step(
                    min(t_stop, holds[0]) if holds else t_stop,
                    long_chunk_ps=None if self.pace > 0 else LONG_CHUNK_PS,
                )
                enabled = self.link.params.channel_enabled
                if not all(enabled):  # tags computed before a channel was disabled
                    keep = np.asarray(enabled, dtype=bool)[ch]
                    ts, ch = ts[keep], ch[keep]
                with self._room:
                    if self.pace == 0:
                        while self._buffered > self.BUFFER_TAGS and not self._stop.is_set():
                            self._room.wait(0.1)
                    if self._buffered + len(ts) > self.BUFFER_TAGS:
                        self.lost = True
                        continue
                    self._append(ts, ch)
                    self._place_marks(int(ts[-1]) if len(ts) else 0)
        finally:
            with self._room:
                self._place_marks(0)
            self.state = "DONE"
            self.link.acquiring = False

    def _place_marks(self, last_tag_ps: int) -> None:
        """Put requested markers at the end of the chunk just generated (caller holds _room):
        after every tag already in the stream, so the stream stays in time order."""
        if self._marks_pending:
            t = max(self.link.now_ps, last_tag_ps)
            n, self._marks_pending = self._marks_pending, 0
            self._append(np.full(n, t, dtype=np.int64), np.full(n, MARKER_CHANNEL, dtype=np.uint8))

    def _append(self, ts: np.ndarray, ch: np.ndarray) -> None:
        """Buffer a time-sorted piece (caller holds _room), noting whether it starts before the
        end of the buffer (a marker placed between chunks): _fetch then restores the order."""
        if len(ts):
            if self._buf and ts[0] < self._buf[-1][0][-1]:
                self._unsorted = True
            self._buf.append((ts, ch))
            self._buffered += len(ts)

    def _mark(self) -> None:
        with self._room:
            if self.state == "HELD":  # the clock stands still: the marker is at the held time
                t = np.full(1, self.held_ps, dtype=np.int64)
                self._append(t, np.full(1, MARKER_CHANNEL, dtype=np.uint8))
                return
            if self.state != "RUNNING":
                raise ScpiError(-200, "no acquisition running")
            # placed by the acquisition thread at the end of the chunk in progress
            self._marks_pending += 1

    def _take(self, max_tags: int) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """Remove up to max_tags of the oldest buffered tags (caller holds _room); returns the
        pieces in order and their total. Only a piece cut at the end is copied."""
        ts_parts: list[np.ndarray] = []
        ch_parts: list[np.ndarray] = []
        n = 0
        while self._buf and n < max_tags:
            ts, ch = self._buf[0]
            room = max_tags - n
            if len(ts) > room:
                self._buf[0] = (ts[room:], ch[room:])
                ts, ch = ts[:room], ch[:room]
            else:
                self._buf.popleft()
            ts_parts.append(ts)
            ch_parts.append(ch)
            n += len(ts)
        self._buffered -= n
        return ts_parts, ch_parts, n

    def execute_parts(self, message: bytes) -> list | None:
        """Like ``execute``, but the answer as a list of buffers for one scatter send. A
        message that is one plain ``FETC:TAGS? [<n>]`` is answered without the generic parser
        and without joining the tags into one bytes object: header, the buffered timestamp and
        channel arrays themselves, terminator. Fetching buffered tags then costs the emulator
        2-3 ns of CPU per tag against 15-19 with the joined copies (benchmarks/bench_store.py,
        "buffered, then fetched"). Anything else goes the generic way (same answers, same
        errors)."""
        m = _PLAIN_FETCH.fullmatch(message)
        if m is not None:
            n = int(m[1]) if m[1] else MAX_FETCH_TAGS
            if 1 <= n <= MAX_FETCH_TAGS:
                with self.lock:
                    parts = self._fetch_parts(n)
                parts.append(b"\n")
                return parts
        reply = self.execute(message)
        return None if reply is None else [reply]

    def _fetch_parts(self, max_tags: int) -> list:
        """The ``FETC:TAGS?`` block as buffers: header, N int64 LE timestamps (ps) in one or
        more pieces, N uint8 channels in as many pieces. Tags come in time order; a marker may
        share a chunk with later tags. The pieces are the buffered arrays (no copy): they are
        taken out of the buffer here and nothing writes to them afterwards."""
        with self._room:
            if self._unsorted:
                ts_all, ch_all, _ = self._take(self._buffered)
                ts, ch = np.concatenate(ts_all), np.concatenate(ch_all)
                order = np.argsort(ts, kind="stable")
                self._buf.append((ts[order], ch[order]))
                self._buffered, self._unsorted = len(ts), False
            ts_parts, ch_parts, n = self._take(max_tags)
            self._room.notify_all()
        # "<i8" and uint8 are the wire types; on a little-endian host these are no-ops
        parts: list = [_block_header(9 * n)]
        parts += [np.ascontiguousarray(ts, dtype="<i8") for ts in ts_parts]
        parts += [np.ascontiguousarray(ch, dtype=np.uint8) for ch in ch_parts]
        return parts

    def _fetch(self, s, max_tags: int = MAX_FETCH_TAGS) -> bytes:
        """``FETC:TAGS?`` through the generic parser (compound messages, other spellings):
        the same block as ``execute_parts`` gives, joined into one bytes object."""
        return b"".join(memoryview(p).cast("B") for p in self._fetch_parts(max_tags))


# One FETC:TAGS? unit alone in a message, short or long form, optional count in plain digits
# (leading ':' allowed; SCPI headers are case-insensitive). Other forms take the generic path.
_PLAIN_FETCH = re.compile(rb"[ \t]*:?FETCH?:TAGS\?(?:[ \t]+([0-9]{1,7}))?[ \t]*", re.IGNORECASE)


def _seconds(t_ps: int) -> str:
    """Link time in s as an exact decimal (``+.8E`` floats would round it to 10 ns at 1 s)."""
    return f"{t_ps // PS}.{t_ps % PS:012d}"


def _block_header(length: int) -> bytes:
    """Header ``#<n><length>`` of an IEEE 488.2 definite-length block (as scpi.block)."""
    digits = str(length)
    return b"#" + str(len(digits)).encode() + digits.encode()


# ----------------------------------------------------------------------------- control


class Control(LinkDevice):
    """The emulator's own control instrument: link clock and fault injection (emulated bench
    only). Faults act on the same link parameters the physics model reads.

    With a ``token``, a connection must send ``SYST:AUTH "<token>"`` before any command other
    than the common ones and ``SYST:...`` runs (-203 otherwise): the token is in the ready file
    only its owner can read, so no other local process injects faults."""

    IDN = ("qkd-hil", "EMULATOR-CONTROL", "EMU0000", "1.0")
    MAX_SCHEDULED = 1000  # pending FAUL:SCH actions; beyond, -225
    SECRET = ("pattern_seed",)  # link parameters no query reports

    def reset(self) -> None:
        self.base_insertion_db = self.link.get("insertion_loss_db")
        self.extra_loss_db = 0.0

    def __init__(self, link: Link, instruments: dict | None = None, token: str | None = None):
        self.token = token
        self.scheduled = 0  # FAUL:SCH actions not run yet
        super().__init__(link)
        self.instruments = instruments if instruments is not None else {}
        c = self.command
        d = {"suffix_range": (1, N_DETECTORS)}
        c("SYSTem:AUTHenticate", self._auth, Str())
        c("LINK:TIME?", lambda s: self.link.now_ps * 1e-12)
        c("LINK:PARameter?", self._param, Str())
        c("LINK:PARameter", self._set_param, Str(), Num())
        c("LINK:PARameter:ALL?", self._all_params)
        c(
            "FAULt:LOSS",
            lambda s, v: self.link.set("insertion_loss_db", self.base_insertion_db + v),
            Num(0.0, 100.0, unit="DB"),
        )
        c(
            "FAULt:LOSS:RAMP",
            lambda s, v, r: self.link.ramp("insertion_loss_db", self.base_insertion_db + v, r),
            Num(0.0, 100.0, unit="DB"),
            Num(1e-6, 1e3),
        )
        c("FAULt:EMISalignment", lambda s, v: self.link.set("e_mis", v), Num(0.0, 0.5))
        c(
            "FAULt:EMISalignment:RAMP",
            lambda s, v, r: self.link.ramp("e_mis", v, r),
            Num(0.0, 0.5),
            Num(1e-9, 10.0),
        )
        c(
            "FAULt:TEMPerature#:RAMP",
            lambda s, v, r: self.link.ramp("temperature_c", v, r, s[0] - 1),
            Num(-80.0, 40.0, unit="CEL"),
            Num(1e-6, 100.0),
            **d,
        )
        c(
            "FAULt:DETector#:DEAD",
            lambda s, v: self.link.set("detector_on", not v, s[0] - 1),
            Bool(),
            **d,
        )
        c("FAULt:LASer:OFF", lambda s, v: self.link.set("output_on", not v), Bool())
        c("FAULt:EVE", lambda s, v: self.link.set("eve_fraction", v), Num(0.0, 1.0))
        c("FAULt:DRIFt", lambda s, v: self.link.set("drift_ppm", v), Num(-1000.0, 1000.0))
        c("FAULt:SYNC:LOSS", lambda s, v: self.link.set("sync_enabled", not v), Bool())
        c("FAULt:SCHedule", self._schedule, Num(0.0, 1e6, unit="S"), Str())

    def _auth(self, s, token: str) -> None:
        if self.session is None:
            return  # the emulator's own (scheduled) commands
        if self.token is None or hmac.compare_digest(token.encode(), self.token.encode()):
            self.session.authenticated = True
        else:
            raise ScpiError(-203, "wrong token (see control_token in the ready file)")

    def _dispatch(self, cmd, suffixes, params, is_query) -> None:
        if self.token is not None and self.session is not None and not self.session.authenticated:
            first = cmd.nodes[0].long.upper() if cmd.nodes else ""
            if not (first.startswith("*") or first == "SYSTEM"):
                raise ScpiError(-203, "send SYST:AUTH with the ready file's control_token first")
        super()._dispatch(cmd, suffixes, params, is_query)

    def _param(self, s, name: str) -> str:
        if not hasattr(self.link.params, name) or name in self.SECRET:
            raise ScpiError(-224, f"no link parameter {name!r}")
        return repr(self.link.get(name))

    # Model parameters no instrument command reaches (the receiver's physics), settable for
    # verification runs: a test can switch a effect off to compare with a closed-form value.
    SETTABLE = (
        "afterpulse_prob",
        "afterpulse_tau_s",
        "jitter_ps",
        "sync_jitter_ps",
        "e_mis",
        "p_z_bob",
        "fiber_length_m",
        "fiber_loss_db_per_km",
        "insertion_loss_db",
        "dark_activation_energy_ev",
        "offset_ps",
    )

    def _set_param(self, s, name: str, value: float) -> None:
        if name not in self.SETTABLE:
            raise ScpiError(-224, f"{name!r} is not settable; settable: {', '.join(self.SETTABLE)}")
        old = self.link.get(name)
        self.link.set(name, type(old)(value))
        try:
            validate(self.link.params)
        except ValueError as exc:
            self.link.set(name, old)
            raise ScpiError(-222, str(exc)) from None

    def _all_params(self, s) -> str:
        """Every link parameter but the secret ones as one JSON object (for verification
        against the model)."""
        fields = dataclasses.asdict(self.link.params)
        return json.dumps({k: v for k, v in fields.items() if k not in self.SECRET})

    def _schedule(self, s, t_s: float, command: str) -> None:
        """Run a control command at link time ``t_s`` (a fault at an exact link time).

        The command is parsed and checked now (its errors are this message's), and at its time
        its handlers run directly, under the link lock the clock holds then: taking this
        device's lock there could deadlock with a handler that holds it and waits for the
        link lock."""
        if self.scheduled >= self.MAX_SCHEDULED:
            raise ScpiError(-225, f"{self.MAX_SCHEDULED} scheduled actions pending already")
        try:
            units = split_message(command.encode("ascii"))
        except UnicodeEncodeError:
            raise ScpiError(-224, "the scheduled command is not ASCII") from None
        calls, path = [], []
        for header, params in units:
            cmd, used, is_query, path = self.resolve_unit(header, path)
            names = [n.long.upper() for n in cmd.nodes]
            if is_query or names[0] != "FAULT" or "SCHEDULE" in names:
                raise ScpiError(-224, "only FAULt commands (not SCHedule) may be scheduled")
            calls.append((cmd.handler, used, self._parse_params(cmd, params)))

        def action() -> None:
            self.scheduled -= 1
            for handler, used, args in calls:
                try:
                    handler(used, *args)
                except ScpiError as e:
                    self.error(e.code, e.detail)

        self.scheduled += 1
        self.link.at(int(round(t_s * PS)), action)


# ----------------------------------------------------------------------------- switch


class Switch:
    """Thorlabs OSW-style 1x2 optical switch on a serial line (ASCII, ``\\n`` in, ``\\r\\n``
    out). Position 1 is the link fiber (through); position 2 leaves the receiver dark."""

    IDN = "Thorlabs OSW12-EMU v1.0"

    def __init__(self, link: Link):
        self.link = link
        self.position = 1
        self.link.set("link_connected", True)

    def handle(self, line: bytes) -> bytes | None:
        cmd = line.strip().decode("ascii", "replace").upper()
        if cmd in ("S 1", "S1", "S 2", "S2"):
            self.position = int(cmd[-1])
            self.link.set("link_connected", self.position == 1)
            return None
        if cmd == "S?":
            return f"{self.position}\r\n".encode()
        if cmd in ("I?", "*IDN?"):
            return f"{self.IDN}\r\n".encode()
        if not cmd:
            return None
        return b"CMD_NOT_DEFINED\r\n"
