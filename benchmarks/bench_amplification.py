"""Privacy-amplification throughput: exact FFT Toeplitz hash, input bits per second.

Baseline, measured in the same run: the direct numpy.fft convolution of
research/performance.md §3 (three float64 numpy FFTs of a fast length). Also times
qkdd's own single-FFT path (no pieces), to show what the cache-sized pieces buy.

    python benchmarks/bench_amplification.py [--sizes 100000 1000000] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import scipy.fft

from qkdd.postprocessing.amplification import toeplitz_hash

Bits = npt.NDArray[np.uint8]


def _baseline(key: Bits, seed: Bits, ell: int) -> Bits:
    n = key.size
    size = scipy.fft.next_fast_len(n + ell - 1, real=True)
    c = np.fft.irfft(
        np.fft.rfft(key.astype(np.float64), size) * np.fft.rfft(seed.astype(np.float64), size),
        size,
    )
    return (np.rint(c[n - 1 : n + ell - 1]).astype(np.int64) & 1).astype(np.uint8)


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(n: int, ratio: float, repeats: int) -> dict[str, float | int]:
    rng = np.random.default_rng(n)
    ell = max(1, int(n * ratio))
    key = rng.integers(0, 2, n, dtype=np.uint8)
    seed = rng.integers(0, 2, n + ell - 1, dtype=np.uint8)
    assert np.array_equal(toeplitz_hash(key, seed, ell), _baseline(key, seed, ell))
    t_q = _best_seconds(lambda: toeplitz_hash(key, seed, ell), repeats)
    t_b = _best_seconds(lambda: _baseline(key, seed, ell), repeats)
    piece = n + ell  # one FFT over the whole block, for comparison
    t_p = _best_seconds(lambda: toeplitz_hash(key, seed, ell, piece_bits=piece), repeats)
    return {
        "n": n,
        "ell": ell,
        "bits_per_s": n / t_q,
        "baseline_bits_per_s": n / t_b,
        "speedup": t_b / t_q,
        "single_fft_bits_per_s": n / t_p,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--ratio", type=float, default=0.25, help="ell / n")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [measure(n, args.ratio, args.repeats) for n in args.sizes]
    if args.json:
        print(json.dumps({"pa": rows}, indent=2))
        return
    print(f"{'n':>10} {'ell':>9} {'Mbit/s':>8} {'base':>8} {'ratio':>6} {'1-FFT':>8}")
    for r in rows:
        print(
            f"{r['n']:>10} {r['ell']:>9} {r['bits_per_s'] / 1e6:8.1f} "
            f"{r['baseline_bits_per_s'] / 1e6:8.1f} {r['speedup']:6.2f} "
            f"{r['single_fft_bits_per_s'] / 1e6:8.1f}"
        )


if __name__ == "__main__":
    main()
