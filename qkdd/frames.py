"""What Alice sends in a frame: per slot a basis, a bit and an intensity class.

Pure data shared by the instrument layer (the state encoder plays a pattern)
and post-processing (sifting matches Bob's detections against it). Bases are
K (the key basis, code 0) and T (the test basis, code 1); intensity classes
are 0 = μ1 (signal), 1 = μ2 (decoy), 2 = μ3 (vacuum or weak).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BASIS_K = 0
BASIS_T = 1
N_CLASSES = 3

IntArray = npt.NDArray[np.int64]
BitArray = npt.NDArray[np.uint8]


def as_bits(name: str, values: npt.ArrayLike, upper: int = 1) -> BitArray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > upper):
            raise ValueError(f"{name} values must lie in 0..{upper}")
        arr = arr.astype(np.uint8)
    elif arr.size and int(arr.max()) > upper:
        raise ValueError(f"{name} values must lie in 0..{upper}")
    return arr


def class_counts(classes: BitArray) -> IntArray:
    """Occurrences of each intensity class (count_nonzero: bincount would copy to intp first)."""
    c1 = np.count_nonzero(classes == 1)
    c2 = np.count_nonzero(classes == 2)
    return np.array([len(classes) - c1 - c2, c1, c2], dtype=np.int64)


@dataclass(frozen=True, slots=True)
class FramePattern:
    """Alice's per-slot choices for one frame: basis, bit and intensity class.

    ``class_totals`` (pulses sent per class) may be given by whoever drew the
    pattern; otherwise sifting counts it, the only step whose cost grows with
    the number of slots rather than detections.
    """

    basis: BitArray
    bit: BitArray
    intensity: BitArray
    class_totals: IntArray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "basis", as_bits("basis", self.basis))
        object.__setattr__(self, "bit", as_bits("bit", self.bit))
        object.__setattr__(self, "intensity", as_bits("intensity", self.intensity, N_CLASSES - 1))
        if not len(self.basis) == len(self.bit) == len(self.intensity):
            raise ValueError("basis, bit and intensity must have the same length")
        if self.class_totals is not None:
            totals = np.asarray(self.class_totals, dtype=np.int64)
            if totals.shape != (N_CLASSES,) or int(totals.sum()) != len(self.basis):
                raise ValueError("class_totals must give one count per class, summing to the slots")
            object.__setattr__(self, "class_totals", totals)

    def __len__(self) -> int:
        return len(self.basis)

    def __repr__(self) -> str:
        # Alice's choices are secret until sifting: never print them.
        return f"<FramePattern slots={len(self)}>"

    @property
    def n_slots(self) -> int:
        """Pulses sent in the frame."""
        return len(self.basis)

    def sent_per_class(self) -> IntArray:
        """Pulses sent in each intensity class."""
        if self.class_totals is not None:
            return self.class_totals
        return class_counts(self.intensity)
