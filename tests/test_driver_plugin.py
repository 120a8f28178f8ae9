"""A driver package from outside the repository: built here as a wheel, installed with pip into
a folder of its own (not into the project's environment), found through the ``hil.drivers``
entry point, named in a bench file and used by a plan -- with no change to qkd-hil
(issue 16, "Done when")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from hil.config import builtin_bench_dir

# A lab's power-meter driver that is not an Instrument subclass: its own raw socket, its own
# deadline, the Driver members of hil.roles. It speaks the PM100's SCPI (the emulator's).
LAB_DRIVER = textwrap.dedent(
    '''
    """A lab's own power-meter driver (out of tree)."""
    import contextlib
    import socket
    import time


    class LabPowerMeter:
        roles = ("powermeter",)
        # instance attributes of the Driver interface, declared so the registry sees them
        name: str
        resource_name: str
        unreachable = None

        def __init__(self, resource, name=None, *, timeout_s=5.0, **kw):
            self.name, self.resource_name, self.timeout_s = name or "pm", resource, timeout_s
            _, host, port, _ = resource.split("::")
            self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
            self.buf = b""

        @contextlib.contextmanager
        def deadline(self, seconds):
            yield

        def query(self, command):
            self.sock.sendall(command.encode() + b"\\n")
            end = time.monotonic() + self.timeout_s
            while b"\\n" not in self.buf:
                if time.monotonic() > end:
                    raise TimeoutError(f"{self.name}: {command}: no answer")
                self.buf += self.sock.recv(4096)
            line, self.buf = self.buf.split(b"\\n", 1)
            return line.decode().strip()

        @property
        def idn(self):
            return self.query("*IDN?")

        def power_w(self):
            return float(self.query("MEAS:POW?"))

        def settings(self):
            return {"driver": "LabPowerMeter"}

        def safe_state(self):
            pass

        def round_trip_s(self, n=100):
            t0 = time.perf_counter()
            for _ in range(n):
                self.query("*IDN?")
            return (time.perf_counter() - t0) / n

        def close(self):
            self.sock.close()
    '''
)

PLAN = textwrap.dedent(
    """
    def test_lab_power_meter(bench):
        pm = bench.powermeter
        assert type(pm).__name__ == "LabPowerMeter" and type(pm).__module__ == "lab_pm"
        bench.source.output_enabled = False
        dark = pm.power_w()
        bench.source.output_enabled = True
        try:
            assert pm.power_w() > 10 * dark  # the source's light, well above the dark reading
        finally:
            bench.source.output_enabled = False
    """
)


def _wheel(tmp: Path) -> Path:
    """Build the lab's package as a wheel (a zip with its metadata and entry point)."""
    dist = "lab_pm-0.1.dist-info"
    files = {
        "lab_pm.py": LAB_DRIVER,
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: lab-pm\nVersion: 0.1\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[hil.drivers]\nLabPowerMeter = lab_pm:LabPowerMeter\n",
    }
    path = tmp / "lab_pm-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{dist}/RECORD", "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n")
    return path


@pytest.fixture(scope="module")
def lab_site(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lab")
    site = tmp / "site"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site)]
        + ["--disable-pip-version-check", "--quiet", str(_wheel(tmp))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return site


def _env(site: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_installed_driver_is_listed(lab_site):
    out = subprocess.run(
        [sys.executable, "-m", "hil.cli", "drivers"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(lab_site),
    )
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("LabPowerMeter "))
    assert "powermeter" in line and "lab_pm:LabPowerMeter" in line


def _bench(tmp: Path, driver: str) -> Path:
    text = (builtin_bench_dir() / "emulated.yaml").read_text()
    old = "  powermeter:\n    resource: emulator\n"
    assert old in text
    path = tmp / f"lab-{driver}.yaml"
    path.write_text(text.replace(old, old + f"    driver: {driver}\n"))
    return path


def test_plan_uses_the_lab_driver(lab_site, tmp_path):
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "test_lab.py").write_text(PLAN)
    bench = _bench(tmp_path, "LabPowerMeter")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path / "plan"), "--bench", str(bench)]
        + ["-q", "-p", "no:cacheprovider", "--results", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(lab_site),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout


def test_misspelt_driver_is_one_line_with_the_choices(lab_site, tmp_path):
    bench = _bench(tmp_path, "LabPowerMetre")
    out = subprocess.run(
        [sys.executable, "-c", f"from hil.config import load_bench; load_bench({str(bench)!r})"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(lab_site),
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    line = next(i + 1 for i, t in enumerate(bench.read_text().splitlines()) if "LabPowerMetre" in t)
    assert f"{bench}:{line}:" in last and "unknown driver 'LabPowerMetre'" in last, last
    assert "LabPowerMeter" in last.split("installed drivers:")[1], last
