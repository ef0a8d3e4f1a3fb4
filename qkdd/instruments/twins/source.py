"""Twins of Alice's instruments: laser, state encoder, attenuator, power meter, random source."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

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
from qkdd.physics.link import PreparedFrame

if TYPE_CHECKING:
    from qkdd.instruments.twins.fibre import FibreTransmitter


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
    """Alice's modulators: an armed frame leaves as prepared pulses into the simulated fibre.

    Phase-randomised weak coherent pulses (gain-switched): the receiver's
    physics draws Poisson photon numbers. With ``pace`` the frames leave no
    faster than the slot clock, so many simulated links can share few cores.
    """

    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name, config)
        self._loaded_slots = 0
        self._armed = False
        self._pattern: FramePattern | None = None
        self._fibre: FibreTransmitter | None = None
        self._frames_sent = 0
        self._next_slot = 0
        self._pace = bool(self.options.get("pace", False))
        self._clock_start: float | None = None

    def attach_fibre(self, fibre: FibreTransmitter, *, pace: bool | None = None) -> None:
        """Send every armed frame into ``fibre`` (the simulated link's transmitter end)."""
        self._fibre = fibre
        if pace is not None:
            self._pace = pace

    @property
    def phase_randomisation(self) -> PhaseRandomisation:
        return PhaseRandomisation.GAIN_SWITCHED

    async def load_frame(self, pattern: FramePattern) -> None:
        self._require_connected()
        self._loaded_slots = len(pattern)
        self._pattern = pattern
        self._armed = False

    async def arm(self) -> None:
        """Arm; on the simulated link the trigger is immediate and the frame is sent."""
        if not self._loaded_slots or self._pattern is None:
            raise ValueError(f"{self.name}: no frame loaded")
        self._armed = True
        if self._fibre is None:
            return
        frame = PreparedFrame(self._frames_sent, self._next_slot, self._pattern)
        if self._pace:
            await self._wait_for_clock(self._next_slot + len(self._pattern))
        await self._fibre.send(frame)
        self._frames_sent += 1
        self._next_slot += len(self._pattern)
        self._armed = False

    async def _wait_for_clock(self, slots: int) -> None:
        rate = await self.slot_rate_hz()
        now = time.monotonic()
        if self._clock_start is None:
            self._clock_start = now
        due = self._clock_start + slots / rate
        if due > now:
            await asyncio.sleep(due - now)

    async def slot_rate_hz(self) -> float:
        return float(self.options.get("slot_rate_hz", 1e9))

    async def health(self) -> InstrumentHealth:
        return self._health(
            loaded_slots=self._loaded_slots, armed=self._armed, frames_sent=self._frames_sent
        )


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
