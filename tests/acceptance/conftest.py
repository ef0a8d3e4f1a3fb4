"""Acceptance suite fixtures: a ``mosquitto_sub`` telemetry subscriber and the figures
each test reports, printed at the end of the run (whatever ``-q``/``-s`` say) in a
section "acceptance figures" of pytest's terminal summary."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.acceptance.telemetry import Telemetry
from tests.mqtt_broker import MosquittoBroker

_FIGURES: list[str] = []

Report = Callable[[str], None]


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Report:
    """``figures("keys per minute: 42")``: printed now and in the run's summary."""

    def report(line: str) -> None:
        print(line)
        _FIGURES.append(f"{request.node.name}: {line}")

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("acceptance figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def mosquitto_sub_bin() -> str:
    """The Mosquitto C client; missing is a skip locally and a failure in CI."""
    found = shutil.which("mosquitto_sub") or (
        "/usr/bin/mosquitto_sub" if os.access("/usr/bin/mosquitto_sub", os.X_OK) else None
    )
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("mosquitto_sub is required in CI (apt-get install mosquitto-clients)")
        pytest.skip("mosquitto_sub is not installed")
    return found


@pytest.fixture
def telemetry(
    mosquitto_sub_bin: str, mqtt_broker: MosquittoBroker, tmp_path: Path
) -> Iterator[Telemetry]:
    """``mosquitto_sub`` on every link's status, alarm and qber topics (not keys)."""
    sub = Telemetry(mosquitto_sub_bin, mqtt_broker, tmp_path / "telemetry.log")
    yield sub
    sub.stop()
