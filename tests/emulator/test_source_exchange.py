"""The source's distillation exchange (DIST:*) over the real socket: a frame distilled through
the driver against the emulated source gives the same final key on both sides (seen in this
process only), a changed message fails authentication, a changed hash answer fails
verification, and the source's answers carry parities and hashes only."""

from __future__ import annotations

import numpy as np
import pytest

from hil.analysis.distill.hashing import KeyPool, poly_hash, verification_points
from hil.analysis.distill.pipeline import AUTH_BITS_PER_FRAME, distil_frame
from hil.emulator.physics import LinkParams
from hil.emulator.server import Emulator
from hil.instruments.source import QKDSource

POOL = bytes(range(7, 7 + 200))  # a test pool: the bench file gives the real one
Q = 0.03


@pytest.fixture(scope="module")
def dist_bench():
    """Emulator in process, source emitting a block; (emu, driver, Z key indices, their bits)."""
    emu = Emulator(LinkParams(pattern_seed=424242))
    emu.start()
    src = QKDSource(emu.resources["source"], "source")
    try:
        src.disclose_fraction = 0.1
        src.output_enabled = True
        emu.devices["detectors"].execute(b"COUN:INT 1MS;:COUN:DATA?")
        idx = emu.link.generator.emitted_to - 1 - np.arange(60_000, dtype=np.int64) * 5
        idx = np.sort(idx)
        basis, _, bit, disclosed, emitted = emu.link.generator.source_answers(idx)
        key = emitted & (basis == 0) & ~disclosed
        yield emu, src, idx[key][:20_000], bit[key][:20_000].astype(np.uint8)
    finally:
        src.close()
        emu.stop()


def _bob(alice, seed=1):
    rng = np.random.default_rng(seed)
    return alice ^ (rng.random(len(alice)) < Q).astype(np.uint8)


def _length(n):
    return lambda leak, ver, auth: n // 3 - leak - ver - auth


def _emulated(emu):
    return emu.devices["source"]._dist  # this process only: the test compares final keys


def test_a_frame_distilled_over_the_bench_gives_one_key_on_both_sides(dist_bench):
    emu, src, idx, alice = dist_bench
    src.load_auth_pool(POOL)
    pool = KeyPool(POOL)
    assert int(src.query("DIST:AUTH:POOL?")) == 8 * (len(POOL) - 8)
    res, final = distil_frame(src, idx, _bob(alice), Q, pool, _length(len(idx)))
    assert res.outcome == "key" and res.verified and res.authenticated
    assert res.errors_corrected == int(np.count_nonzero(alice ^ _bob(alice)))
    assert 1.0 < res.efficiency < 1.2 and res.round_trips > 10
    assert final == _emulated(emu).final and len(final) * 8 == res.key_bits > 0
    # the tags took two pads on each side and the first 16 bytes of key refilled both pools
    assert res.replenished_bits == AUTH_BITS_PER_FRAME
    assert int(src.query("DIST:AUTH:POOL?")) == pool.available_bits
    assert pool.consumed_bits == AUTH_BITS_PER_FRAME
    assert int(src.query("DIST:KEY:LENG?")) == res.key_bits
    assert final.hex() not in repr(res) and res.fingerprint and len(res.fingerprint) == 16


class _ManInTheMiddle:
    """Passes messages to the source, but changes the records of one parity query on the way
    (the receiver logs what it sent; the source answers what it got)."""

    def __init__(self, src, which=3):
        self.src, self.which, self.count = src, which, 0

    def __getattr__(self, name):
        return getattr(self.src, name)

    def dist_parities(self, records, log=None):
        self.count += 1
        sent = np.array(records, dtype=np.int64).reshape(-1, 5)
        changed = sent.copy()
        if self.count == self.which:
            changed[0, 4] = max(changed[0, 3] + 1, changed[0, 4] - 1)  # one range shortened
        ans = self.src.dist_parities(changed)
        if log is not None:
            log("B", sent.astype("<i8").tobytes())
            log("A", ans.tobytes())
        return ans


def test_a_changed_message_fails_authentication_and_the_frame_is_discarded(dist_bench):
    emu, src, idx, alice = dist_bench
    src.load_auth_pool(POOL)
    pool = KeyPool(POOL)
    res, final = distil_frame(_ManInTheMiddle(src), idx, _bob(alice, 2), Q, pool, _length(20_000))
    assert not res.authenticated and final == b"" and res.key_bits == 0
    assert res.outcome.startswith(("authentication failed", "verification failed"))
    assert _emulated(emu).final == b""  # the source discarded its side too
    # both sides took the same two pads: the next frame authenticates
    assert int(src.query("DIST:AUTH:POOL?")) == pool.available_bits
    res, final = distil_frame(src, idx, _bob(alice, 3), Q, pool, _length(20_000))
    assert res.outcome == "key" and final == _emulated(emu).final


class _FlipHash:
    def __init__(self, src):
        self.src = src

    def __getattr__(self, name):
        return getattr(self.src, name)

    def dist_hash(self, points, log=None):
        h = self.src.dist_hash(points, log)
        h[0] ^= np.uint64(1)  # one bit of the source's answer, as the receiver reads it
        return h


def test_a_failed_verification_yields_no_key_and_says_so(dist_bench):
    emu, src, idx, alice = dist_bench
    src.load_auth_pool(POOL)
    res, final = distil_frame(
        _FlipHash(src), idx, _bob(alice, 4), Q, KeyPool(POOL), _length(20_000)
    )
    assert not res.verified and final == b"" and res.key_bits == 0
    assert res.outcome == "verification failed: the frame yields no key"
    assert int(src.query("DIST:KEY:LENG?")) == 0  # nothing amplified on the source either


def test_the_source_answers_parities_and_hashes_of_its_frame_only(dist_bench):
    emu, src, idx, alice = dist_bench
    src.write("DIST:FRAM #10")  # empty frame
    assert src.query("SYST:ERR?").startswith("-224")
    # an X-basis or disclosed pulse is not key
    near = idx[0] + 1 + np.arange(50)
    other = near[np.flatnonzero(emu.link.generator.source_answers(near)[0] == 1)[0]]
    with pytest.raises(Exception, match="-222"):
        src.dist_frame(np.array([other]))
    src.dist_frame(idx)
    assert int(src.query("DIST:FRAM?")) == len(idx)
    perm = np.arange(len(idx), dtype=np.int32)[::-1].copy()
    src.dist_shuffle(perm)
    rec = np.array([[0, 0, 1, 0, len(idx)], [0, 0, 1, 10, 11], [0, 5, 1, 0, 3]], np.int64)
    par = src.dist_parities(rec)
    want = [alice.sum() & 1, alice[perm[10]], alice[perm[5:8]].sum() & 1]
    assert par.tolist() == [int(v) for v in want]
    pts = verification_points(11)
    assert np.array_equal(src.dist_hash(pts), poly_hash(alice, pts))
    with pytest.raises(Exception, match="-222"):
        src.dist_parities(np.array([[0, 0, 1, 5, 5]]))  # an empty range
    with pytest.raises(Exception, match="-222"):
        src.dist_parities(np.array([[1, 0, 1, 0, 5]]))  # no second shuffle
    assert src.query("DIST:AUTH:POOL?").isdigit()  # a count of bits: the pool is write-only
    assert src.query("SYST:ERR?").startswith("0")
