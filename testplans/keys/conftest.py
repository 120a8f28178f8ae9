"""Key-delivery plan set-up: the link at the pilot's operating point and nominal loss when the
bench has one (a bench of KMEs alone is measured as it is: its link runs under the vendor's
control), and the emulated KME pair spec-exact with its default stock before each test."""

import pytest

from hil.fixtures.keyplane import has_link, link_supplying, set_deviations
from hil.fixtures.settings import NominalSettings, apply_settings, read_calibration

EMULATED_STOCK_KEYS = 2000  # hil.emulator.server.KME_MAX_KEYS

# the pilot's operating point (testplans/pilot/conftest.py): the link the KMEs are fed by
NOMINAL = NominalSettings(
    clock_hz=1e9,
    intensities=(0.6, 0.2, 2e-4),
    probabilities=(0.7, 0.2, 0.1),
    z_probability=0.6,
    wavelength_m=1550e-9,
    attenuation_db=10.0,
    efficiency=0.2,
    dead_time_s=10e-9,
    temperature_setpoint_c=-30.0,
)


@pytest.fixture(scope="session")
def keys_calibration(bench):
    return read_calibration(bench)


@pytest.fixture(scope="module")
def keys_link(bench, keys_calibration):
    """The operating point once, then the link up; ``keys_link()`` puts the link and the KME
    pair back to that state (each test calls it)."""

    def apply() -> bool:
        if bench.has("control"):
            set_deviations(bench, "")
            bench.control.kme_max_keys(EMULATED_STOCK_KEYS)
        # on, and left on: the KMEs' supply restarts a block after every source off
        return link_supplying(bench)

    if has_link(bench):
        apply_settings(bench, NOMINAL, keys_calibration)
    apply()
    return apply


@pytest.fixture(autouse=True)
def keys_state(keys_link):
    """Before each test: the link up (if any), the emulated pair spec-exact."""
    return keys_link()
