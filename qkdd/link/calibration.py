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
import math
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


# -- tracking: the detection window follows drift; per-detector shifts warn -----------------


@dataclass(frozen=True)
class DetectorTiming:
    """Where one detector's clicks fall relative to the current window centre."""

    offset_ps: float  # median of (tag time − window centre), folded into ±half a slot
    spread_ps: float  # robust standard deviation (1.4826 × MAD)
    clicks: int


def detector_timing(
    times_ps: npt.NDArray[np.int64],
    channels: npt.NDArray[np.integer],
    *,
    period_ps: float,
    delay_ps: float,
) -> dict[int, DetectorTiming]:
    """Per tagger channel: the timing peak's offset from the window centre (``delay_ps``).
    The median, not the mean, so dark counts spread over the slot do not pull it."""
    if times_ps.size == 0:
        return {}
    t = times_ps.astype(np.float64) - delay_ps
    residual = t - np.rint(t / period_ps) * period_ps
    out: dict[int, DetectorTiming] = {}
    for ch in np.unique(channels):
        r = residual[channels == ch]
        med = float(np.median(r))
        mad = float(np.median(np.abs(r - med)))
        out[int(ch)] = DetectorTiming(med, 1.4826 * mad, int(r.size))
    return out


@dataclass(frozen=True)
class TimingUpdate:
    """One frame's tracking outcome: the new window centre and what it says."""

    delay_ps: float
    shifted: dict[int, float]  # detector → shift (ps) beyond the warning bound
    lost: str | None  # why the window is lost (recalibrate), or None
    values: dict[str, float | int]


class TimingTracker:
    """Follow slow drift of the detection window with bounded steps (DESIGN §4).

    All detectors share one window (identical windows: a detector-dependent window
    would let timing select bit values). Each frame the common offset — the
    click-weighted mean of the detectors' peaks — moves the window by at most
    ``max_step_ps``. A detector whose peak sits more than ``warn_ps`` from the common
    one, or a window that has drifted more than ``warn_ps`` from its calibrated place,
    gives ``timing_shift`` (a time-shift attack shows there); a common offset beyond
    ``lost_ps`` means the window is lost and the link must recalibrate.
    """

    def __init__(
        self,
        period_ps: float,
        *,
        warn_ps: float | None = None,
        lost_ps: float | None = None,
        max_step_ps: float | None = None,
        min_clicks: int = 200,
        z: float = 6.0,
    ) -> None:
        self.period_ps = period_ps
        self.warn_ps = warn_ps if warn_ps is not None else 0.1 * period_ps
        self.lost_ps = lost_ps if lost_ps is not None else 0.3 * period_ps
        self.max_step_ps = max_step_ps if max_step_ps is not None else 0.02 * period_ps
        self.min_clicks = min_clicks
        self.z = z
        self.calibrated_ps = 0.0
        self.delay_ps = 0.0

    def calibrated(self, delay_ps: float) -> None:
        """A fresh calibration: the window centre and the reference for drift."""
        self.calibrated_ps = self.delay_ps = delay_ps

    def update(self, timing: dict[int, DetectorTiming]) -> TimingUpdate:
        usable = {ch: t for ch, t in timing.items() if t.clicks >= self.min_clicks}
        if not usable:
            return TimingUpdate(self.delay_ps, {}, None, {})
        clicks = sum(t.clicks for t in usable.values())
        common = sum(t.offset_ps * t.clicks for t in usable.values()) / clicks
        drift = self.delay_ps + common - self.calibrated_ps
        values: dict[str, float | int] = {
            "common_offset_ps": common,
            "drift_ps": drift,
            "warn_ps": self.warn_ps,
        }
        if abs(common) > self.lost_ps or abs(drift) > self.lost_ps:
            why = (
                f"detection window lost: peak {common:.0f} ps from the window centre, "
                f"{drift:.0f} ps from the calibrated one"
            )
            return TimingUpdate(self.delay_ps, {}, why, values)
        shifted: dict[int, float] = {}
        for ch, t in usable.items():
            # The statistical margin: a median of n clicks with spread s errs by ~1.25 s/√n.
            margin = self.z * 1.25 * t.spread_ps / math.sqrt(t.clicks)
            relative = t.offset_ps - common
            if abs(relative) > self.warn_ps + margin:
                shifted[ch] = relative
                values[f"detector_{ch}_shift_ps"] = relative
        if abs(drift) > self.warn_ps:
            shifted[0] = drift  # 0: the common window itself has drifted
        step = max(-self.max_step_ps, min(self.max_step_ps, common))
        self.delay_ps += step
        return TimingUpdate(self.delay_ps, shifted, None, values)
