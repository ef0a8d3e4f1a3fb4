"""Keysight (Agilent) 33500B / 33600A waveform generators driving a QKD source's modulators.

Channel 1 drives the intensity modulator (one DAC level per intensity class),
channel 2 the phase modulator (one DAC level per basis and bit). A frame is
uploaded as two arbitrary waveforms of 16-bit DAC codes in IEEE 488.2 binary
blocks (``FORM:BORD SWAP`` for little-endian, ``DATA:VOL:CLE``, then
``DATA:ARB:DAC name,#...``), selected with ``FUNC:ARB`` and played once per
external trigger (``BURS:MODE TRIG``, ``BURS:NCYC 1``, ``TRIG:SOUR EXT``).
Commands from the Keysight 33500B/33600A SCPI reference; errors from
``SYST:ERR?``. Reachable over USBTMC/LAN VISA or raw TCP (port 5025).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from qkdd.frames import FramePattern
from qkdd.instruments.config import InstrumentConfig, TransportKind
from qkdd.instruments.interfaces import (
    InstrumentHealth,
    InstrumentUnavailable,
    PhaseRandomisation,
    StateEncoder,
)
from qkdd.instruments.registry import HardwareDriver
from qkdd.instruments.scpi import ScpiChannel
from qkdd.instruments.session import InstrumentSession
from qkdd.instruments.transports import make_transport

WAVEFORM_NAME = "QKDFRAME"  # at most 12 characters
_MIN_POINTS = 8
_DAC_RANGE = (-32767, 32767)


def _dac_levels(values: object, count: int, option: str) -> np.ndarray:
    levels = np.asarray(values, dtype=np.int64)
    if levels.shape != (count,):
        raise ValueError(f"options.{option} needs {count} DAC codes")
    if levels.min() < _DAC_RANGE[0] or levels.max() > _DAC_RANGE[1]:
        raise ValueError(f"options.{option}: DAC codes lie in {_DAC_RANGE}")
    return levels.astype("<i2")


class Keysight33500B(HardwareDriver, StateEncoder):
    driver_name = "keysight-33500b"
    transports: ClassVar[frozenset[TransportKind]] = frozenset(
        {TransportKind.VISA, TransportKind.TCP}
    )
    description = "Keysight 33500B/33600A AWG driving intensity and phase modulators"

    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name)
        self.session = InstrumentSession(name, make_transport(config))
        self.scpi = ScpiChannel(self.session)
        options = config.options
        self.samples_per_slot = int(options.get("samples_per_slot", 1))
        self.sample_rate_hz = float(options.get("sample_rate_hz", 250e6))
        self.max_points = int(options.get("max_points", 1_048_576))
        self.intensity_dac = _dac_levels(
            options.get("intensity_dac", [32767, 9000, -32767]), 3, "intensity_dac"
        )
        # phase index = 2 * basis + bit: K0, K1, T0, T1 -> 0, π, π/2, 3π/2 on a linear drive
        self.phase_dac = _dac_levels(
            options.get("phase_dac", [-32767, 10922, -10922, 32767]), 4, "phase_dac"
        )
        self._randomisation = PhaseRandomisation(
            options.get("phase_randomisation", PhaseRandomisation.GAIN_SWITCHED.value)
        )
        self._identity = ""
        self._loaded_slots = 0

    @property
    def phase_randomisation(self) -> PhaseRandomisation:
        return self._randomisation

    async def connect(self) -> None:
        await self.session.open()
        self._identity = await self.scpi.identity()
        maker, _, rest = self._identity.partition(",")
        if not (maker.startswith(("Agilent", "Keysight")) and rest.startswith("33")):
            await self.close()
            raise InstrumentUnavailable(
                f"{self.name}: expected a Keysight 33500B/33600A, found {self._identity!r}"
            )
        await self.session.write("*CLS")
        await self.scpi.write("FORM:BORD SWAP")

    async def close(self) -> None:
        await self.session.close()

    async def identity(self) -> str:
        return self._identity

    def waveforms(self, pattern: FramePattern) -> tuple[np.ndarray, np.ndarray]:
        """The DAC codes of channel 1 (intensity) and channel 2 (phase) for a frame."""
        intensity = self.intensity_dac[pattern.intensity]
        phase = self.phase_dac[2 * pattern.basis.astype(np.intp) + pattern.bit]
        if self.samples_per_slot > 1:
            intensity = np.repeat(intensity, self.samples_per_slot)
            phase = np.repeat(phase, self.samples_per_slot)
        return intensity, phase

    async def load_frame(self, pattern: FramePattern) -> None:
        points = len(pattern) * self.samples_per_slot
        if not _MIN_POINTS <= points <= self.max_points:
            raise ValueError(
                f"{self.name}: a frame of {points} points is outside "
                f"{_MIN_POINTS}-{self.max_points}"
            )
        self._loaded_slots = 0
        for channel, codes in enumerate(self.waveforms(pattern), start=1):
            await self.scpi.write(f"SOUR{channel}:DATA:VOL:CLE")
            await self.scpi.write_block(
                f"SOUR{channel}:DATA:ARB:DAC {WAVEFORM_NAME},", codes.astype("<i2").tobytes()
            )
            await self.scpi.write(f"SOUR{channel}:FUNC:ARB {WAVEFORM_NAME}")
            await self.scpi.write(f"SOUR{channel}:FUNC ARB")
            await self.scpi.write(f"SOUR{channel}:FUNC:ARB:SRAT {self.sample_rate_hz:.6E}")
        if (await self.scpi.query("*OPC?")).strip() != "1":
            raise InstrumentUnavailable(f"{self.name}: upload did not complete")
        self._loaded_slots = len(pattern)

    async def arm(self) -> None:
        if not self._loaded_slots:
            raise ValueError(f"{self.name}: no frame loaded")
        for channel in (1, 2):
            await self.scpi.write(f"SOUR{channel}:BURS:MODE TRIG")
            await self.scpi.write(f"SOUR{channel}:BURS:NCYC 1")
            await self.scpi.write(f"SOUR{channel}:BURS:STAT ON")
            await self.scpi.write(f"TRIG{channel}:SOUR EXT")
            await self.scpi.write(f"OUTP{channel} ON")
        await self.scpi.write("FUNC:ARB:SYNC")

    async def slot_rate_hz(self) -> float:
        sample_rate = await self.scpi.query_float("SOUR1:FUNC:ARB:SRAT?")
        return sample_rate / self.samples_per_slot

    async def health(self) -> InstrumentHealth:
        errors = await self.scpi.errors()
        outputs = [await self.scpi.query_bool(f"OUTP{ch}?") for ch in (1, 2)]
        return InstrumentHealth(
            healthy=not errors,
            detail="; ".join(f"error {c} {m}" for c, m in errors) or "ok",
            readings={
                "loaded_slots": self._loaded_slots,
                "output1": outputs[0],
                "output2": outputs[1],
                "phase_randomisation": self._randomisation.value,
            },
        )
