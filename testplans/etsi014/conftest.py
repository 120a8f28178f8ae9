"""ETSI GS QKD 014 V1.1.1 conformance plan set-up: for any KME pair (``--bench vendor.yaml``
naming ``kme_a`` and ``kme_b``), or the emulated pair.

On a bench with a link (source, attenuator) the link is brought up at its nominal loss so the
KMEs have key to serve; a bench of KMEs alone is tested as it is. On the emulated bench the
environment variable ``QKD_HIL_KME_DEVIATIONS`` (comma-separated names of
``hil.emulator.kme.DEVIATIONS``) selects deviation profiles through the control instrument for
the session, so that the plan can be shown to catch each one (tests/keys); unset: spec-exact.
"""

import os

import pytest

from hil.fixtures.keyplane import link_supplying, set_deviations


@pytest.fixture(scope="session", autouse=True)
def kme_supply(bench):
    """The link up (when the bench has one) and the chosen deviation profiles (emulator)."""
    link_supplying(bench)
    chosen = os.environ.get("QKD_HIL_KME_DEVIATIONS", "")
    if chosen and not bench.has("control"):
        pytest.exit("QKD_HIL_KME_DEVIATIONS needs the emulator's control instrument", returncode=4)
    if bench.has("control"):
        set_deviations(bench, chosen)
    yield
    if bench.has("control"):
        set_deviations(bench, "")
