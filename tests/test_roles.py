"""The one registry of roles and drivers, and the one channel map (hil.roles)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hil import roles
from hil.analysis import timing
from hil.config import ConfigError


def test_channel_map_is_one():
    # hil.analysis imports only numpy and numba, so it keeps its own sync number: it must agree
    assert timing.SYNC_CHANNEL == roles.SYNC_CHANNEL
    assert timing.N_LINK_CHANNELS == len(roles.LINK_CHANNELS)
    assert [roles.detector_channel(n) for n in roles.DETECTOR_NAMES] == [1, 2, 3, 4]
    from hil import capture, criteria, postprocess
    from hil.fixtures import settings

    assert criteria.DETECTOR_NAMES is roles.DETECTOR_NAMES
    assert postprocess.DETECTOR_CHANNELS is roles.DETECTOR_CHANNELS
    assert capture.MARKER_CHANNEL == roles.MARKER_CHANNEL
    assert settings.LINK_INPUTS == roles.LINK_CHANNELS


def test_shipped_drivers_serve_their_roles():
    for role, name in roles.DEFAULT_DRIVERS.items():
        assert role in roles.driver_roles(name), name
    assert "tagger" not in roles.driver_roles("Instrument")  # a tagger needs the stream


def test_class_without_interface_is_refused(monkeypatch):
    monkeypatch.setitem(roles.DRIVERS, "Nothing", "collections:OrderedDict")
    with pytest.raises(ConfigError, match="neither an Instrument class nor a class offering"):
        roles.driver_class("Nothing")


def test_hil_drivers_lists_roles():
    out = subprocess.run(
        [sys.executable, "-m", "hil.cli", "drivers"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = {ln.split()[0]: ln for ln in out.stdout.splitlines()}
    assert "tagger" in lines["TimeTagger"] and "[default for tagger]" in lines["TimeTagger"]
    assert " detectors " in lines["DetectorUnit"]
