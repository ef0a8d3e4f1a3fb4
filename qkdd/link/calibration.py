"""Calibration: find the unknown delay between Alice's slot clock and Bob's tags (DESIGN §4).

Alice sends a calibration frame: every pulse at signal intensity, bases and bits
from a public seed (the frame is never used for key). Bob finds

* the sub-slot phase φ: the circular mean of the tag times modulo the slot
  period (the detection window is centred there), and
* the integer slot offset k: the cross-correlation of his (basis, bit) clicks
  with the pattern over every candidate offset (one FFT). At the true offset
  the bits agree wherever the bases do (QBER ≈ e_d); elsewhere half of them do.

The delay is k·P + φ. The peak must stand out (z = score/√D, D detections,
against the spread of a wrong offset's score), otherwise calibration fails and
is repeated. Pure numpy: runs in the engine's executor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qkdd.frames import BASIS_K, BASIS_T, FramePattern

MIN_PEAK_Z = 8.0


def calibration_pattern(seed: bytes, n_slots: int) -> FramePattern:
    """The public calibration frame: all signal class, basis and bit from ``seed``."""
    if len(seed) < 16:
        raise ValueError("a calibration seed has at least 16 bytes")
    digest = hashlib.sha256(b"qkdd-calibration-v1" + seed).digest()
    rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
    basis = rng.integers(0, 2, n_slots, dtype=np.uint8)
    bit = rng.integers(0, 2, n_slots, dtype=np.uint8)
    return FramePattern(basis=basis, bit=bit, intensity=np.zeros(n_slots, np.uint8))


@dataclass(frozen=True)
class DelayEstimate:
    delay_ps: float
    offset_slots: int
    phase_ps: float
    peak_z: float
    detections: int

    @property
    def found(self) -> bool:
        return bool(self.peak_z >= MIN_PEAK_Z)


def _signed(
    basis: npt.NDArray[np.uint8], bit: npt.NDArray[np.uint8], which: int
) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = np.where(basis == which, 2.0 * bit - 1.0, 0.0)
    return out


def find_delay(
    times_ps: npt.NDArray[np.int64],
    basis: npt.NDArray[np.uint8],
    bit: npt.NDArray[np.uint8],
    pattern: FramePattern,
    *,
    first_slot: int,
    period_ps: float,
    max_offset_slots: int,
) -> DelayEstimate:
    """Delay of the calibration frame's detections (one entry per detection)."""
    n = pattern.n_slots
    if times_ps.size < 16:
        return DelayEstimate(0.0, 0, 0.0, 0.0, int(times_ps.size))
    t = times_ps.astype(np.float64) - first_slot * period_ps
    angle = 2 * np.pi * np.mod(t, period_ps) / period_ps
    phase = float(np.angle(np.mean(np.exp(1j * angle)))) % (2 * np.pi)
    phase_ps = phase / (2 * np.pi) * period_ps
    u = np.rint((t - phase_ps) / period_ps).astype(np.int64)
    keep = (u >= 0) & (u < n + max_offset_slots)
    u, b, v = u[keep], basis[keep], bit[keep]
    size = 1 << int(np.ceil(np.log2(n + max_offset_slots + n)))
    score = np.zeros(size)
    for which in (BASIS_K, BASIS_T):
        bob = np.zeros(size)
        np.add.at(bob, u, _signed(b, v, which))
        alice = np.zeros(size)
        alice[:n] = _signed(pattern.basis, pattern.bit, which)
        # score[k] = Σ_u bob[u]·alice[u − k]
        score += np.fft.irfft(np.fft.rfft(bob) * np.conj(np.fft.rfft(alice)), size)
    candidates = score[: max_offset_slots + 1]
    k = int(np.argmax(candidates))
    # At a wrong offset each detection adds ±1 at random (or 0 where the bases
    # differ), so the score has standard deviation at most √D: a score of z·√D is a
    # z-sigma event there (the max over 10^6 wrong offsets is about 5σ).
    z = float(candidates[k] / np.sqrt(u.size)) if u.size else 0.0
    return DelayEstimate(k * period_ps + phase_ps, k, phase_ps, z, int(u.size))
