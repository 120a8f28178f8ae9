"""Acceptance plan set-up: the transmitter as the vendor delivers it, applied before every test
so that no requirement's value depends on which test ran before it (see
``hil.fixtures.settings``)."""

import pytest

from hil.fixtures.settings import NominalSettings, apply_settings

VENDOR = NominalSettings(
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


@pytest.fixture(autouse=True)
def vendor_settings(bench, bench_calibration):
    """Before each test: the vendor's operating point and the bench's calibration."""
    apply_settings(bench, VENDOR, bench_calibration)
    return VENDOR


@pytest.fixture
def vendor_source(source, vendor_settings):
    """The source at the vendor's operating point (output off until a measurement turns it on)."""
    return source
