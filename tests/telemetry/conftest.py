"""Shared fixtures of the telemetry tests: the Prometheus tools (Debian package ``prometheus``)."""

import os
import shutil

import pytest


def _need_tool(name: str) -> str:
    """The path of ``name``; skips when it is missing, but fails under CI=true (.ci/run installs
    the Debian package prometheus, which brings prometheus and promtool)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: install the Debian package prometheus in CI")
        pytest.skip(f"{name} not installed (apt-get install prometheus); CI=true makes this fail")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _need_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _need_tool("prometheus")
