"""Continuous health tests for a hardware random source (NIST SP 800-90B, section 4.4).

The repetition count test catches a stuck source, the adaptive proportion
test a large loss of entropy. Samples are bytes; cut-offs follow from the
assessed min-entropy per byte ``H`` and the false-alarm probability α per
sample (2^-40 by default, so an honest source practically never trips).
State carries across calls, so a run split over two reads is still seen.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.stats import binom

APT_WINDOW = 512  # SP 800-90B window for non-binary samples


class EntropyHealthFailure(Exception):
    """The source failed a continuous health test; its output must not be used."""


def repetition_cutoff(min_entropy: float, alpha_log2: int = -40) -> int:
    """C = 1 + ⌈-log2(α) / H⌉ (SP 800-90B §4.4.1)."""
    return 1 + math.ceil(-alpha_log2 / min_entropy)


def proportion_cutoff(min_entropy: float, alpha_log2: int = -40) -> int:
    """C = 1 + CRITBINOM(W, 2^-H, 1 − α) (SP 800-90B §4.4.2): 1 + the least k with P(B > k) ≤ α."""
    p = 2.0**-min_entropy
    alpha = 2.0**alpha_log2
    k = int(binom.isf(alpha, APT_WINDOW, p))
    while binom.sf(k, APT_WINDOW, p) > alpha:
        k += 1
    while k > 0 and binom.sf(k - 1, APT_WINDOW, p) <= alpha:
        k -= 1
    return 1 + k


class ContinuousHealthTests:
    """Repetition count and adaptive proportion tests over a byte stream."""

    def __init__(self, min_entropy_per_byte: float = 7.0, alpha_log2: int = -40) -> None:
        if not 0 < min_entropy_per_byte <= 8:
            raise ValueError("min-entropy per byte lies in (0, 8]")
        self.rct_cutoff = repetition_cutoff(min_entropy_per_byte, alpha_log2)
        self.apt_cutoff = proportion_cutoff(min_entropy_per_byte, alpha_log2)
        self._last: int | None = None
        self._run = 0
        self._window_rest = np.empty(0, dtype=np.uint8)

    def check(self, data: bytes | bytearray) -> None:
        """Raise :class:`EntropyHealthFailure` if ``data`` (following earlier data) fails."""
        samples = np.frombuffer(bytes(data), dtype=np.uint8)
        if samples.size == 0:
            return
        self._repetition(samples)
        self._proportion(samples)

    def _repetition(self, samples: npt.NDArray[np.uint8]) -> None:
        starts = np.flatnonzero(np.diff(samples) != 0) + 1
        bounds = np.concatenate(([0], starts, [samples.size]))
        runs = np.diff(bounds)
        if self._last is not None and samples[0] == self._last:
            runs[0] += self._run
        if runs.max() >= self.rct_cutoff:
            raise EntropyHealthFailure(
                f"repetition count test failed: {int(runs.max())} identical samples "
                f"(cut-off {self.rct_cutoff})"
            )
        self._last = int(samples[-1])
        self._run = int(runs[-1])

    def _proportion(self, samples: npt.NDArray[np.uint8]) -> None:
        stream = np.concatenate((self._window_rest, samples))
        whole = stream.size // APT_WINDOW * APT_WINDOW
        windows = stream[:whole].reshape(-1, APT_WINDOW)
        self._window_rest = stream[whole:].copy()
        if windows.size == 0:
            return
        counts = (windows == windows[:, :1]).sum(axis=1)
        if counts.max() >= self.apt_cutoff:
            raise EntropyHealthFailure(
                f"adaptive proportion test failed: a value {int(counts.max())} times in "
                f"{APT_WINDOW} samples (cut-off {self.apt_cutoff})"
            )
