"""Post-processing benchmark (issue 11): reconciliation, verification and PA in one run.

    python benchmarks/postprocessing.py [--json] [--sizes 100000 1000000] [--qbers 0.01 0.02 0.05]
        [--ldpc-keys 3]

JSON: ``results`` holds one object per (method, n, qber) with ``method``,
``n``, ``qber``, ``f`` (λ_EC both ways / n·h(e)), ``fer``, ``round_trips``,
``bits_per_s`` (wall clock), ``cpu_bits_per_s`` (per core: n over this
process's CPU time) and the speed-up over the plain Python Cascade baseline
where it ran; ``pa`` and ``verification`` give throughputs at 10^6 bits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_amplification
import bench_reconciliation

from qkdd.postprocessing.verification import params_for, verification_tag


def verification_rate(n: int, repeats: int = 5) -> dict[str, float | int]:
    rng = np.random.default_rng(1)
    key = rng.integers(0, 2, n, dtype=np.uint8)
    seed = rng.bytes(16)
    params = params_for(n, 1e-15)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        verification_tag(key, seed, params.tag_bits)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "bits_per_s": n / best, "tag_bits": params.tag_bits, "eps_cor": params.eps_cor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--qbers", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=[100_000])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--ldpc-keys", type=int, default=3, help="LDPC keys per (n, qber)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = bench_reconciliation.collect(
        args.sizes, args.qbers, args.baseline_sizes, args.seed, args.ldpc_keys
    )
    pa = bench_amplification.measure(1_000_000, 0.25, 5)
    ver = verification_rate(1_000_000)
    if args.json:
        print(json.dumps({"results": rows, "pa": pa, "verification": ver}, indent=2))
        return
    bench_reconciliation.print_table(rows)
    print(
        f"PA (exact Toeplitz, n=10^6, ell=n/4): {pa['bits_per_s'] / 1e6:.1f} Mbit/s "
        f"(numpy single-FFT baseline {pa['baseline_bits_per_s'] / 1e6:.1f}, x{pa['speedup']:.2f})"
    )
    print(
        f"Verification (Poly1305, n=10^6, {ver['tag_bits']}-bit tag, "
        f"eps_cor={ver['eps_cor']:.1e}): {ver['bits_per_s'] / 1e6:.0f} Mbit/s"
    )


if __name__ == "__main__":
    main()
