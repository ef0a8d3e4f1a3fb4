"""Sifting: keep the detections whose basis matches Alice's, split by basis and intensity class.

Bases are K (the key basis, code 0) and T (the test basis, code 1); intensity
classes are 0 = μ1 (signal), 1 = μ2 (decoy), 2 = μ3 (vacuum or weak). Every
step is a numpy gather or compare, with no per-detection Python loop (DESIGN §7:
≥ 10^7 detections/s per core).

In the protocol, Bob reports (slot, basis) of each detection; Alice answers
with the basis match and the intensity class. Both ends then run
:func:`match_bases` on the same public data and apply the indices to their own
bits. All T-basis bits are revealed, so either end can count T errors per class;
K bits stay secret until reconciliation. :func:`sift` does both ends at once,
for the simulator, the tests and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from qkdd.frames import (
    BASIS_K,
    BASIS_T,
    N_CLASSES,
    BitArray,
    FramePattern,
    IntArray,
    as_bits,
    class_counts,
)

IndexArray = npt.NDArray[np.intp]

__all__ = [
    "BASIS_K",
    "BASIS_T",
    "N_CLASSES",
    "BlockStatistics",
    "Detections",
    "FramePattern",
    "SiftIndices",
    "SiftedFrame",
    "accumulate",
    "class_counts",
    "match_bases",
    "sift",
]


@dataclass(frozen=True, slots=True)
class Detections:
    """Bob's detections of one frame: slot index (strictly increasing), basis and bit.

    Double clicks are already squashed to one detection with a random bit and
    the common dead time is applied, so a slot holds at most one detection.
    """

    slot: IntArray
    basis: BitArray
    bit: BitArray

    def __post_init__(self) -> None:
        slot = np.asarray(self.slot)
        if slot.ndim != 1 or not np.issubdtype(slot.dtype, np.integer):
            raise ValueError("slot must be a one-dimensional integer array")
        object.__setattr__(self, "slot", slot.astype(np.int64, copy=False))
        object.__setattr__(self, "basis", as_bits("basis", self.basis))
        object.__setattr__(self, "bit", as_bits("bit", self.bit))
        if not len(self.slot) == len(self.basis) == len(self.bit):
            raise ValueError("slot, basis and bit must have the same length")
        if len(self.slot) > 1 and bool(np.any(np.diff(self.slot) <= 0)):
            raise ValueError("detection slots must be strictly increasing")

    def __len__(self) -> int:
        return len(self.slot)


@dataclass(frozen=True, slots=True)
class SiftIndices:
    """Which detections survive sifting, computed from public data only.

    ``key``/``test`` index Bob's detection list (in slot order); ``key_class``
    and ``test_class`` give the intensity class of each survivor.
    """

    key: IndexArray
    test: IndexArray
    key_class: BitArray
    test_class: BitArray

    def key_bits(self, bits: BitArray) -> BitArray:
        """One party's K-basis bits, given that party's bit per detection."""
        return bits[self.key]

    def test_bits(self, bits: BitArray) -> BitArray:
        """One party's T-basis bits, given that party's bit per detection."""
        return bits[self.test]


def match_bases(detections: Detections, pattern: FramePattern) -> SiftIndices:
    """Basis match of each detection against Alice's pattern (the public sifting step)."""
    slot = detections.slot
    if len(slot) and (slot[0] < 0 or slot[-1] >= pattern.n_slots):
        raise ValueError("detection slot outside the frame")
    alice_basis = pattern.basis[slot]
    bob_basis = detections.basis
    matched = alice_basis == bob_basis
    key = np.flatnonzero(matched & (bob_basis == BASIS_K))
    test = np.flatnonzero(matched & (bob_basis == BASIS_T))
    return SiftIndices(
        key=key,
        test=test,
        key_class=pattern.intensity[slot[key]],
        test_class=pattern.intensity[slot[test]],
    )


@dataclass(frozen=True, slots=True, eq=False)
class BlockStatistics:
    """Per-class counts that the finite-key bound reads (Lim 2014's n_X,k, n_Z,k, m_Z,k).

    ``key_counts[k]`` = n_K,k (matched K detections of class k), ``test_counts[k]``
    = n_T,k and ``test_errors[k]`` = m_T,k (T bits all revealed). K-basis errors
    are deliberately absent: the phase-error bound must come from T only.
    ``pulses`` is N, the number of pulses sent (a block is a fixed N).
    """

    pulses: int
    sent_per_class: IntArray
    key_counts: IntArray
    test_counts: IntArray
    test_errors: IntArray

    def __post_init__(self) -> None:
        for name in ("sent_per_class", "key_counts", "test_counts", "test_errors"):
            arr = np.asarray(getattr(self, name), dtype=np.int64)
            if arr.shape != (N_CLASSES,):
                raise ValueError(f"{name} must have one entry per intensity class")
            if bool(np.any(arr < 0)):
                raise ValueError(f"{name} must be non-negative")
            object.__setattr__(self, name, arr)
        if bool(np.any(self.test_errors > self.test_counts)):
            raise ValueError("more test errors than test detections")

    @classmethod
    def empty(cls) -> BlockStatistics:
        """Statistics of no pulses, the start of an accumulation."""
        zero = np.zeros(N_CLASSES, dtype=np.int64)
        return cls(0, zero, zero, zero, zero)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockStatistics):
            return NotImplemented
        return self.pulses == other.pulses and all(
            np.array_equal(getattr(self, n), getattr(other, n))
            for n in ("sent_per_class", "key_counts", "test_counts", "test_errors")
        )

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: BlockStatistics) -> BlockStatistics:
        return BlockStatistics(
            pulses=self.pulses + other.pulses,
            sent_per_class=self.sent_per_class + other.sent_per_class,
            key_counts=self.key_counts + other.key_counts,
            test_counts=self.test_counts + other.test_counts,
            test_errors=self.test_errors + other.test_errors,
        )

    @property
    def n_key(self) -> int:
        """n_K: sifted key bits in the block (Lim's n_X)."""
        return int(self.key_counts.sum())

    @property
    def n_test(self) -> int:
        """n_T: sifted test bits in the block."""
        return int(self.test_counts.sum())

    @property
    def test_qber(self) -> float:
        """Observed T-basis error rate over all classes (0 with no T bits)."""
        n = self.n_test
        return float(self.test_errors.sum()) / n if n else 0.0


def accumulate(frames: Iterable[BlockStatistics]) -> BlockStatistics:
    """Sum per-frame statistics into the statistics of one block."""
    total = BlockStatistics.empty()
    for frame in frames:
        total = total + frame
    return total


@dataclass(frozen=True, slots=True)
class SiftedFrame:
    """Both ends' sifted bits of one frame, split by basis, with their intensity classes.

    Only the simulator and tests hold both ends at once; in the link each end
    applies :class:`SiftIndices` to its own bits.
    """

    key_alice: BitArray
    key_bob: BitArray
    key_class: BitArray
    test_alice: BitArray
    test_bob: BitArray
    test_class: BitArray
    statistics: BlockStatistics = field(repr=False)

    def __repr__(self) -> str:  # bits are key material: never in a repr
        s = self.statistics
        return f"SiftedFrame(n_key={s.n_key}, n_test={s.n_test}, pulses={s.pulses})"

    def key_for_class(self, k: int) -> tuple[BitArray, BitArray]:
        """(Alice's, Bob's) K bits of intensity class k."""
        sel = self.key_class == k
        return self.key_alice[sel], self.key_bob[sel]

    def key_errors(self) -> int:
        """K-basis disagreements: a diagnostic only, the bound never reads it."""
        return int(np.count_nonzero(self.key_alice != self.key_bob))


def sift(detections: Detections, pattern: FramePattern) -> SiftedFrame:
    """Sift one frame: matching-basis bits of both ends by basis and class, plus statistics."""
    idx = match_bases(detections, pattern)
    slot = detections.slot
    key_alice = pattern.bit[slot[idx.key]]
    test_alice = pattern.bit[slot[idx.test]]
    key_bob = detections.bit[idx.key]
    test_bob = detections.bit[idx.test]
    wrong = test_alice != test_bob
    stats = BlockStatistics(
        pulses=pattern.n_slots,
        sent_per_class=pattern.sent_per_class(),
        key_counts=class_counts(idx.key_class),
        test_counts=class_counts(idx.test_class),
        test_errors=class_counts(idx.test_class[wrong]),
    )
    return SiftedFrame(
        key_alice=key_alice,
        key_bob=key_bob,
        key_class=idx.key_class,
        test_alice=test_alice,
        test_bob=test_bob,
        test_class=idx.test_class,
        statistics=stats,
    )
