"""Key-delivery plan set-up: the link at the pilot's operating point and nominal loss when the
bench has one (a bench of KMEs alone is measured as it is: its link runs under the vendor's
control), and the emulated KME pair spec-exact with its default stock before each test."""

import pytest

from hil.fixtures.keyplane import has_link, link_supplying, set_deviations
from hil.fixtures.settings import PILOT, apply_settings

EMULATED_STOCK_KEYS = 2000  # hil.emulator.server.KME_MAX_KEYS


@pytest.fixture(scope="module")
def keys_link(bench, bench_calibration):
    """The operating point once, then the link up; ``keys_link()`` puts the link and the KME
    pair back to that state (each test calls it)."""

    def apply() -> bool:
        if bench.has("control"):
            set_deviations(bench, "")
            bench.control.kme_max_keys(EMULATED_STOCK_KEYS)
        # on, and left on: the KMEs' supply restarts a block after every source off
        return link_supplying(bench)

    if has_link(bench):
        apply_settings(bench, PILOT, bench_calibration)
    apply()
    return apply


@pytest.fixture(autouse=True)
def keys_state(keys_link):
    """Before each test: the link up (if any), the emulated pair spec-exact."""
    return keys_link()
