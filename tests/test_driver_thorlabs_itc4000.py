"""Thorlabs ITC4000 driver through real pyvisa against the shipped pyvisa-sim model."""

from __future__ import annotations

import pytest

from qkdd.drivers.thorlabs_itc4000 import ThorlabsITC4000
from qkdd.instruments.interfaces import DeviceError, InstrumentTimeout, Unsupported

from .conftest import instrument_config

GOOD = "USB0::0x1313::0x804A::M00000001::INSTR"
INTERLOCK_OPEN = "USB0::0x1313::0x804A::M00000002::INSTR"


def _laser(address: str = GOOD, **options: object) -> ThorlabsITC4000:
    cfg = instrument_config(
        kind="laser",
        driver="thorlabs-itc4000",
        address=address,
        visa_library="@sim",
        timeout_s=2.0,  # nothing here times out on purpose: room for a loaded machine
        options=options,
    )
    return ThorlabsITC4000("laser", cfg)


async def test_identity_and_output_round_trip() -> None:
    async with _laser(wavelength_nm=1550.12) as laser:
        assert (await laser.identity()).startswith("THORLABS,ITC4001,M00000001")
        assert not await laser.is_enabled()
        await laser.set_enabled(True)
        assert await laser.is_enabled()
        assert await laser.wavelength_nm() == 1550.12


async def test_power_setpoint_uses_constant_power_mode_in_watts() -> None:
    async with _laser() as laser:
        await laser.set_power_mw(3.5)
        assert await laser.scpi.query("SOUR:FUNC:MODE?") == "POW"
        assert float(await laser.scpi.query("SOUR:POW?")) == pytest.approx(3.5e-3)
        assert await laser.power_mw() == pytest.approx(2.004)  # the monitor photodiode


async def test_out_of_range_setpoint_surfaces_the_device_error() -> None:
    async with _laser() as laser:
        with pytest.raises(DeviceError, match=r"SOUR:POW .*-113"):
            await laser.set_power_mw(200.0)
        # the error queue was drained: the next command is clean
        await laser.set_power_mw(1.0)


async def test_healthy_controller_reports_readings() -> None:
    async with _laser() as laser:
        health = await laser.health()
        assert health.healthy, health.detail
        assert health.readings["temperature_c"] == pytest.approx(25.003)
        assert health.readings["current_ma"] == pytest.approx(45.23)
        assert health.readings["interlock_closed"] is True


async def test_open_interlock_is_unhealthy_and_named() -> None:
    async with _laser(INTERLOCK_OPEN) as laser:
        health = await laser.health()
        assert not health.healthy
        assert "interlock" in health.detail


async def test_wavelength_is_unsupported_without_nominal_value() -> None:
    async with _laser() as laser:
        with pytest.raises(Unsupported):
            await laser.wavelength_nm()
        with pytest.raises(Unsupported):
            await laser.set_wavelength_nm(1551.0)


async def test_timeout_then_resynchronised() -> None:
    async with _laser() as laser:
        # A command that gets no reply, read as if it were a query, times out...
        with pytest.raises(InstrumentTimeout):
            await laser.session.query("OUTP 1")
        # ...and the next query gets its own answer, not a stale one.
        assert await laser.is_enabled()
        assert (await laser.identity()).startswith("THORLABS")


async def test_wrong_instrument_is_refused() -> None:
    cfg = instrument_config(
        kind="laser",
        driver="thorlabs-itc4000",
        address="USB0::0x1DDC::0x0330::ID120SIM::INSTR",
        visa_library="@sim",
        timeout_s=0.3,
    )
    laser = ThorlabsITC4000("laser", cfg)
    with pytest.raises(Exception, match="expected a Thorlabs ITC4000"):
        await laser.connect()
