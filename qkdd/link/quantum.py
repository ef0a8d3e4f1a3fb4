"""The quantum path as the link engine sees it: Alice sends frames, Bob detects them.

The engine talks to these two small protocols only. The implementations here
use the instrument interfaces (never a concrete driver): Alice's choices come
from her random source and go to the state encoder; Bob's detections come
from the time tagger, whose stream is cut at frame boundaries by the frame
trigger (one batch per armed frame), mapped to slots with the calibrated delay
and to (basis, bit) by the detector wiring of a passive four-detector receiver.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
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
from qkdd.link.calibration import DetectorTiming, detector_timing
from qkdd.postprocessing.sifting import Detections


class FrameTransmitter(Protocol):
    """Alice's side: draw and send the pattern of one frame."""

    async def send_frame(self, frame: int, n_slots: int) -> FramePattern: ...

    async def send_pattern(self, pattern: FramePattern) -> None:
        """Send a given (public) pattern: the calibration frame."""
        ...


class FrameReceiver(Protocol):
    """Bob's side: the detections of one frame (slots relative to the frame)."""

    async def receive_frame(self, frame: int, n_slots: int) -> Detections: ...

    async def monitor(self) -> dict[str, float]:
        """Readings the engine watches (detector photocurrent for blinding)."""
        ...

    async def receive_raw(self, n_slots: int, max_offset_slots: int) -> RawFrame:
        """The next frame's clicks without a delay applied (for calibration); Bob's slot
        clock is re-based so the frame starts at most ``max_offset_slots`` before its
        first click."""
        ...

    def set_delay(self, delay_ps: float) -> None: ...

    def timing(self) -> dict[int, DetectorTiming]:
        """Per detector, where the last frame's clicks fell relative to the window."""
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
        await self.send_pattern(pattern)
        return pattern

    async def send_pattern(self, pattern: FramePattern) -> None:
        if self.laser is not None and not self._laser_on:
            await self.laser.set_enabled(True)
            self._laser_on = True
        await self.encoder.load_frame(pattern)
        await self.encoder.arm()


@dataclass(frozen=True)
class RawFrame:
    """One frame's clicks as the tagger saw them: per detection (multi-clicks squashed)
    its earliest time, basis and bit; ``first_slot`` on Bob's slot clock."""

    first_slot: int
    times_ps: npt.NDArray[np.int64]
    basis: npt.NDArray[np.uint8]
    bit: npt.NDArray[np.uint8]


# Active receiver (Bob's random source drives the basis modulator): channel → bit.
ACTIVE_WIRING: dict[int, int] = {1: 0, 2: 1}
# Passive receiver wiring: tagger channel → (basis, bit).
PASSIVE_WIRING: dict[int, tuple[int, int]] = {
    1: (BASIS_K, 0),
    2: (BASIS_K, 1),
    3: (BASIS_T, 0),
    4: (BASIS_T, 1),
}


def group_clicks(
    tags: npt.NDArray[np.void],
    *,
    period_ps: float,
    phase_ps: float,
    bases: npt.NDArray[np.uint8] | None,
    random_bits: npt.NDArray[np.uint8],
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.uint8]
]:
    """Group tags into detections (one per slot on Bob's clock, tags within half a slot).

    Returns (slot index on the clock, earliest time, basis, bit). With an active
    receiver ``bases`` is Bob's own basis record of the frame's detections, in
    order; a passive receiver's basis comes from the wiring. Multi-clicks: same
    basis → random bit; both bases → random basis and bit (squashing).
    """
    empty = np.empty(0, np.int64)
    if len(tags) == 0:
        return empty, empty, empty.astype(np.uint8), empty.astype(np.uint8)
    times = tags["timestamp_ps"].astype(np.int64)
    channel = tags["channel"].astype(np.int64)
    order = np.argsort(times, kind="stable")
    times, channel = times[order], channel[order]
    if bases is not None:
        known = np.isin(channel, list(ACTIVE_WIRING))
        tag_bit = np.where(channel == 2, 1, 0).astype(np.uint8)
        tag_basis = np.zeros(len(channel), np.uint8)
    else:
        known = np.isin(channel, list(PASSIVE_WIRING))
        table = np.zeros((max(PASSIVE_WIRING) + 1, 2), dtype=np.uint8)
        for ch, (b, v) in PASSIVE_WIRING.items():
            table[ch] = (b, v)
        safe = np.where(known, channel, 0)
        tag_basis, tag_bit = table[safe, 0], table[safe, 1]
    times, tag_basis, tag_bit = times[known], tag_basis[known], tag_bit[known]
    # One detection = tags closer than half a slot (jitter is far below that).
    group = np.concatenate(([0], np.cumsum(np.diff(times) > period_ps / 2)))
    _, first, counts = np.unique(group, return_index=True, return_counts=True)
    slots = np.rint((times[first].astype(np.float64) - phase_ps) / period_ps).astype(np.int64)
    basis = tag_basis[first].copy()
    bit = tag_bit[first].copy()
    if bases is not None:
        if bases.size != slots.size:
            raise ValueError(f"basis record has {bases.size} entries for {slots.size} detections")
        basis = bases.astype(np.uint8).copy()
    multi = np.flatnonzero(counts > 1)
    if multi.size:
        if random_bits.size < 2 * multi.size:
            raise ValueError("not enough random bits to squash multi-clicks")
        # Per group: do its tags disagree on basis / bit? (min != max over the group)
        basis_mixed = np.minimum.reduceat(tag_basis, first) != np.maximum.reduceat(tag_basis, first)
        bit_mixed = np.minimum.reduceat(tag_bit, first) != np.maximum.reduceat(tag_bit, first)
        coin_basis = random_bits[0 : 2 * multi.size : 2]
        coin_bit = random_bits[1 : 2 * multi.size : 2]
        if bases is None:
            pick = basis_mixed[multi]
            basis[multi[pick]] = coin_basis[pick]
        pick = bit_mixed[multi]
        bit[multi[pick]] = coin_bit[pick]
    return slots, times[first], basis, bit


BasisRecord = Callable[[], npt.NDArray[np.uint8]]


class InstrumentReceiver:
    """Bob's detections through the time tagger (one batch per triggered frame).

    ``basis_record`` (active receivers) returns Bob's basis at each detection of the
    batch just read, in order; without it the receiver is passive (four detectors).
    """

    def __init__(
        self,
        tagger: TimeTagger,
        random_source: RandomSource,
        *,
        slot_rate_hz: float,
        delay_ps: float = 0.0,
        detectors: list[SinglePhotonDetector] | None = None,
        basis_record: BasisRecord | None = None,
    ) -> None:
        self.tagger = tagger
        self.random_source = random_source
        self.period_ps = 1e12 / slot_rate_hz
        self.delay_ps = delay_ps
        self.detectors = detectors or []
        self.basis_record = basis_record
        self._stream: AsyncIterator[npt.NDArray[np.void]] | None = None
        self._next_slot = 0  # Bob's slot clock: slots since the source started
        self._timing: dict[int, DetectorTiming] = {}

    def set_delay(self, delay_ps: float) -> None:
        self.delay_ps = delay_ps

    async def _batch(self, n_slots: int) -> tuple[int, npt.NDArray[np.void], npt.NDArray[np.uint8]]:
        if self._stream is None:
            await self.tagger.start()
            self._stream = aiter(self.tagger.tags())
        batch = await anext(self._stream)
        first_slot = self._next_slot
        self._next_slot += n_slots
        raw = await self.random_source.random_bytes(1 + len(batch) // 2)
        bits = np.unpackbits(np.frombuffer(bytes(raw), np.uint8))
        raw[:] = bytes(len(raw))
        return first_slot, batch, bits

    def _bases(self) -> npt.NDArray[np.uint8] | None:
        return None if self.basis_record is None else self.basis_record()

    def reset(self) -> None:
        """Forget the tag stream (after the simulated fibre or the tagger reconnected)."""
        self._stream = None

    async def receive_raw(self, n_slots: int, max_offset_slots: int) -> RawFrame:
        first_slot, batch, bits = await self._batch(n_slots)
        if len(batch):
            # Bob's clock has no relation to Alice's slot counter before calibration:
            # put the frame's start at most max_offset_slots before the first click.
            first_click = int(batch["timestamp_ps"].min())
            first_slot = int(first_click // self.period_ps) - max_offset_slots
            self._next_slot = first_slot + n_slots
        phase = (
            float(np.median(np.mod(batch["timestamp_ps"], self.period_ps))) if len(batch) else 0.0
        )
        _, times, basis, bit = group_clicks(
            batch, period_ps=self.period_ps, phase_ps=phase, bases=self._bases(), random_bits=bits
        )
        return RawFrame(first_slot, times, basis, bit)

    async def receive_frame(self, frame: int, n_slots: int) -> Detections:
        first_slot, batch, bits = await self._batch(n_slots)
        clock, _, basis, bit = group_clicks(
            batch,
            period_ps=self.period_ps,
            phase_ps=self.delay_ps,
            bases=self._bases(),
            random_bits=bits,
        )
        slot = clock - first_slot
        keep = (slot >= 0) & (slot < n_slots)
        self._timing = detector_timing(
            batch["timestamp_ps"].astype(np.int64),
            batch["channel"].astype(np.int64),
            period_ps=self.period_ps,
            delay_ps=self.delay_ps,
        )
        return Detections(slot=slot[keep], basis=basis[keep], bit=bit[keep])

    def timing(self) -> dict[int, DetectorTiming]:
        return self._timing

    async def monitor(self) -> dict[str, float]:
        if not self.detectors:
            return {}
        return {"bias_monitor_a": max([await d.bias_monitor() for d in self.detectors])}
