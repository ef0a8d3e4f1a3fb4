"""Thorlabs ITC4000-series laser diode and TEC controller (ITC4001, ITC4002QCL, ITC4005, ...).

SCPI over USBTMC, from the Thorlabs "Series 4000 SCPI Programmer's Reference":
output ``OUTP``, current ``SOUR:CURR``, constant-power mode ``SOUR:FUNC:MODE
POW`` with ``SOUR:POW`` (W), photodiode power ``MEAS:POW2?``, TEC ``OUTP2`` and
``MEAS:TEMP?``, keylock/interlock trips ``OUTP:PROT:KEYL:TRIP?`` and
``OUTP:PROT:INTL:TRIP?``, the protection condition register
``STAT:MEAS:COND?``, and the error queue ``SYST:ERR?`` (``+0,"No error"``).
The controller sets current or power, not wavelength: the wavelength is the
diode's nominal one (option ``wavelength_nm``), tuned only through the TEC.
"""

from __future__ import annotations

from typing import ClassVar

from qkdd.instruments.config import InstrumentConfig, TransportKind
from qkdd.instruments.interfaces import (
    InstrumentHealth,
    InstrumentUnavailable,
    Laser,
    Unsupported,
)
from qkdd.instruments.registry import HardwareDriver
from qkdd.instruments.scpi import ScpiChannel
from qkdd.instruments.session import InstrumentSession
from qkdd.instruments.transports import make_transport

# STAT:MEAS:COND? bits that mean the laser cannot emit as commanded.
_CONDITION_FAULTS = {
    0: "keylock",
    1: "LD compliance voltage",
    2: "LD interlock open",
    3: "LD current limit",
    5: "LD power limit",
    8: "temperature protection",
    9: "temperature window",
    10: "temperature sensor fail",
    11: "TEC compliance voltage",
    12: "TEC connection fail",
    14: "over-temperature",
}


class ThorlabsITC4000(HardwareDriver, Laser):
    driver_name = "thorlabs-itc4000"
    transports: ClassVar[frozenset[TransportKind]] = frozenset({TransportKind.VISA})
    description = "Thorlabs ITC4000-series laser diode / TEC controller (SCPI over USBTMC)"

    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name)
        self.session = InstrumentSession(name, make_transport(config))
        self.scpi = ScpiChannel(self.session)
        self._nominal_wavelength_nm = config.options.get("wavelength_nm")
        self._identity = ""

    async def connect(self) -> None:
        await self.session.open()
        self._identity = await self.scpi.identity()
        maker, _, rest = self._identity.partition(",")
        if maker.upper() != "THORLABS" or not rest.upper().startswith("ITC40"):
            await self.close()
            raise InstrumentUnavailable(
                f"{self.name}: expected a Thorlabs ITC4000-series controller, "
                f"found {self._identity!r}"
            )
        await self.session.write("*CLS")  # start from an empty error queue

    async def close(self) -> None:
        await self.session.close()

    async def identity(self) -> str:
        return self._identity

    async def set_enabled(self, enabled: bool) -> None:
        await self.scpi.write(f"OUTP {int(enabled)}")

    async def is_enabled(self) -> bool:
        return await self.scpi.query_bool("OUTP?")

    async def set_power_mw(self, power_mw: float) -> None:
        if power_mw < 0:
            raise ValueError("power must be >= 0 mW")
        await self.scpi.write("SOUR:FUNC:MODE POW")
        await self.scpi.write(f"SOUR:POW {power_mw / 1000:.6E}")

    async def power_mw(self) -> float:
        """Optical power measured by the monitor photodiode."""
        return 1000 * await self.scpi.query_float("MEAS:POW2?")

    async def set_current_ma(self, current_ma: float) -> None:
        """Constant-current operation at ``current_ma``."""
        await self.scpi.write("SOUR:FUNC:MODE CURR")
        await self.scpi.write(f"SOUR:CURR {current_ma / 1000:.6E}")

    async def current_ma(self) -> float:
        return 1000 * await self.scpi.query_float("MEAS:CURR?")

    async def set_wavelength_nm(self, wavelength_nm: float) -> None:
        raise Unsupported(
            f"{self.name}: an ITC4000 sets current or power; tune wavelength with the TEC setpoint"
        )

    async def wavelength_nm(self) -> float:
        if self._nominal_wavelength_nm is None:
            raise Unsupported(f"{self.name}: set options.wavelength_nm to the diode's wavelength")
        return float(self._nominal_wavelength_nm)

    async def set_tec_enabled(self, enabled: bool) -> None:
        await self.scpi.write(f"OUTP2 {int(enabled)}")

    async def temperature_c(self) -> float:
        return await self.scpi.query_float("MEAS:TEMP?")

    async def health(self) -> InstrumentHealth:
        keylock = await self.scpi.query_bool("OUTP:PROT:KEYL:TRIP?")
        interlock_open = await self.scpi.query_bool("OUTP:PROT:INTL:TRIP?")
        condition = int(await self.scpi.query_float("STAT:MEAS:COND?"))
        faults = [text for bit, text in _CONDITION_FAULTS.items() if condition >> bit & 1]
        if keylock and "keylock" not in faults:
            faults.append("keylock")
        if interlock_open and "LD interlock open" not in faults:
            faults.append("LD interlock open")
        errors = await self.scpi.errors()
        faults += [f"error {code} {message}" for code, message in errors]
        return InstrumentHealth(
            healthy=not faults,
            detail="; ".join(faults) or "ok",
            readings={
                "enabled": await self.is_enabled(),
                "tec_enabled": await self.scpi.query_bool("OUTP2?"),
                "temperature_c": await self.temperature_c(),
                "current_ma": await self.current_ma(),
                "power_mw": await self.power_mw(),
                "interlock_closed": not interlock_open,
            },
        )
