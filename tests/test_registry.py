"""Driver registry and the backend/fallback policy, with real drivers and the shipped sim models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from qkdd.instruments.interfaces import InstrumentClass, Laser
from qkdd.instruments.registry import (
    BackendUsed,
    DriverError,
    available_drivers,
    check_driver,
    load_driver,
    open_instrument,
)

from .conftest import instrument_config

SIM_LASER = "USB0::0x1313::0x804A::M00000001::INSTR"


def test_shipped_drivers_are_found_through_the_entry_point_group() -> None:
    assert {
        "thorlabs-itc4000",
        "keysight-33500b",
        "idq-id120",
        "swabian-timetagger",
        "idq-quantis",
    } <= set(available_drivers())
    driver = load_driver("thorlabs-itc4000")
    assert issubclass(driver, Laser)
    assert driver.instrument_class is InstrumentClass.LASER


def test_unknown_driver_lists_what_is_installed() -> None:
    with pytest.raises(DriverError, match=r"unknown driver 'nope' \(installed: .*idq-id120"):
        load_driver("nope")


def test_driver_of_the_wrong_class_is_a_config_error() -> None:
    cfg = instrument_config(kind="detector", driver="thorlabs-itc4000", address=SIM_LASER)
    with pytest.raises(DriverError, match="drives a laser, not a detector"):
        check_driver("spd", cfg)


def test_driver_on_the_wrong_transport_is_a_config_error() -> None:
    cfg = instrument_config(kind="laser", driver="thorlabs-itc4000", address="tcp://h:5025")
    with pytest.raises(DriverError, match="speaks visa, not tcp"):
        check_driver("laser", cfg)


async def test_hardware_backend_connects_the_real_driver() -> None:
    cfg = instrument_config(
        kind="laser", driver="thorlabs-itc4000", address=SIM_LASER, visa_library="@sim"
    )
    opened = await open_instrument("laser", cfg, allow_simulated=False)
    assert opened.backend is BackendUsed.HARDWARE
    assert opened.instrument is not None and not opened.instrument.simulated
    assert (await opened.instrument.identity()).startswith("THORLABS")
    await opened.instrument.close()


async def test_auto_falls_back_loudly_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    from qkdd.logging import configure_logging

    configure_logging("warning", json=True)
    cfg = instrument_config(
        kind="laser",
        driver="thorlabs-itc4000",
        backend="auto",
        address="USB0::0x1313::0x804A::NOSUCHUNIT::INSTR",
        visa_library="@sim",
    )
    opened = await open_instrument("laser", cfg, allow_simulated=True)
    assert opened.backend is BackendUsed.SIMULATED
    assert opened.instrument is not None and opened.instrument.simulated
    assert opened.reason.startswith("hardware failed (")
    assert "SIMULATED" in (await opened.instrument.identity())
    logged = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    assert any(e["event"] == "hardware unavailable, using the SIMULATED twin" for e in logged)


async def test_failed_hardware_without_simulation_is_unavailable_with_reason() -> None:
    cfg = instrument_config(
        kind="power_meter", driver="thorlabs-itc4000", backend="auto", address="tcp://h:1"
    )
    # (a wrong-class driver is caught first: the policy never hides a config error)
    with pytest.raises(DriverError):
        await open_instrument("pm", cfg, allow_simulated=False)
    cfg = instrument_config(
        kind="laser",
        driver="thorlabs-itc4000",
        address="USB0::0x1313::0x804A::NOSUCHUNIT::INSTR",
        visa_library="@sim",
    )
    opened = await open_instrument("laser", cfg, allow_simulated=False)
    assert opened.backend is BackendUsed.UNAVAILABLE
    assert opened.instrument is None
    assert "expected a Thorlabs ITC4000" in opened.reason  # nothing answers at that address


def _write_node(tmp_path: Path, instruments: dict[str, dict[str, object]], **node: object) -> Path:
    data = {
        "node": {"id": "b", "role": "bob", "link": "l1", "state_dir": "state", **node},
        "instruments": instruments,
    }
    path = tmp_path / "bob.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _devices(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qkdd", "devices", "-c", str(path), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_devices_json_mixes_hardware_and_twins(tmp_path: Path) -> None:
    path = _write_node(
        tmp_path,
        {
            "spd": {
                "class": "detector",
                "driver": "idq-id120",
                "address": "USB0::0x1DDC::0x0330::ID120SIM::INSTR",
                "visa_library": "@sim",
            },
            "tagger": {"class": "time_tagger", "backend": "simulated"},
            "qrng": {"class": "random_source", "backend": "simulated"},
        },
        allow_simulated=True,
    )
    proc = _devices(path)
    assert proc.returncode == 0, proc.stderr
    entries = {e["name"]: e for e in json.loads(proc.stdout)}
    assert entries["spd"]["backend"] == "hardware"
    assert entries["spd"]["driver"] == "idq-id120"
    assert "ID120" in entries["spd"]["identity"]
    assert entries["spd"]["healthy"] is True
    assert entries["tagger"]["backend"] == "simulated"
    assert entries["tagger"]["identity"].startswith("qkdd,SIMULATED")
    for entry in entries.values():
        assert {"name", "class", "driver", "backend", "identity", "healthy"} <= set(entry)
    assert "SIMULATED instruments on this node: tagger, qrng" in proc.stderr


def test_cli_devices_exit_1_when_a_required_instrument_is_unusable(tmp_path: Path) -> None:
    path = _write_node(
        tmp_path,
        {
            "spd": {
                "class": "detector",
                "driver": "idq-id120",
                "address": "USB0::0x1DDC::0x0330::ABSENT::INSTR",
                "visa_library": "@sim",
            },
            "tagger": {"class": "time_tagger", "driver": "swabian-timetagger", "address": "sdk:"},
            "qrng": {
                "class": "random_source",
                "driver": "idq-quantis",
                "address": "device:/nonexistent",
            },
        },
    )
    proc = _devices(path)
    assert proc.returncode == 1
    entries = {e["name"]: e for e in json.loads(proc.stdout)}
    assert all(e["backend"] == "unavailable" for e in entries.values())
    assert "SDK is not installed" in entries["tagger"]["reason"]
    assert "No such file" in entries["qrng"]["reason"]
    assert "required instruments unusable: spd, tagger, qrng" in proc.stderr


def test_cli_devices_on_a_bad_config_exits_2(tmp_path: Path) -> None:
    path = _write_node(
        tmp_path,
        {
            "spd": {"class": "detector", "driver": "nope", "address": "tcp://h:1"},
            "tagger": {"class": "time_tagger", "backend": "simulated"},
            "qrng": {"class": "random_source", "backend": "simulated"},
        },
        allow_simulated=True,
    )
    proc = _devices(path)
    assert proc.returncode == 2
    assert "instruments.spd.driver: unknown driver 'nope'" in proc.stderr
