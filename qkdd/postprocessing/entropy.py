"""Binary entropy, shared by the key-length bound and reconciliation efficiency."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def binary_entropy(p: float) -> float:
    """h(p) = -p log2 p - (1-p) log2(1-p), with h(0) = h(1) = 0."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return float(-p * np.log2(p) - (1.0 - p) * np.log2(1.0 - p))


def binary_entropy_array(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Elementwise h(p) for arrays; 0 outside the open interval (0, 1)."""
    q = np.asarray(p, dtype=np.float64)
    inside = (q > 0.0) & (q < 1.0)
    safe = np.where(inside, q, 0.5)
    h = -safe * np.log2(safe) - (1.0 - safe) * np.log2(1.0 - safe)
    return np.where(inside, h, 0.0)
