"""Per-frame efficiency need of the LDPC reconciler, and the blind schedule it implies.

Never run in CI; run by hand after the code set changes, to recalibrate
``ldpc._F0_TABLE`` and ``ldpc._RETRY_TABLE``:

    python tools/ldpc_needs.py [--qbers 0.01 0.02 0.05] [--frames 40] [--total 1000000]

For each QBER q it takes full frames as the planner lays out a key of
``--total`` bits, draws independent BSC(q) error patterns and finds, per
frame, by bisection on f₀ (to 0.005), the smallest starting efficiency at
which that frame decodes at its first attempt (same key and errors at every
f₀). The frame's need includes its own error-count fluctuation, because f is
quoted against the nominal h(q) here. Revealing punctured bits later is worth
about as much to the decoder as having punctured fewer in the first place,
so a frame whose need is ν decodes at attempt i roughly when
f₀ + (retries so far) ≥ ν. From the empirical needs the tool evaluates the
expected leakage of the blind schedule f₀, f₀ + s, f₀ + 3s (s = retry step,
the second retry twice the first, as in ldpc.py) plus one status bit per
frame and attempt, and the fraction of frames beyond the last attempt, and
prints the best f₀ on a grid for the current step and for a grid of steps.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qkdd.postprocessing.entropy import binary_entropy
from qkdd.postprocessing.reconciliation.ldpc import (
    FramePlan,
    LdpcAlice,
    LdpcBob,
    LdpcCode,
    default_efficiency,
    plan_frames,
    retry_fraction,
    shipped_codes,
)


def first_attempt_ok(
    alice: np.ndarray,
    bob: np.ndarray,
    qber: float,
    f0: float,
    seed: int,
    *,
    codes: Sequence[LdpcCode],
) -> bool:
    """Whether one frame decodes at its first attempt when Alice starts at ``f0``."""
    rng = np.random.default_rng(seed)
    a = LdpcAlice(alice, qber, efficiency=f0, codes=codes, random_bytes=rng.bytes)
    b = LdpcBob(bob, codes=codes)
    syndromes = a.start()
    assert syndromes is not None
    status = b.receive(syndromes)
    assert status is not None
    return bool(status.disclosed["decoded"].all())


def need(
    alice: np.ndarray, bob: np.ndarray, qber: float, seed: int, codes: Sequence[LdpcCode]
) -> float:
    """Smallest f₀ (to 0.005) at which the frame decodes at once (capped at 1.6)."""
    lo, hi = 0.95, 1.6
    if not first_attempt_ok(alice, bob, qber, hi, seed, codes=codes):
        return math.inf
    while hi - lo > 0.005:
        mid = 0.5 * (lo + hi)
        if first_attempt_ok(alice, bob, qber, mid, seed, codes=codes):
            hi = mid
        else:
            lo = mid
    return hi


def schedule_cost(
    needs: np.ndarray, f0: float, step: float, plan: FramePlan, hq: float
) -> tuple[float, float, float]:
    """Expected f, the dropped fraction and the last attempt's reach of a blind schedule.

    Retries reveal ``step``, then 2·``step`` of k·h(q) bits, punctured
    positions first; once those run out a revealed key bit tells Bob only
    about h(q) of a bit, so the reach (the f₀ a frame would have needed to
    decode at once, which the needs are compared with) grows by less than the
    leakage.
    """
    k = plan.key_bits
    kh = k * hq
    status = 1.0 / kh
    left = plan.punctured
    f = f0 + status
    reach = [f0]
    for size in (step, 2 * step):
        bits = math.ceil(size * kh)
        punct = min(left, bits)
        left -= punct
        reach.append(reach[-1] + (punct + (bits - punct) * hq) / kh)
    f += np.mean(needs > reach[0]) * (step + status)
    f += np.mean(needs > reach[1]) * (2 * step + status)
    return float(f), float(np.mean(needs > reach[2])), reach[2]


def best_schedule(
    needs: np.ndarray, q: float, k: int, step: float, *, codes: Sequence[LdpcCode], margin: float
) -> tuple[float, float, float, float]:
    """(f₀, expected f, dropped fraction, reach) of the best f₀ whose reach clears max + margin."""
    hq = binary_entropy(q)
    best: tuple[float, float, float, float] | None = None
    for f0 in np.arange(1.0, 1.4, 0.005):
        plan = plan_frames(k, q, codes, float(f0))[0]
        f, dropped, reach = schedule_cost(needs, float(f0), step, plan, hq)
        if reach < float(np.max(needs)) + margin:
            continue
        if best is None or f < best[1]:
            best = (float(f0), f, dropped, reach)
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qbers", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--margin", type=float, default=0.02, help="last reach above the largest need"
    )
    parser.add_argument("--code", help="use only this shipped code (name), e.g. to compare two")
    args = parser.parse_args()
    codes = shipped_codes()
    if args.code:
        codes = tuple(c for c in codes if c.name == args.code)
    for q in args.qbers:
        plan = plan_frames(args.total, q, codes)[0]
        k = plan.key_bits
        f0 = default_efficiency(q, args.total, code_bits=codes[plan.code].n)
        print(
            f"q={q}: frames on {codes[plan.code].name} (k={k}, punctured {plan.punctured}, "
            f"shortened {plan.shortened}, f0 {f0:.3f})",
            flush=True,
        )
        rng = np.random.default_rng([args.seed, round(q * 1e4)])
        needs = []
        for i in range(args.frames):
            alice = rng.integers(0, 2, k, dtype=np.uint8)
            bob = alice ^ (rng.random(k) < q).astype(np.uint8)
            needs.append(need(alice, bob, q, args.seed + i, codes))
        arr = np.array(needs)
        print(
            f"q={q} k={k}: need mean {np.mean(arr):.3f} "
            f"sd {np.std(arr):.3f} median {np.median(arr):.3f} "
            f"p90 {np.quantile(arr, 0.9):.3f} max {np.max(arr):.3f}",
            flush=True,
        )
        print("  needs:", " ".join(f"{x:.3f}" for x in sorted(arr)), flush=True)
        for step in sorted({retry_fraction(q, k), 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06}):
            f0, f, dropped, reach = best_schedule(arr, q, k, step, codes=codes, margin=args.margin)
            print(
                f"  step {step:.3f}: best f0 {f0:.3f} -> expected f {f:.3f}, "
                f"last attempt reaches {reach:.3f}, beyond it {dropped:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
