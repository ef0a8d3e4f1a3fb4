"""The quantum path as the link engine sees it: Alice sends frames, Bob detects them.

The engine talks to these two small protocols only. The implementations here
use the instrument interfaces (never a concrete driver): Alice's choices come
from her random source and go to the state encoder; Bob's detections come
from the time tagger, whose stream is cut at frame boundaries by the frame
trigger (one batch per armed frame), mapped to slots with the calibrated delay
and to (basis, bit) by the detector wiring of a passive four-detector receiver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from qkdd.frames import BASIS_K, BASIS_T, FramePattern
from qkdd.instruments.interfaces import (
    Laser,
    RandomSource,
    SinglePhotonDetector,
    StateEncoder,
    TimeTagger,
)
from qkdd.postprocessing.sifting import Detections


class FrameTransmitter(Protocol):
    """Alice's side: draw and send the pattern of one frame."""

    async def send_frame(self, frame: int, n_slots: int) -> FramePattern: ...


class FrameReceiver(Protocol):
    """Bob's side: the detections of one frame (slots relative to the frame)."""

    async def receive_frame(self, frame: int, n_slots: int) -> Detections: ...

    async def monitor(self) -> dict[str, float]:
        """Readings the engine watches (detector photocurrent for blinding)."""
        ...


@dataclass(frozen=True)
class ChoiceProbabilities:
    p_key: float
    p_class: tuple[float, float, float]


BYTES_PER_SLOT = 5


def pattern_from_bytes(
    data: bytes | bytearray, n_slots: int, p: ChoiceProbabilities
) -> FramePattern:
    """Alice's per-slot choices from raw random bytes: 16 bits for the basis (K with
    p_K, rounded to 1/65536), 16 for the intensity class, one byte's low bit for the
    bit value."""
    if len(data) < BYTES_PER_SLOT * n_slots:
        raise ValueError(f"{n_slots} slots need {BYTES_PER_SLOT * n_slots} random bytes")
    raw = np.frombuffer(bytes(data), dtype=np.uint8, count=BYTES_PER_SLOT * n_slots)
    raw = raw.reshape(n_slots, BYTES_PER_SLOT)
    u_basis = raw[:, 0].astype(np.uint32) << 8 | raw[:, 1]
    u_class = raw[:, 2].astype(np.uint32) << 8 | raw[:, 3]
    t1 = round(p.p_class[0] * 65536)
    t2 = round((p.p_class[0] + p.p_class[1]) * 65536)
    return FramePattern(
        basis=(u_basis >= round(p.p_key * 65536)).astype(np.uint8),
        bit=(raw[:, 4] & 1).astype(np.uint8),
        intensity=(u_class >= t1).astype(np.uint8) + (u_class >= t2).astype(np.uint8),
    )


class InstrumentTransmitter:
    """Alice's frames through the random source and the state encoder."""

    def __init__(
        self,
        random_source: RandomSource,
        encoder: StateEncoder,
        probabilities: ChoiceProbabilities,
        laser: Laser | None = None,
    ) -> None:
        self.random_source = random_source
        self.encoder = encoder
        self.laser = laser
        self.probabilities = probabilities
        self._laser_on = False

    async def send_frame(self, frame: int, n_slots: int) -> FramePattern:
        if self.laser is not None and not self._laser_on:
            await self.laser.set_enabled(True)
            self._laser_on = True
        data = await self.random_source.random_bytes(BYTES_PER_SLOT * n_slots)
        try:
            pattern = pattern_from_bytes(data, n_slots, self.probabilities)
        finally:
            data[:] = bytes(len(data))
        await self.encoder.load_frame(pattern)
        await self.encoder.arm()
        return pattern


# Passive receiver wiring: tagger channel → (basis, bit).
PASSIVE_WIRING: dict[int, tuple[int, int]] = {
    1: (BASIS_K, 0),
    2: (BASIS_K, 1),
    3: (BASIS_T, 0),
    4: (BASIS_T, 1),
}


def detections_from_tags(
    tags: npt.NDArray[np.void],
    *,
    first_slot: int,
    n_slots: int,
    period_ps: float,
    delay_ps: float,
    random_bits: npt.NDArray[np.uint8],
    wiring: dict[int, tuple[int, int]] = PASSIVE_WIRING,
) -> Detections:
    """Slot, basis and bit per detection; multi-clicks squashed (same basis: random
    bit; across bases: random basis and bit), using Bob's own random bits."""
    if len(tags) == 0:
        empty = np.empty(0, np.int64)
        return Detections(slot=empty, basis=empty.astype(np.uint8), bit=empty.astype(np.uint8))
    slot = np.rint((tags["timestamp_ps"].astype(np.float64) - delay_ps) / period_ps).astype(
        np.int64
    ) - int(first_slot)
    channel = tags["channel"].astype(np.int64)
    known = np.isin(channel, list(wiring))
    keep = known & (slot >= 0) & (slot < n_slots)
    slot, channel = slot[keep], channel[keep]
    table = np.zeros((max(wiring) + 1, 2), dtype=np.uint8)
    for ch, (b, v) in wiring.items():
        table[ch] = (b, v)
    basis, bit = table[channel, 0], table[channel, 1]
    order = np.argsort(slot, kind="stable")
    slot, basis, bit = slot[order], basis[order], bit[order]
    unique, first, counts = np.unique(slot, return_index=True, return_counts=True)
    out_basis = basis[first].copy()
    out_bit = bit[first].copy()
    multi = np.flatnonzero(counts > 1)
    if multi.size:
        if random_bits.size < 2 * multi.size:
            raise ValueError("not enough random bits to squash double clicks")
        for j, m in enumerate(multi):
            group = slice(first[m], first[m] + counts[m])
            if np.unique(basis[group]).size > 1:
                out_basis[m] = random_bits[2 * j]
            out_bit[m] = random_bits[2 * j + 1]
    return Detections(slot=unique, basis=out_basis, bit=out_bit)


class InstrumentReceiver:
    """Bob's detections through the time tagger (one batch per triggered frame)."""

    def __init__(
        self,
        tagger: TimeTagger,
        random_source: RandomSource,
        *,
        slot_rate_hz: float,
        delay_ps: float = 0.0,
        detectors: list[SinglePhotonDetector] | None = None,
    ) -> None:
        self.tagger = tagger
        self.random_source = random_source
        self.period_ps = 1e12 / slot_rate_hz
        self.delay_ps = delay_ps
        self.detectors = detectors or []
        self._stream: object | None = None
        self._next_slot = 0  # slots since the source started (the tagger's clock)

    async def receive_frame(self, frame: int, n_slots: int) -> Detections:
        if self._stream is None:
            await self.tagger.start()
            self._stream = aiter(self.tagger.tags())
        batch = await anext(self._stream)  # type: ignore[call-overload]
        first_slot = self._next_slot
        self._next_slot += n_slots
        squash = np.unpackbits(
            np.frombuffer(
                bytes(await self.random_source.random_bytes(1 + len(batch) // 4)), np.uint8
            )
        )
        return detections_from_tags(
            batch,
            first_slot=first_slot,
            n_slots=n_slots,
            period_ps=self.period_ps,
            delay_ps=self.delay_ps,
            random_bits=squash,
        )

    async def monitor(self) -> dict[str, float]:
        if not self.detectors:
            return {}
        return {"bias_monitor_a": max([await d.bias_monitor() for d in self.detectors])}
