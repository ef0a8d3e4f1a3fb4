"""Twins of Alice's instruments: laser, state encoder, attenuator, power meter, random source."""

from __future__ import annotations

import os

from qkdd.frames import FramePattern
from qkdd.instruments.config import InstrumentConfig
from qkdd.instruments.interfaces import (
    Attenuator,
    InstrumentHealth,
    Laser,
    PhaseRandomisation,
    PowerMeter,
    RandomSource,
    StateEncoder,
)
from qkdd.instruments.twins.base import Twin


class SimulatedLaser(Twin, Laser):
    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name, config)
        self._enabled = False
        self._power_mw = float(self.options.get("power_mw", 1.0))
        self._wavelength_nm = float(self.options.get("wavelength_nm", 1550.12))

    async def set_enabled(self, enabled: bool) -> None:
        self._require_connected()
        self._enabled = enabled

    async def is_enabled(self) -> bool:
        return self._enabled

    async def set_power_mw(self, power_mw: float) -> None:
        if power_mw < 0:
            raise ValueError("power must be >= 0 mW")
        self._power_mw = power_mw

    async def power_mw(self) -> float:
        return self._power_mw if self._enabled else 0.0

    async def set_wavelength_nm(self, wavelength_nm: float) -> None:
        self._wavelength_nm = wavelength_nm

    async def wavelength_nm(self) -> float:
        return self._wavelength_nm

    async def health(self) -> InstrumentHealth:
        return self._health(
            enabled=self._enabled,
            power_mw=await self.power_mw(),
            temperature_c=25.0,
            interlock=True,
        )


class SimulatedStateEncoder(Twin, StateEncoder):
    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name, config)
        self._loaded_slots = 0
        self._armed = False

    @property
    def phase_randomisation(self) -> PhaseRandomisation:
        return PhaseRandomisation.GAIN_SWITCHED

    async def load_frame(self, pattern: FramePattern) -> None:
        self._require_connected()
        self._loaded_slots = len(pattern)
        self._armed = False

    async def arm(self) -> None:
        if not self._loaded_slots:
            raise ValueError(f"{self.name}: no frame loaded")
        self._armed = True

    async def slot_rate_hz(self) -> float:
        return float(self.options.get("slot_rate_hz", 1e9))

    async def health(self) -> InstrumentHealth:
        return self._health(loaded_slots=self._loaded_slots, armed=self._armed)


class SimulatedAttenuator(Twin, Attenuator):
    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name, config)
        self._attenuation_db = float(self.options.get("attenuation_db", 60.0))

    async def set_attenuation_db(self, attenuation_db: float) -> None:
        if attenuation_db < 0:
            raise ValueError("attenuation must be >= 0 dB")
        self._attenuation_db = attenuation_db

    async def attenuation_db(self) -> float:
        return self._attenuation_db

    async def health(self) -> InstrumentHealth:
        return self._health(attenuation_db=self._attenuation_db)


class SimulatedPowerMeter(Twin, PowerMeter):
    async def power_w(self) -> float:
        return float(self.options.get("power_w", 1e-9))

    async def health(self) -> InstrumentHealth:
        return self._health(power_w=await self.power_w())


class SimulatedRandomSource(Twin, RandomSource):
    """The OS CSPRNG: computationally, not information-theoretically, random."""

    async def random_bytes(self, count: int) -> bytearray:
        self._require_connected()
        return bytearray(os.urandom(count))

    async def health(self) -> InstrumentHealth:
        return self._health(source="os.urandom (not a QRNG)")
