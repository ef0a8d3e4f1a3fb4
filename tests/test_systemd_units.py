"""The shipped unit files pass `systemd-analyze verify` and keep the exposure score ≤ 2.0."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
ANALYZE = shutil.which("systemd-analyze")
if ANALYZE is None and os.environ.get("CI") != "true":  # CI installs systemd: never a skip there
    pytest.skip("systemd-analyze is not installed", allow_module_level=True)


def _instance(tmp_path: Path) -> Path:
    """The template as instance ``link1``, with ExecStart at the installed console script."""
    qkdd = shutil.which("qkdd") or str(Path(sys.executable).with_name("qkdd"))
    assert Path(qkdd).exists(), "the qkdd console script is not installed"
    text = (UNITS / "qkdd@.service").read_text()
    text = text.replace("/usr/local/bin/qkdd", qkdd)
    unit = tmp_path / "qkdd@link1.service"
    unit.write_text(text)
    return unit


def test_template_unit_verifies(tmp_path: Path) -> None:
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "verify", str(_instance(tmp_path))], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "qkdd@link1.service" not in proc.stderr, proc.stderr  # no warnings about our unit


def test_exposure_score_at_most_2(tmp_path: Path) -> None:
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(_instance(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    assert float(match[1]) <= 2.0


def test_unit_says_what_the_design_asks() -> None:
    text = (UNITS / "qkdd@.service").read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectoryMode=0700",
        "ProtectSystem=strict",
        "DevicePolicy=closed",
        "SupplementaryGroups=dialout",
        "CapabilityBoundingSet=\n",
    ):
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert "u qkdd" in (UNITS / "qkdd.sysusers.conf").read_text()
