"""Simulated slots/s and tags/s of the click-only simulator, against a plain numpy per-slot one.

Target (DESIGN §7): ≥ 10^8 simulated slots/s on one core at 50 km. The
baseline, measured in the same run, draws every slot with numpy (photon
numbers, loss, misalignment, dark counts, squashing; no afterpulses or dead
time, which a vectorised per-slot simulation cannot do without a loop).

    python benchmarks/bench_simulation.py [--distance 50] [--slots 1e9]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from qkdd.physics.config import SimulationConfig
from qkdd.physics.link import (
    LinkParameters,
    PreparedFrame,
    Receiver,
    draw_pattern,
    physics_from_config,
    role_rng,
)
from qkdd.physics.simulator import ClickSimulator

TARGET_SLOTS_PER_S = 1e8


def numpy_per_slot(rng: np.random.Generator, n: int, link: LinkParameters, eta: float) -> int:
    """The straightforward simulation: every slot drawn with numpy. Returns the detections."""
    e_d, p_dc = 0.005, 1e-7
    basis = rng.random(n) >= link.p_key
    bit = rng.integers(0, 2, n, dtype=np.int8)
    k = rng.choice(3, n, p=link.p_class)
    photons = rng.poisson(np.asarray(link.mu)[k] * eta)
    bob_basis = rng.random(n) >= link.p_key
    same = basis == bob_basis
    wrong_frac = np.where(same, e_d, 0.5)
    to_wrong = rng.binomial(photons, wrong_frac)
    right = (photons - to_wrong > 0) | (rng.random(n) < p_dc)
    wrong = (to_wrong > 0) | (rng.random(n) < p_dc)
    click = right | wrong
    squash = right & wrong & (rng.random(n) < 0.5)
    _bob_bit = np.where(wrong & ~right | squash, 1 - bit, bit)
    return int(np.count_nonzero(click))


def best_of(repeats: int, fn):  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--distance", type=float, default=50.0, help="fibre length, km")
    parser.add_argument("--slots", type=float, default=1e9, help="slots per click-only run")
    parser.add_argument("--baseline-slots", type=float, default=2e6, help="slots per numpy run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    sim = SimulationConfig.model_validate(
        {
            "seed": 1,
            "channel": {"distance_km": args.distance},
            "detectors": {"efficiency": 0.2, "dark_count": 1e-7, "dead_time_ns": 50.0,
                          "afterpulse": 0.02, "afterpulse_decay_ns": 20.0},
        }
    )  # fmt: skip
    link = LinkParameters()
    phys = physics_from_config(sim, link)
    eta = phys.eta_channel * phys.efficiency[0]
    n = int(args.slots)
    print(f"# simulated link at {args.distance:g} km, η = {eta:.3g}, 1 GHz slots, one core")

    simulator = ClickSimulator(phys, role_rng(1, "bob"))
    simulator.run(10_000)  # load the compiled kernel
    t_fast, frame = best_of(args.repeats, lambda: simulator.run(n))
    fast = n / t_fast
    print(f"click-only, choices drawn at clicks: {fast:10.3g} slots/s  "
          f"({len(frame) / t_fast:.3g} detections/s, {len(frame)} per run)")  # fmt: skip

    # Alice's prepared pattern through the receiver: the per-slot pattern scan dominates
    n_pat = min(n, 10**8)
    pattern = draw_pattern(role_rng(1, "alice"), n_pat, link)
    t_pat, _ = best_of(args.repeats, lambda: simulator.run(n_pat, pattern))
    print(f"click-only, Alice's pattern given:   {n_pat / t_pat:10.3g} slots/s")

    receiver = Receiver(sim, link, role_rng(2, "bob"))
    prepared = PreparedFrame(0, 0, pattern)
    t_tags, (_det, tags) = best_of(args.repeats, lambda: receiver.receive(prepared))
    print(f"receiver with tags (pattern given):  {n_pat / t_tags:10.3g} slots/s, "
          f"{len(tags) / t_tags:.3g} tags/s")  # fmt: skip

    n_base = int(args.baseline_slots)
    t_base, clicks = best_of(
        args.repeats, lambda: numpy_per_slot(np.random.default_rng(3), n_base, link, eta)
    )
    base = n_base / t_base
    print(f"numpy per-slot baseline:             {base:10.3g} slots/s  ({clicks} detections)")
    print(f"speed-up: click-only {fast / base:.0f}×, with pattern {n_pat / t_pat / base:.1f}× "
          f"the baseline")  # fmt: skip
    verdict = "meets" if fast >= TARGET_SLOTS_PER_S else "MISSES"
    print(f"target ≥ {TARGET_SLOTS_PER_S:.0e} slots/s on one core: {verdict} ({fast:.3g})")


if __name__ == "__main__":
    main()
