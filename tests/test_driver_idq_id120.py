"""ID Quantique ID120 driver through real pyvisa against the shipped pyvisa-sim model."""

from __future__ import annotations

import pytest

from qkdd.drivers.idq_id120 import IdqId120
from qkdd.instruments.interfaces import DetectorMode, DeviceError, InstrumentTimeout, Unsupported

from .conftest import instrument_config


def _detector(**options: object) -> IdqId120:
    cfg = instrument_config(
        kind="detector",
        driver="idq-id120",
        address="USB0::0x1DDC::0x0330::ID120SIM::INSTR",
        visa_library="@sim",
        timeout_s=0.3,
        options=options,
    )
    return IdqId120("spd", cfg)


async def test_settings_round_trip_in_device_units() -> None:
    async with _detector() as spd:
        assert "ID120" in await spd.identity()
        await spd.set_bias_voltage(190.5)
        assert await spd.bias_voltage() == pytest.approx(190.5)
        await spd.set_dead_time_ns(10_010)  # rounds to the 40 ns grid
        assert await spd.dead_time_ns() == 10_000
        assert await spd.mode() is DetectorMode.FREE_RUNNING


async def test_readings_are_scaled_to_si_units() -> None:
    async with _detector(efficiency_percent=25.0) as spd:
        assert await spd.temperature_c() == pytest.approx(-50.012)
        assert await spd.count_rates_hz() == [812.0]
        assert await spd.efficiency() == 25.0
        health = await spd.health()
        assert health.healthy, health.detail
        assert health.readings["bias_v"] == pytest.approx(180.0)


async def test_rejected_command_surfaces_through_esr() -> None:
    async with _detector() as spd:
        with pytest.raises(DeviceError, match="command error"):
            await spd.scpi.write("BIAS:VOLTAGE 999999999")  # outside the device's range
        await spd.set_bias_voltage(100.0)  # ESR was cleared by the read


async def test_local_range_checks_and_unsupported_features() -> None:
    async with _detector() as spd:
        with pytest.raises(ValueError, match="bias"):
            await spd.set_bias_voltage(300.0)
        with pytest.raises(Unsupported):
            await spd.set_efficiency(20.0)
        with pytest.raises(Unsupported):
            await spd.efficiency()
        with pytest.raises(Unsupported):
            await spd.bias_monitor()


async def test_warm_detector_is_unhealthy() -> None:
    async with _detector(max_temperature_c=-60.0) as spd:
        health = await spd.health()
        assert not health.healthy
        assert "above" in health.detail


async def test_unanswered_query_times_out_and_resynchronises() -> None:
    async with _detector() as spd:
        with pytest.raises(InstrumentTimeout):
            await spd.session.query("DEADTIME:TIME 400")  # a setting: no reply comes
        assert await spd.dead_time_ns() == 400
