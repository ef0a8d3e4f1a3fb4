"""The console script and ``python -m qkdd`` are real entry points."""

from __future__ import annotations

import subprocess
import sys

from qkdd import __version__


def test_python_dash_m_prints_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qkdd", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"qkdd {__version__}"


def test_no_command_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qkdd"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "usage: qkdd" in proc.stderr


def test_drivers_package_installs_as_qkdd_drivers() -> None:
    import qkdd.drivers

    assert qkdd.drivers.__file__ is not None
    assert qkdd.drivers.__file__.replace("\\", "/").endswith("drivers/__init__.py")
