"""Pilot plan set-up: the source settings the pilot agreed on, applied once per session.

The receiver side (detectors, tagger) keeps the bench's own settings; the transmitter is set to
the pilot's intensities, probabilities and basis bias before any measurement.
"""

import pytest

# Agreed transmitter settings of the pilot (decoy-state BB84, three intensities).
SOURCE_SETTINGS = {
    "intensities": (0.6, 0.2, 2e-4),  # signal, decoy, vacuum (mean photon numbers)
    "probabilities": (0.7, 0.2, 0.1),
    "z_probability": 0.6,
}


@pytest.fixture(scope="session")
def pilot_source(source):
    """The source configured with the pilot's agreed settings."""
    source.output_enabled = False
    source.intensities = SOURCE_SETTINGS["intensities"]
    source.probabilities = SOURCE_SETTINGS["probabilities"]
    source.z_probability = SOURCE_SETTINGS["z_probability"]
    return source
