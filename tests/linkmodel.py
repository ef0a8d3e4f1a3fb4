"""Test doubles for the engine's seams, each a small but real model (nothing canned):

* :class:`ModelLink`: a BB84 weak-coherent-pulse channel (Poisson photons, loss,
  misalignment, dark counts, optional intercept-resend) between an in-process
  transmitter and receiver;
* :class:`ModelPostProcessing`: multi-pass interactive binary-search
  reconciliation (leakage counted both ways), Poly1305 verification with a fresh
  seed, Toeplitz amplification by FFT.

The engine is tested with these; the daemon uses the production implementations.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qkdd.frames import FramePattern
from qkdd.link.calibration import DetectorTiming
from qkdd.link.postprocess import Bits, ReconMessage, ReconResult
from qkdd.link.quantum import RawFrame
from qkdd.postprocessing.sifting import Detections


@dataclass
class ModelLink:
    eta: float = 0.1
    misalignment: float = 0.01
    dark_count: float = 1e-6
    p_key: float = 0.9
    mu: tuple[float, float, float] = (0.5, 0.1, 0.0002)
    p_class: tuple[float, float, float] = (0.7, 0.2, 0.1)
    intercept_resend: bool = False
    bias_monitor_a: float = 1e-6
    seed: int = 7
    calibrated_delay_ps: float | None = None
    slot_rate_hz: float = 1e7
    # Per detector (tagger channel), how far its timing peak has moved since the start.
    detector_shift_ps: dict[int, float] = field(default_factory=lambda: {1: 0.0, 2: 0.0})
    silent: bool = False  # Bob's instruments stop answering (the light still arrives)
    queue: asyncio.Queue[FramePattern] = field(default_factory=lambda: asyncio.Queue(4))

    def __post_init__(self) -> None:
        self.rng_a = np.random.default_rng([self.seed, 1])
        self.rng_b = np.random.default_rng([self.seed, 2])
        self.transmitter = _Tx(self)
        self.receiver = _Rx(self)

    def detect(self, pattern: FramePattern) -> Detections:
        rng = self.rng_b
        n = pattern.n_slots
        mu = np.asarray(self.mu)[pattern.intensity]
        p_click = 1 - np.exp(-self.eta * mu) + self.dark_count
        clicked = np.flatnonzero(rng.random(n) < p_click)
        bob_basis = (rng.random(clicked.size) >= self.p_key).astype(np.uint8)
        alice_basis = pattern.basis[clicked]
        bits = pattern.bit[clicked].copy()
        if self.intercept_resend:
            eve_basis = rng.integers(0, 2, clicked.size).astype(np.uint8)
            wrong_eve = eve_basis != alice_basis
            bits[wrong_eve] = rng.integers(0, 2, int(wrong_eve.sum())).astype(np.uint8)
            alice_basis = eve_basis
        flip = rng.random(clicked.size) < self.misalignment
        bits ^= flip.astype(np.uint8)
        other = bob_basis != alice_basis
        bits[other] = rng.integers(0, 2, int(other.sum())).astype(np.uint8)
        return Detections(slot=clicked.astype(np.int64), basis=bob_basis, bit=bits)


class _Tx:
    def __init__(self, link: ModelLink) -> None:
        self.link = link

    async def send_frame(self, frame: int, n_slots: int) -> FramePattern:
        rng = self.link.rng_a
        u = rng.random(n_slots)
        v = rng.random(n_slots)
        c1, c2 = self.link.p_class[0], self.link.p_class[0] + self.link.p_class[1]
        pattern = FramePattern(
            basis=(u >= self.link.p_key).astype(np.uint8),
            bit=rng.integers(0, 2, n_slots).astype(np.uint8),
            intensity=((v >= c1).astype(np.uint8) + (v >= c2).astype(np.uint8)),
        )
        await self.link.queue.put(pattern)
        return pattern

    async def send_pattern(self, pattern: FramePattern) -> None:
        await self.link.queue.put(pattern)


_DELAY_SLOTS = 7.4  # the model's fixed delay: 7 slots and a 40 % phase


class _Rx:
    def __init__(self, link: ModelLink) -> None:
        self.link = link

    async def _silence(self) -> None:
        """While silent, frames arrive and are lost, and nothing answers."""
        while self.link.silent:
            with contextlib.suppress(asyncio.QueueEmpty):
                self.link.queue.get_nowait()
            await asyncio.sleep(0.01)

    async def receive_frame(self, frame: int, n_slots: int) -> Detections:
        await self._silence()
        pattern = await self.link.queue.get()
        assert pattern.n_slots == n_slots
        return self.link.detect(pattern)

    async def monitor(self) -> dict[str, float]:
        return {"bias_monitor_a": self.link.bias_monitor_a}

    async def receive_raw(self, n_slots: int, max_offset_slots: int) -> RawFrame:
        """The model's clicks on a clock with a fixed delay of 7 slots and a 40 % phase
        (plus the detectors' mean timing shift)."""
        await self._silence()
        pattern = await self.link.queue.get()
        det = self.link.detect(pattern)
        period = 1e12 / self.link.slot_rate_hz
        shifts = self.link.detector_shift_ps.values()
        shift = sum(shifts) / max(1, len(shifts))
        times = np.rint((det.slot + _DELAY_SLOTS) * period + shift).astype(np.int64)
        return RawFrame(0, times, det.basis, det.bit)

    def set_delay(self, delay_ps: float) -> None:
        self.link.calibrated_delay_ps = delay_ps

    def timing(self) -> dict[int, DetectorTiming]:
        """Each detector's peak against the window Bob set last (50 ps jitter)."""
        period = 1e12 / self.link.slot_rate_hz
        window = self.link.calibrated_delay_ps or 0.0
        return {
            ch: DetectorTiming(_DELAY_SLOTS * period + shift - window, 50.0, 10_000)
            for ch, shift in self.link.detector_shift_ps.items()
        }


# -- reconciliation: interactive binary search over shuffled blocks ------------------------


def _parities(bits: Bits, order: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Bits:
    c = np.concatenate(([0], np.cumsum(bits[order], dtype=np.int64)))
    return ((c[ends] - c[starts]) & 1).astype(np.uint8)


class BinarySearchParty:
    """Alice answers parities; Bob locates one error per odd block by bisection.

    Every parity Alice sends is disclosed; so is each of Bob's left/right choices
    (it reveals his sub-block parity): λ_EC counts both directions.
    """

    def __init__(self, role: str, key: Bits, qber: float, passes: int = 12, seed: int = 99) -> None:
        self.role = role
        self.key = key.astype(np.uint8).copy()
        self.n = key.size
        self.passes = passes
        self.block = max(4, int(0.73 / max(qber, 1e-3)))
        self.seed = seed
        self.pass_no = 0
        self.leaked = 0
        self._finished = False
        self._intervals = np.empty((0, 2), np.int64)
        self._choices = np.empty(0, np.uint8)

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.pass_no]).permutation(self.n)

    def _blocks(self) -> tuple[np.ndarray, np.ndarray]:
        size = self.block * 2**self.pass_no
        starts = np.arange(0, self.n, size, dtype=np.int64)
        return starts, np.minimum(starts + size, self.n)

    @property
    def finished(self) -> bool:
        return self._finished

    def result(self) -> ReconResult:
        return ReconResult(self.key, True, self.leaked)

    def _msg(self, step: str, disclosed: dict[str, Bits], public: dict[str, Any]) -> ReconMessage:
        m = ReconMessage(self.role, step, disclosed, public)
        self.leaked += m.leaked_bits
        return m

    def start(self) -> ReconMessage | None:
        if self.role != "alice":
            return None
        return self._pass_parities()

    def _pass_parities(self) -> ReconMessage:
        starts, ends = self._blocks()
        par = _parities(self.key, self._order(), starts, ends)
        return self._msg("parities", {"parities": par}, {"pass": self.pass_no})

    def receive(self, m: ReconMessage) -> ReconMessage | None:
        self.leaked += m.leaked_bits
        if self.role == "alice":
            if m.step == "done":
                self._finished = True
                return None
            if m.step == "next":
                self.pass_no += 1
                return self._pass_parities()
            iv = np.asarray(m.public["left"], np.int64).reshape(-1, 2)
            par = _parities(self.key, self._order(), iv[:, 0], iv[:, 1])
            return self._msg("answer", {"parities": par}, {})
        # Bob
        if m.step == "parities":
            starts, ends = self._blocks()
            mine = _parities(self.key, self._order(), starts, ends)
            odd = mine != m.disclosed["parities"]
            self._intervals = np.stack([starts[odd], ends[odd]], axis=1)
        else:
            iv = self._intervals
            mid = (iv[:, 0] + iv[:, 1]) // 2
            mine = _parities(self.key, self._order(), iv[:, 0], mid)
            left_bad = mine != m.disclosed["parities"]
            self._choices = left_bad.astype(np.uint8)  # reveals his parity: disclosed
            iv = np.where(
                left_bad[:, None], np.stack([iv[:, 0], mid], 1), np.stack([mid, iv[:, 1]], 1)
            )
            self._intervals = iv
        done = self._intervals[:, 1] - self._intervals[:, 0] <= 1
        if done.any():
            order = self._order()
            self.key[order[self._intervals[done, 0]]] ^= 1
            self._intervals = self._intervals[~done]
        if self._intervals.size:
            iv = self._intervals
            left = np.stack([iv[:, 0], (iv[:, 0] + iv[:, 1]) // 2], 1)
            return self._bob("query", {"left": left.ravel()})
        if self.pass_no + 1 < self.passes:
            self.pass_no += 1
            return self._bob("next", {})
        self._finished = True
        return self._bob("done", {})

    def _bob(self, step: str, public: dict[str, Any]) -> ReconMessage:
        choices, self._choices = self._choices, np.empty(0, np.uint8)
        return self._msg(step, {"choices": choices}, public)


class ModelPostProcessing:
    verification_seed_bytes = 32

    def reconciler(self, role: str, key: Bits, qber: float) -> BinarySearchParty:
        return BinarySearchParty(role, key, qber)

    def verification_tag_bits(self, key_bits: int, eps_cor: float) -> int:
        return max(64, math.ceil(math.log2(1 / eps_cor)) + 8)

    def verification_tag(self, key: Bits, seed: bytes, tag_bits: int) -> bytes:
        mac = Poly1305(seed)
        mac.update(np.packbits(key).tobytes() + key.size.to_bytes(8, "big"))
        return mac.finalize()[: (tag_bits + 7) // 8]

    def amplification_seed_bits(self, key_bits: int, secret_bits: int) -> int:
        return key_bits + secret_bits - 1

    def amplify(self, key: Bits, seed: Bits, secret_bits: int) -> Bits:
        """ℓ × n Toeplitz matrix (first column and row from the seed) times the key, mod 2."""
        n, ell = key.size, secret_bits
        # T[i, j] = seed[i - j + n - 1]: a convolution of the key with the seed.
        full = np.fft.irfft(
            np.fft.rfft(seed.astype(np.float64), n + ell + n)
            * np.fft.rfft(key.astype(np.float64), n + ell + n),
            n + ell + n,
        )
        values = np.rint(full[n - 1 : n - 1 + ell]).astype(np.int64)
        return (values & 1).astype(np.uint8)
