"""Pilot plan set-up: the link's operating point the pilot agreed on, applied before every test.

Every pilot measurement starts from the same bench state, whatever ran before it: the
transmitter's intensities, probabilities, basis bias and clock, the nominal attenuation with the
shutter closed and the source off, the switch through, the detectors' efficiency, dead time and
temperature set point, and the tagger's link inputs (see ``hil.fixtures.settings``). The
measurement then sets what its criterion's conditions state. The fault tests under ``faults/``
start from the same state and clear the faults they inject.
"""

import pytest

from hil.fixtures.settings import NominalSettings, apply_settings, read_calibration

# The pilot's agreed operating point (decoy-state BB84, three intensities; 1 GHz clock;
# InGaAs detectors at -30 degC, 20 % efficiency, 10 ns dead time).
PILOT = NominalSettings(
    clock_hz=1e9,
    intensities=(0.6, 0.2, 2e-4),  # signal, decoy, vacuum (mean photon numbers)
    probabilities=(0.7, 0.2, 0.1),
    z_probability=0.6,
    wavelength_m=1550e-9,
    attenuation_db=10.0,
    efficiency=0.2,
    dead_time_s=10e-9,
    temperature_setpoint_c=-30.0,
)


@pytest.fixture(scope="session")
def bench_calibration(bench):
    """The bench's own settings (tagger thresholds and delays, attenuator offset, ...), read
    when the session opened it, restored before each test."""
    return read_calibration(bench)


@pytest.fixture(autouse=True)
def pilot_settings(bench, bench_calibration):
    """Before each test: the pilot's operating point (``PILOT``) and the bench's calibration."""
    apply_settings(bench, PILOT, bench_calibration)
    return PILOT


@pytest.fixture
def pilot_source(source, pilot_settings):
    """The source at the pilot's operating point (output off until a measurement turns it on)."""
    return source
