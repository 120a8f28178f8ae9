"""Swabian Time Tagger adapter. Said plainly: nothing can create a Swabian tagger without the
hardware, so these tests run the adapter against a STAND-IN module written from the vendor's
documented API (tests/instruments/swabian_standin.py), not against the vendor's code; the real
package, where it installs, is only checked to refuse opening with no hardware in one line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from hil.instruments.base import InstrumentUnreachable
from hil.instruments.swabian import SwabianTimeTagger, import_api
from hil.roles import MARKER_CHANNEL, TaggerDriver, driver_roles, missing_members


@pytest.fixture
def standin(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "swabian_standin", Path(__file__).with_name("swabian_standin.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setitem(sys.modules, "swabian_standin", mod)
    monkeypatch.setattr(SwabianTimeTagger, "api_names", ("swabian_standin",))
    return mod


def test_adapter_offers_the_tagger_interface():
    assert missing_members(SwabianTimeTagger, TaggerDriver) == []
    assert driver_roles("SwabianTimeTagger") == ("tagger",)


def test_stream_maps_channels_and_drops_falling_edges(standin):
    tt = SwabianTimeTagger("swabian:", timeout_s=2)
    try:
        assert tt.idn == "Swabian Instruments,Time Tagger Ultra (stand-in),1910000ABC"
        tt.set_input(0, threshold_v=0.3, delay_s=1e-9)
        assert tt.tagger.calls == [("setTriggerLevel", 1, 0.3), ("setInputDelay", 1, 1000)]
        tt.start(1e-3)
        blocks = list(tt.stream())
        ts = np.concatenate([b[0] for b in blocks])
        ch = np.concatenate([b[1] for b in blocks])
        assert np.all(np.diff(ts) >= 0)
        # inputs 1..5 -> channels 0..4, 7 rising tags each; the falling edges are not tags
        assert np.bincount(ch, minlength=5).tolist() == [7, 7, 7, 7, 7]
        assert not tt.data_lost() and tt.status() == "DONE"
    finally:
        tt.close()


def test_overflow_and_missed_events_reach_the_loss_record(standin):
    tt = SwabianTimeTagger("swabian:", timeout_s=2)
    try:
        standin.TimeTagStream.inject = [(2, 0), (3, 0), (4, 17), (1, 0)]
        tt.start(1e-3)
        n = sum(len(b[0]) for b in tt.stream())
        assert n == 35  # the four non-tag events are not tags
        assert tt.data_lost()
        assert tt.loss_counts() == {"overflows": 1, "missed_events": 17, "errors": 1}
    finally:
        tt.close()


def test_marker_and_self_test(standin):
    tt = SwabianTimeTagger("swabian:", timeout_s=2)
    try:
        result = tt.self_test(duration_s=1e-3)
        assert result["ok"] and result["period_ps"] == standin.TEST_SIGNAL_PERIOD_PS, result
        assert tt.tagger.calls[-1] == ("setTestSignal", [1], False)  # switched off afterwards
        tt.start(1e-3)
        out = []
        for ts, ch in tt.stream():
            if not out:
                tt.mark()  # at the latest tag seen: lands in the next block, in time order
            out.append((ts, ch))
        ts = np.concatenate([b[0] for b in out])
        ch = np.concatenate([b[1] for b in out])
        assert int(np.count_nonzero(ch == MARKER_CHANNEL)) == 1
        assert np.all(np.diff(ts) >= 0)
    finally:
        tt.close()


def test_no_tagger_is_one_line(standin):
    with pytest.raises(InstrumentUnreachable) as err:
        SwabianTimeTagger("swabian:absent", timeout_s=2)
    assert str(err.value).count("\n") == 0
    assert "no Swabian Time Tagger opened (swabian:absent)" in str(err.value)


def test_missing_package_names_the_extra():
    with pytest.raises(InstrumentUnreachable, match=r"pip install 'qkd-hil\[swabian\]'"):
        import_api(("no_such_swabian_module",))


def test_real_package_without_hardware_is_one_line():
    """Where the vendor's package installs (Linux x86-64), opening with no tagger attached is
    the project's one-line error, not the vendor's exception."""
    pytest.importorskip("Swabian.TimeTagger", reason="swabian-timetagger does not install here")
    with pytest.raises(InstrumentUnreachable) as err:
        SwabianTimeTagger("swabian:", timeout_s=2)
    text = str(err.value)
    assert "\n" not in text and "no Swabian Time Tagger opened (swabian:)" in text, text


class _OneTaggerBench:
    """What acquire() asks of a bench, around the adapter alone (a lab bench with only this
    tagger; not emulated, so actions follow the tagger's clock)."""

    emulated = False

    def __init__(self, tagger):
        self.tagger = tagger

    def snapshot(self) -> dict:
        return {"instruments": {"tagger": {"idn": self.tagger.idn}}}


def test_capture_records_the_loss_counts(standin, tmp_path):
    from hil.capture import acquire

    tt = SwabianTimeTagger("swabian:", timeout_s=2)
    try:
        standin.TimeTagStream.inject = [(2, 0), (3, 0), (4, 17)]
        cap = acquire(_OneTaggerBench(tt), tmp_path / "cap.h5", 1e-3, progress=False)
        assert cap.data_lost and cap.n_tags == 35
        assert [e[1:] for e in cap.events] == [
            ("data-loss", "overflows 1, missed_events 17, errors 0")
        ]
    finally:
        tt.close()
