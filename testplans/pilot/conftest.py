"""Pilot plan set-up: the link's operating point the pilot agreed on, applied before every test.

Every pilot measurement starts from the same bench state, whatever ran before it: the
transmitter's intensities, probabilities, basis bias and clock, the nominal attenuation with the
shutter closed and the source off, the switch through, the detectors' efficiency, dead time and
temperature set point, and the tagger's link inputs (see ``hil.fixtures.settings``). The
measurement then sets what its criterion's conditions state. The fault tests under ``faults/``
start from the same state and clear the faults they inject.
"""

import pytest

from hil.fixtures.settings import PILOT, apply_settings


@pytest.fixture(autouse=True)
def pilot_settings(bench, bench_calibration):
    """Before each test: the pilot's operating point (``PILOT``) and the bench's calibration."""
    apply_settings(bench, PILOT, bench_calibration)
    return PILOT


@pytest.fixture
def pilot_source(source, pilot_settings):
    """The source at the pilot's operating point (output off until a measurement turns it on)."""
    return source
