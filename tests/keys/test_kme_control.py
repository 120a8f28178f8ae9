"""The emulated KME pair through the emulator's control instrument (over its real socket, with
the token): deviation profiles chosen at run time, the store's size and the supply rate."""

from __future__ import annotations

import pytest

from hil.fixtures.keyplane import raw_request
from hil.instruments.base import InstrumentError
from hil.instruments.control import EmulatorControl
from hil.keys import resolve


@pytest.fixture(scope="module")
def control(emu):
    c = EmulatorControl(emu.resources["control"], "control", auth_token=emu.control_token)
    yield c
    c.kme_deviations("")
    c.close()


def _info(emu):
    class _Spec:  # what hil.keys.resolve reads of a bench file: two emulated KMEs
        kmes = {r: type("K", (), {"resource": "emulator", "timeout_s": 5.0}) for r in ("kme_a",)}

    return resolve(_Spec, None, emu.kme.pair.ready_info())["kme_a"]


def test_a_deviation_profile_chosen_through_the_control_instrument_takes_effect(emu, control):
    info = _info(emu)
    outsider = (info["outsider_cert"], info["outsider_key"])
    path = f"/api/v1/keys/{info['peer_sae_id']}/status"
    status, _, body = raw_request(info, "GET", path, cert=outsider)
    assert (status, body) == (401, b"")  # spec-exact: no body
    control.kme_deviations(["body_on_401"])
    assert control.query("KME:DEV?").strip() == '"body_on_401"'
    status, _, body = raw_request(info, "GET", path, cert=outsider)
    assert status == 401 and b"message" in body
    control.kme_deviations("")
    assert raw_request(info, "GET", path, cert=outsider)[2] == b""


def test_unknown_profiles_and_store_settings_are_refused_or_applied(emu, control):
    with pytest.raises(InstrumentError, match="unknown KME deviations"):
        control.kme_deviations("teleport")
    control.kme_max_keys(123)
    assert int(control.query("KME:STOR:MAX?")) == 123 == emu.kme.pair.store.max_key_count
    control.kme_clear_store()
    assert int(control.query("KME:STOR:COUN?")) == 0
    assert control.kme_supply_bps() == 0.0  # the emulator starts with the source off
    control.kme_max_keys(2000)
