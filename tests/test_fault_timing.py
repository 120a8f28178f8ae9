"""Fault timing that does not depend on load or compilation.

- The emulated tagger's hold points (ACQ:HOLD/CONT) over its real socket: the link clock
  stops exactly at each hold, markers and commands sent meanwhile land at the held time, a
  hold nobody continues ends the acquisition, holds are bounded.
- acquire() on an emulated bench issues every action at exactly the link time asked, with
  actions and a consumer much slower than the acquisition (what a busy machine does).
- LinkMonitor.warm() leaves nothing for a capture's first window to compile.
- The change point that dates a transition inside a monitor window: against a brute-force
  reference, and on synthetic streams with a known step time, within its stated uncertainty.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from hil.bench import Bench
from hil.capture import acquire
from hil.fixtures.procedures import link_up
from hil.instruments.tagger import TimeTagger
from hil.monitor import change_point_spread, date_rate_step, rate_change_point

PS = 10**12


def _until(predicate, timeout_s: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.005)


def _drain(tg: TimeTagger) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    while True:
        ts, ch = tg.fetch()
        if not len(ts):
            break
        parts.append((ts.copy(), ch.copy()))
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.uint8)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@pytest.fixture()
def tagger(emu):
    tg = TimeTagger(emu.resources["tagger"], "tagger", timeout_s=5.0)
    tg.write("*RST;*CLS")
    yield tg
    tg.write("ACQ:STOP")
    assert tg.errors() == []
    tg.close()


def test_hold_points_stop_the_link_clock_exactly(tagger):
    tg = tagger
    t0 = tg.link_time_ps()
    tg.set_holds([0.005, 0.002], timeout_s=10)
    assert tg.query("ACQ:HOLD?") == "0.002,0.005"  # in link-time order
    tg.start(0.01)
    _until(lambda: tg.status() == "HELD", what="the first hold")
    held = tg.held_time_ps()
    assert held == t0 + 2 * PS // 1000
    before, _ = _drain(tg)
    assert len(before) and before.max() <= held  # nothing beyond the hold is generated
    time.sleep(0.05)  # wall time passes, link time does not
    assert tg.link_time_ps() == held and tg.status() == "HELD"
    assert not len(_drain(tg)[0])
    tg.mark()  # lands at the held time, not at the end of some later chunk
    ts, ch = _drain(tg)
    assert ts.tolist() == [held] and ch.tolist() == [TimeTagger.MARKER]
    tg.write("ACQ:HOLD 0.007")  # hold points belong to the start: refused while it runs
    assert tg.query("SYST:ERR?").startswith("-221")
    tg.resume()
    # at once: HELD now can only be the next hold (a client must not take the old one for it)
    assert tg.status() != "HELD" or tg.held_time_ps() != held
    _until(lambda: tg.status() == "HELD", what="the second hold")
    assert tg.held_time_ps() == t0 + 5 * PS // 1000
    tg.resume()
    _until(lambda: tg.status() == "DONE", what="the end")
    after, _ = _drain(tg)
    assert after.min() >= held
    assert tg.link_time_ps() == t0 + 10 * PS // 1000
    assert not tg.hold_expired()
    tg.write("ACQ:CONT")  # nothing to continue
    assert tg.query("SYST:ERR?").startswith("-200")
    assert tg.query("ACQ:HOLD?") == "NONE"  # used up by the acquisition that reached them


def test_a_hold_nobody_continues_ends_the_acquisition(tagger):
    tg = tagger
    tg.set_holds([0.001], timeout_s=0.2)
    t0 = tg.link_time_ps()
    tg.start(0.01)
    _until(lambda: tg.status() == "DONE", 5.0, "the end of an abandoned hold")
    assert tg.hold_expired()
    assert tg.link_time_ps() == t0 + PS // 1000  # it ended at the hold, not beyond
    _drain(tg)
    tg.start(0.001)  # the next acquisition starts normally and clears the flag
    _until(lambda: tg.status() == "DONE", 5.0, "the next acquisition")
    assert not tg.hold_expired()
    _drain(tg)


def test_hold_points_are_bounded(tagger):
    tg = tagger
    tg.write(";".join([":ACQ:HOLD 0.5"] * 1000))
    assert tg.query("SYST:ERR?") == '0,"No error"'
    tg.write("ACQ:HOLD 0.6")
    assert tg.query("SYST:ERR?").startswith("-223")
    tg.write("ACQ:HOLD:CLE")
    assert tg.query("ACQ:HOLD?") == "NONE"


@pytest.fixture(scope="module")
def bench():
    with Bench.open("emulated", measure_latency=False) as b:
        yield b


def test_actions_land_at_the_asked_link_time_however_slow_the_client(bench, tmp_path):
    """Each action takes 0.3 s of wall time and the consumer sleeps 5 ms per chunk: far more
    than the 0.3 s of link time captured. On an emulated bench the tagger holds its clock for
    each action: the cut and the restore still land at 0.1 s and 0.2 s exactly, and the
    count rate steps there in the tags themselves."""
    link_up(bench, 10)
    seen = {}

    def slow(name, fn):
        def action():
            time.sleep(0.3)
            fn()
            seen[name] = bench.tagger.link_time_ps()  # the clock stood while we took our time

        return action

    cap = acquire(
        bench,
        tmp_path / "cut.h5",
        0.3,
        actions=[
            (0.1, slow("cut", bench.switch.cut), "cut"),
            # the same ps as the cut in float noise (0.3 / 3 is not 0.1): one hold for both
            (0.3 / 3, lambda: None, "noted"),
            (0.2, slow("restore", bench.switch.restore), "restore"),
        ],
        on_chunk=lambda ts, ch: time.sleep(0.005),
        progress=False,
    )
    issued = {d: t for t, k, d in cap.events if k == "action-issued"}
    marked = {d: t for t, k, d in cap.events if k == "action"}
    asked = {"cut": cap.t_start_ps + PS // 10, "restore": cap.t_start_ps + 2 * PS // 10}
    assert issued == marked == {**seen, "noted": seen["cut"]}
    assert seen == asked
    from hil.store import open_capture

    with open_capture(cap.path) as f:
        ts, ch = f.tags()
    det = ts[(ch >= 1) & (ch <= 4)]

    def n(a, b):
        return int(np.count_nonzero((det >= a) & (det < b)))

    ms = PS // 1000
    cut, back = asked["cut"], asked["restore"]
    # light up to the cut and from the restore on; only dark counts (< 1 per ms) between
    assert n(cut - ms, cut) > 500 and n(back, back + ms) > 500
    assert n(cut, cut + ms) <= 5 and n(back - ms, back) <= 5


WARM_CHILD = textwrap.dedent(
    """
    import json, sys, tempfile
    from numba.core.registry import CPUDispatcher
    from hil.bench import Bench
    from hil.capture import acquire
    from hil.fixtures.procedures import link_up
    from hil.monitor import LinkMonitor
    from hil.postprocess import LinkSettings

    def compiled():
        out = {}
        for name, m in list(sys.modules.items()):
            if name.startswith(("hil.analysis", "hil.monitor", "hil.postprocess")):
                for k, v in vars(m).items():
                    if isinstance(v, CPUDispatcher):
                        out[name + "." + k] = [str(s) for s in v.signatures]
        return out

    with Bench.open("emulated", measure_latency=False) as b:
        link_up(b, 10)
        link = LinkSettings.from_source(b.source)
        cold = compiled()
        LinkMonitor.warm(link)
        warm = compiled()
        mon = LinkMonitor(link, b.source.sift, window_s=0.05)
        acquire(b, tempfile.mktemp(suffix=".h5"), 0.2, on_chunk=mon.feed, progress=False)
        after = compiled()
    print(json.dumps({
        "cold": sum(map(len, cold.values())),
        "warmed": sum(map(len, warm.values())),
        "new": sorted(k for k in after if after[k] != warm.get(k)),
        "states": [w.state.value for w in mon.windows],
    }))
    """
)


def test_warm_leaves_nothing_for_a_capture_to_compile(tmp_path):
    """In a fresh process (kernels load from numba's cache or compile): after
    LinkMonitor.warm(), analysing the windows of a real capture compiles no kernel."""
    out = subprocess.run(
        [sys.executable, "-c", WARM_CHILD],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["cold"] == 0 and res["warmed"] > 0
    assert res["new"] == []
    assert "UP" in res["states"], res  # the windows were analysed through to the sifting


# -- the change point -------------------------------------------------------------------------


def _reference_change_point(t: np.ndarray, a: float, b: float) -> float:
    """Brute force: the profile log-likelihood on a dense grid of step times plus every event
    time (approached from both sides), the best of them."""
    grid = np.concatenate((np.linspace(a, b, 20001)[1:-1], t, np.nextafter(t, np.inf)))
    n1 = np.searchsorted(t, grid, side="left").astype(float)
    n = len(t)
    l1, l2 = grid - a, b - grid
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = np.where(n1 > 0, n1 * np.log(n1 / l1), 0.0) + np.where(
            n - n1 > 0, (n - n1) * np.log((n - n1) / l2), 0.0
        )
    ll[(l1 <= 0) | (l2 <= 0)] = -np.inf
    return float(grid[int(np.argmax(ll))])


@pytest.mark.parametrize("r1,r2", [(2000.0, 500.0), (300.0, 3000.0), (1000.0, 0.0)])
def test_change_point_matches_the_brute_force_likelihood(r1, r2):
    rng = np.random.default_rng(int(r1 + r2))
    for _ in range(5):
        t0 = rng.uniform(0.3, 0.7)
        t = np.sort(
            np.concatenate(
                (
                    rng.uniform(0, t0, rng.poisson(r1 * t0)),
                    rng.uniform(t0, 1, rng.poisson(r2 * (1 - t0))),
                )
            )
        )
        tau, before, after = rate_change_point(t, 0.0, 1.0)
        ref = _reference_change_point(t, 0.0, 1.0)
        # the same maximum: equal up to where an event-time endpoint sits (one ulp)
        assert tau == pytest.approx(ref, abs=1e-9)
        # the rates are those of the events on either side; an event at tau itself is on one
        k = round(before * tau)
        assert k in (np.searchsorted(t, tau, "left"), np.searchsorted(t, tau, "right"))
        assert before == pytest.approx(k / tau)
        assert after == pytest.approx((len(t) - k) / (1 - tau))


@pytest.mark.parametrize(
    "r1,r2",
    [
        (1.5e6, 400.0),  # fiber cut / laser off at 10 dB: light to dark counts
        (400.0, 1.5e6),  # restored
        (1.5e6, 1.5e6 / 16),  # a 12 dB loss step
        (1e5, 0.0),  # the sync channel lost
    ],
)
def test_change_point_lies_within_its_stated_uncertainty(r1, r2):
    """Steps at random times in two 20 ms windows; u, the stated standard uncertainty, is the
    standard deviation of the estimate's error. The checks, from the statistics of 200 trials:
    the error is about a centred exponential (a cut: the last event before it), whose square
    has variance 8 u^4, so the mean square error scatters by sqrt(8/200) = 20 % and its root
    by 10 %: the RMS error over the RMS u must lie in [0.7, 1.3] (3 sigma); an exponential
    exceeds 3 u with probability e^-4 = 2 %, so at most 8 % may (16 of 200: > 4 sigma of the
    binomial); the bias is corrected, so the mean error must be within 0.3 u (its standard
    error is u / sqrt(200) = 0.07 u); and u must be finer than the window by far (< 1 %; the
    monitor's windows are 0.1 s)."""
    rng = np.random.default_rng(7)
    win = 0.02
    errs, us = [], []
    for _ in range(200):
        t0 = rng.uniform(0.5 * win, 1.5 * win)
        t = np.sort(
            np.concatenate(
                (
                    rng.uniform(0, t0, rng.poisson(r1 * t0)),
                    rng.uniform(t0, 2 * win, rng.poisson(r2 * (2 * win - t0))),
                )
            )
        )
        dated = date_rate_step(t, 0.0, win, 2 * win)
        assert dated is not None
        errs.append(dated[0] - t0)
        us.append(dated[1])
    errs, us = np.array(errs), np.array(us)
    u_rms = math.sqrt(np.mean(us**2))
    ratio = math.sqrt(np.mean(errs**2)) / u_rms
    assert 0.7 < ratio < 1.3, (ratio, errs, us)
    assert np.mean(np.abs(errs) > 3 * us) <= 0.08
    assert abs(np.mean(errs)) < 0.3 * u_rms
    assert us.max() < 0.01 * win


def test_no_step_is_not_dated_and_spread_needs_two_rates():
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 0.2, 200_000))  # one rate throughout
    assert date_rate_step(t, 0.0, 0.1, 0.2) is None
    with pytest.raises(ValueError, match="two different rates"):
        change_point_spread(5.0, 5.0)
