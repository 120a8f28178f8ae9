"""The emulated instruments act on the link as the physics says: an attenuator transition at
speed s takes (change / s) seconds of link time, visible in the count rate; ``*OPC?`` waits for
it; the switch in the cut position leaves only dark counts."""

from __future__ import annotations

import numpy as np

from hil.emulator.devices import Attenuator, Source, Switch
from hil.emulator.link import PS, Link
from hil.emulator.physics import (
    LinkParams,
    dark_count_rate_hz,
    expected_detection_probability,
)

SIGMAS = 5.0


def _bench(clock_hz: float = 10e6):
    # A 10 MHz clock keeps every detector below 100 kHz even at 0 dB, where the 10 ns dead
    # time loses < 0.1 % (below the statistical tolerance); afterpulsing off: the closed form
    # leaves it out.
    link = Link(LinkParams(afterpulse_prob=0.0))
    src, att, sw = Source(link), Attenuator(link), Switch(link)
    for cmd in (f"SOUR:CLOC {clock_hz:g}", "OUTP ON"):
        assert src.execute(cmd.encode()) is None
    assert att.execute(b"OUTP1:STAT ON;:INP1:ATT 0;*OPC?") == b"1\n"
    assert att.execute(b"SYST:ERR?") == b'0,"No error"\n'
    return link, att, sw


def _detector_counts(link: Link, t_stop_ps: int, bin_ps: int) -> np.ndarray:
    t0 = link.now_ps
    edges = np.arange(t0, t_stop_ps + 1, bin_ps)
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    while link.now_ps < t_stop_ps:
        ts, ch = link.step(t_stop_ps)
        det = ts[(ch >= 1) & (ch <= 4)]
        counts += np.histogram(det, bins=edges)[0]
    return counts


def _expected_rate(params: LinkParams, att_db: float) -> float:
    p = params.replace(attenuation_db=att_db)
    per_pulse = sum(p.p_mu[k] * expected_detection_probability(p, k) for k in range(3))
    return per_pulse * p.clock_hz


def test_attenuator_transition_takes_change_over_speed_in_the_count_rate():
    link, att, _ = _bench()
    speed = 5.0  # dB/s: 10 dB take 2 s of link time
    assert att.execute(f"INP1:ATT:SPE {speed:g}".encode()) is None
    bin_ps = PS // 20
    t_start = link.now_ps
    assert att.execute(b"INP1:ATT 10") is None  # no *OPC?: the ramp runs in the capture
    counts = _detector_counts(link, t_start + 3 * PS, bin_ps)
    params = link.params
    expected = []
    for i in range(len(counts)):
        # integrate the expected rate over the bin along att(t) = min(10, speed * t)
        ts = (i + (np.arange(20) + 0.5) / 20) * bin_ps / PS
        expected.append(
            np.mean([_expected_rate(params, min(10.0, speed * t)) for t in ts]) * bin_ps / PS
        )
    expected = np.array(expected)
    # Poisson counts per bin: 5 standard deviations
    dev = np.abs(counts - expected) / np.sqrt(expected)
    assert dev.max() <= SIGMAS, (int(dev.argmax()), counts[dev.argmax()], expected[dev.argmax()])
    # the transition is over after 2 s: the late bins sit on the 10 dB plateau, the early ones
    # are well above it (not a step at the start, not still ramping at 3 s)
    plateau = _expected_rate(params, 10.0) * bin_ps / PS
    assert counts[: int(1.5 * 20)].min() > plateau + SIGMAS * np.sqrt(plateau)
    assert np.all(np.abs(counts[int(2.1 * 20) :] - plateau) <= SIGMAS * np.sqrt(plateau))


def test_opc_waits_for_the_transition_in_link_time():
    link, att, _ = _bench()
    assert att.execute(b"INP1:ATT:SPE 4") is None
    t0 = link.now_ps
    assert att.execute(b"INP1:ATT 12;*OPC?") == b"1\n"
    # 12 dB at 4 dB/s: 3 s of link time (idle: nothing recorded, the clock skips ahead)
    assert link.now_ps - t0 == 3 * PS
    assert link.params.attenuation_db == 12.0


def test_switch_cut_leaves_only_dark_counts():
    link, _, sw = _bench(clock_hz=1e9)
    assert sw.handle(b"S 2") is None
    assert sw.handle(b"S?") == b"2\r\n"
    duration = 2 * PS
    counts = _detector_counts(link, link.now_ps + duration, duration)
    dark = sum(dark_count_rate_hz(link.params, j) for j in range(4)) * duration / PS
    assert abs(counts[0] - dark) <= SIGMAS * np.sqrt(dark), (counts[0], dark)


def test_long_chunks_only_while_nothing_ramps():
    """Unpaced acquisitions step in long chunks; a running ramp forces the short chunk so the
    ramp stays smooth, and a scheduled action still splits a chunk at its exact time."""
    link, att, _ = _bench()
    long_ps = 10 * link.chunk_ps
    t0 = link.now_ps
    link.step(t0 + PS, long_chunk_ps=long_ps)
    assert link.now_ps - t0 == long_ps
    assert att.execute(b"INP1:ATT:SPE 10;:INP1:ATT 5") is None  # a 0.5 s ramp starts
    t1 = link.now_ps
    link.step(t1 + PS, long_chunk_ps=long_ps)
    assert link.now_ps - t1 == link.chunk_ps
    fired = []
    t2 = link.now_ps + PS  # the ramp is over
    link.idle_until(t2)
    link.at(t2 + 3 * link.chunk_ps // 2, lambda: fired.append(link.now_ps))
    link.step(t2 + PS, long_chunk_ps=long_ps)
    assert link.now_ps == t2 + 3 * link.chunk_ps // 2 and fired == [link.now_ps]
