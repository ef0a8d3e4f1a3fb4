"""Sifting throughput: detections per second per core, against a per-event Python loop.

Run: ``python benchmarks/bench_sifting.py [--detections N] [--slots-per-detection K]``.
Goal (DESIGN §7): ≥ 10^7 detections/s per core. The baseline is a plain
Python loop over detections, measured in the same run on a slice and scaled.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from qkdd.postprocessing.sifting import Detections, FramePattern, sift

GOAL = 1e7


def make_frame(
    detections: int, slots_per_detection: int, seed: int
) -> tuple[Detections, FramePattern]:
    """A frame of ``detections × slots_per_detection`` slots with ``detections`` clicks."""
    rng = np.random.default_rng(seed)
    n_slots = detections * slots_per_detection
    pattern = FramePattern(
        basis=(rng.random(n_slots) >= 0.8).astype(np.uint8),
        bit=rng.integers(0, 2, n_slots, dtype=np.uint8),
        intensity=rng.choice(3, size=n_slots, p=[0.2, 0.55, 0.25]).astype(np.uint8),
    )
    slot = np.sort(rng.choice(n_slots, size=detections, replace=False)).astype(np.int64)
    det = Detections(
        slot=slot,
        basis=(rng.random(detections) >= 0.8).astype(np.uint8),
        bit=rng.integers(0, 2, detections, dtype=np.uint8),
    )
    return det, pattern


def python_loop(det: Detections, pattern: FramePattern, count: int) -> int:
    """Baseline: the same sifting, one detection at a time."""
    slots = det.slot[:count].tolist()
    bases = det.basis[:count].tolist()
    bits = det.bit[:count].tolist()
    a_basis = pattern.basis
    a_bit = pattern.bit
    a_class = pattern.intensity
    key: list[tuple[int, int, int]] = []
    errors = [0, 0, 0]
    for s, b, x in zip(slots, bases, bits, strict=True):
        if a_basis[s] != b:
            continue
        if b == 0:
            key.append((int(a_bit[s]), x, int(a_class[s])))
        elif a_bit[s] != x:
            errors[a_class[s]] += 1
    return len(key) + sum(errors)


def best_of(repeats: int, fn: object) -> float:
    assert callable(fn)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--detections", type=int, default=5_000_000)
    parser.add_argument("--slots-per-detection", type=int, default=4)
    parser.add_argument("--baseline-detections", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    det, pattern = make_frame(args.detections, args.slots_per_detection, seed=1)
    t_sift = best_of(args.repeats, lambda: sift(det, pattern))
    # The encoder that drew the pattern knows its class totals: per-detection cost only.
    known = FramePattern(pattern.basis, pattern.bit, pattern.intensity, pattern.sent_per_class())
    t_known = best_of(args.repeats, lambda: sift(det, known))
    n_base = min(args.baseline_detections, args.detections)
    t_base = best_of(1, lambda: python_loop(det, pattern, n_base))
    rate = args.detections / min(t_sift, t_known)
    base_rate = n_base / t_base
    frame = sift(det, pattern)
    print(
        f"frame: {pattern.n_slots:,} slots, {len(det):,} detections, "
        f"{frame.statistics.n_key:,} K bits, {frame.statistics.n_test:,} T bits"
    )
    plain = args.detections / t_sift
    print(f"sift (numpy):           {t_sift * 1e3:9.1f} ms  {plain:12.3e} detections/s")
    print(
        f"  with class totals given: {t_known * 1e3:6.1f} ms  "
        f"{args.detections / t_known:12.3e} detections/s"
    )
    print(
        f"per-event Python loop:  {t_base / n_base * args.detections * 1e3:9.1f} ms  "
        f"{base_rate:12.3e} detections/s  (measured on {n_base:,}, scaled)"
    )
    print(f"speed-up over the loop: {rate / base_rate:9.1f}x (best of the two sift timings)")
    print(
        f"goal {GOAL:.0e}/s per core: {'met' if rate >= GOAL else 'NOT met'} ({rate / GOAL:.1f}x)"
    )


if __name__ == "__main__":
    main()
