"""Twins of Bob's instruments: single-photon detectors and the time tagger.

Attached to a :class:`~qkdd.physics.link.Receiver` and the simulated fibre,
the tagger streams the tags of every frame that arrives, exactly as a real
tagger would (channel, timestamp_ps, in time order, per-channel delays
applied), and the detectors report the receiver's click rates and bias
monitor. Unattached, the detectors click at their dark-count rate and the
tagger streams those clicks at a paced clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from qkdd.instruments.config import InstrumentConfig
from qkdd.instruments.interfaces import (
    TAG_DTYPE,
    DetectorMode,
    InstrumentHealth,
    SinglePhotonDetector,
    TimeTagger,
)
from qkdd.instruments.twins.base import Twin

if TYPE_CHECKING:
    from qkdd.instruments.twins.fibre import FrameSource
    from qkdd.physics.link import Receiver


class SimulatedDetector(Twin, SinglePhotonDetector):
    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name, config)
        self._channels = int(self.options.get("channels", 4))
        self._efficiency = float(self.options.get("efficiency_percent", 10.0))
        self._dead_time_ns = float(self.options.get("dead_time_ns", 10_000.0))
        self._dark_count_hz = float(self.options.get("dark_count_hz", 100.0))
        self._receiver: Receiver | None = None

    def attach_receiver(self, receiver: Receiver) -> None:
        """Report the simulated link's click rates and photocurrent."""
        self._receiver = receiver
        self._channels = receiver.physics.detectors

    async def set_efficiency(self, efficiency_percent: float) -> None:
        if not 0 < efficiency_percent <= 100:
            raise ValueError("efficiency must be in (0, 100] %")
        self._efficiency = efficiency_percent

    async def efficiency(self) -> float:
        return self._efficiency

    async def set_dead_time_ns(self, dead_time_ns: float) -> None:
        if dead_time_ns < 0:
            raise ValueError("dead time must be >= 0 ns")
        self._dead_time_ns = dead_time_ns

    async def dead_time_ns(self) -> float:
        return self._dead_time_ns

    async def mode(self) -> DetectorMode:
        return DetectorMode(self.options.get("mode", DetectorMode.GATED.value))

    async def count_rates_hz(self) -> list[float]:
        if self._receiver is not None:
            rate = self._receiver.link.slot_rate_hz
            return [float(c) * rate for c in self._receiver.click_rates_per_slot()]
        return [self._dark_count_hz] * self._channels

    async def temperature_c(self) -> float:
        return -50.0

    async def bias_monitor(self) -> float:
        """Photocurrent in A: about 1 µA of dark current; bright blinding light raises it."""
        if self._receiver is not None:
            return self._receiver.photocurrent_a()
        return 1.0e-6

    async def health(self) -> InstrumentHealth:
        return self._health(
            channels=self._channels,
            efficiency_percent=self._efficiency,
            dead_time_ns=self._dead_time_ns,
            temperature_c=await self.temperature_c(),
        )


class SimulatedTimeTagger(Twin, TimeTagger):
    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name, config)
        self._channels: dict[int, tuple[float, int]] = {
            ch: (0.1, 0) for ch in self.options.get("channels", [1, 2, 3, 4])
        }
        self._rate_hz = float(self.options.get("dark_count_hz", 100.0))
        self._batch_s = float(self.options.get("batch_s", 0.05))
        self._running = False
        self._clock_ps = 0
        self._rng = np.random.default_rng(self.options.get("seed"))
        self._receiver: Receiver | None = None
        self._fibre: FrameSource | None = None
        self._link_tags = 0
        # A tagger that stops answering (simulation, for fault tests): the light keeps
        # arriving and is lost, and no batch is delivered until it answers again.
        self.silent = False

    def attach(self, receiver: Receiver, fibre: FrameSource) -> None:
        """Stream the tags of the frames that arrive through ``fibre``."""
        self._receiver = receiver
        self._fibre = fibre
        self._channels = {
            ch: self._channels.get(ch, (0.1, 0)) for ch in range(1, receiver.physics.detectors + 1)
        }

    async def configure_channel(
        self, channel: int, *, trigger_level_v: float, delay_ps: int
    ) -> None:
        self._channels[channel] = (trigger_level_v, delay_ps)

    async def start(self) -> None:
        self._require_connected()
        self._running = True

    async def stop(self) -> None:
        self._running = False

    def _batch(self) -> npt.NDArray[np.void]:
        span_ps = int(self._batch_s * 1e12)
        parts = []
        for channel, (_level, delay_ps) in self._channels.items():
            n = int(self._rng.poisson(self._rate_hz * self._batch_s))
            batch = np.empty(n, dtype=TAG_DTYPE)
            batch["channel"] = channel
            batch["timestamp_ps"] = self._clock_ps + delay_ps + self._rng.integers(0, span_ps, n)
            parts.append(batch)
        self._clock_ps += span_ps
        tags = np.concatenate(parts) if parts else np.empty(0, dtype=TAG_DTYPE)
        return tags[np.argsort(tags["timestamp_ps"], kind="stable")]

    def _delayed(self, tags: npt.NDArray[np.void]) -> npt.NDArray[np.void]:
        """Apply the configured per-channel delays, as the tagger hardware does."""
        if not len(tags):
            return tags
        delays = np.zeros(int(tags["channel"].max()) + 1, dtype=np.int64)
        for ch, (_level, delay_ps) in self._channels.items():
            if ch < len(delays):
                delays[ch] = delay_ps
        if not delays.any():
            return tags
        out = tags.copy()
        out["timestamp_ps"] += delays[out["channel"]]
        return out[np.argsort(out["timestamp_ps"], kind="stable")]

    async def tags(self) -> AsyncIterator[npt.NDArray[np.void]]:
        if self._receiver is not None and self._fibre is not None:
            while self._running:
                frame = await self._fibre.receive()
                if frame is None:
                    return
                _detections, batch = self._receiver.receive(frame)
                self._link_tags += len(batch)
                if self._running and not self.silent:
                    yield self._delayed(batch)
            return
        while self._running:
            await asyncio.sleep(self._batch_s)
            if self._running:
                yield self._batch()

    async def count_rates_hz(self) -> dict[int, float]:
        if self._receiver is not None:
            rate = self._receiver.link.slot_rate_hz
            clicks = self._receiver.click_rates_per_slot()
            return {j + 1: float(c) * rate for j, c in enumerate(clicks)}
        return dict.fromkeys(self._channels, self._rate_hz)

    async def health(self) -> InstrumentHealth:
        return self._health(channels=len(self._channels), running=self._running)
