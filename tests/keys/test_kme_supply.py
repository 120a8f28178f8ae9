"""The emulated KME pair's supply from the emulated link: the finite-key rate of the link's
state (the emulator's own formula), nothing while the link cannot produce key, and a pair fed
by a live link over real TLS."""

from __future__ import annotations

import time

import pytest

from hil.emulator.kme import (
    KME_BLOCK_S,
    LinkFedPair,
    finite_key_rate_bps,
    secure_key_rate_bps,
)
from hil.emulator.link import Link
from hil.emulator.physics import LinkParams

NOMINAL = LinkParams(mu=(0.6, 0.2, 2e-4), output_on=True, attenuation_db=10.0)


def test_rate_falls_with_loss_and_stays_below_the_asymptotic_bound():
    rates = [finite_key_rate_bps(NOMINAL.replace(attenuation_db=a)) for a in (0, 4, 7, 10)]
    assert all(a > b > 0 for a, b in zip(rates, rates[1:], strict=False)), rates
    for a in (0, 4, 7, 10):
        p = NOMINAL.replace(attenuation_db=a)
        assert finite_key_rate_bps(p) < secure_key_rate_bps(p)
    # longer blocks: less finite-size penalty
    assert finite_key_rate_bps(NOMINAL, 10.0) > finite_key_rate_bps(NOMINAL, KME_BLOCK_S)


@pytest.mark.parametrize(
    "fault",
    [
        {"link_connected": False},  # fiber cut (switch)
        {"output_on": False},  # laser off
        {"sync_enabled": False},  # sync lost
        {"attenuator_shutter_open": False},
        {"eve_fraction": 1.0},  # intercept-resend on every pulse: QBER past the threshold
    ],
)
def test_nothing_is_supplied_while_the_link_cannot_produce_key(fault):
    assert finite_key_rate_bps(NOMINAL) > 0
    assert finite_key_rate_bps(NOMINAL.replace(**fault)) == 0.0
    assert secure_key_rate_bps(NOMINAL.replace(**fault)) == 0.0


def test_a_link_fed_pair_fills_after_one_block_and_stops_when_the_fiber_is_cut():
    link = Link(NOMINAL.replace(attenuation_db=4.0))
    fed = LinkFedPair(link, max_key_count=100_000).start()
    try:
        store = fed.pair.store
        t0 = time.monotonic()
        while store.stored_bits() == 0:
            assert time.monotonic() - t0 < KME_BLOCK_S + 5, "no key after a block"
            time.sleep(0.02)
        # the first key exists only once a whole block of the link's pulses is distilled
        assert time.monotonic() - t0 >= KME_BLOCK_S - 0.1
        link.set("link_connected", False)
        time.sleep(0.2)  # > PUMP_INTERVAL_S: the supply has seen the cut
        before = fed.pair.supply.added_bits
        time.sleep(0.5)
        fed.pair.supply.pump()
        assert fed.pair.supply.added_bits == before
    finally:
        fed.stop()
