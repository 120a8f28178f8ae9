"""Acceptance plan set-up: the transmitter as the vendor delivers it."""

import pytest

VENDOR_SETTINGS = {
    "intensities": (0.6, 0.2, 2e-4),
    "probabilities": (0.7, 0.2, 0.1),
    "z_probability": 0.6,
}


@pytest.fixture(scope="session")
def vendor_source(source):
    source.output_enabled = False
    for name, value in VENDOR_SETTINGS.items():
        setattr(source, name, value)
    return source
