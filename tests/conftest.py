"""Fixtures shared by the framework's own tests."""

import pytest

from hil.emulator.server import Emulator


@pytest.fixture(scope="module")
def emu():
    """An emulated bench served in this process on free loopback ports and a pty."""
    e = Emulator()
    e.start()
    yield e
    e.stop()
