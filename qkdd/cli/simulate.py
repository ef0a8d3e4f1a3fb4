"""``qkdd simulate``: run the simulated link's physics alone and compare with the exact model."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from qkdd.cli.common import load_checked_config, print_config_error

EXIT_OK = 0
EXIT_USAGE = 2

CLASS_NAMES = ("signal", "decoy", "vacuum")
BASIS_NAMES = ("K", "T")


def register(subparsers: Any) -> None:
    """Add the ``simulate`` subcommand."""
    p = subparsers.add_parser(
        "simulate",
        help="run the simulated quantum link alone: gains and QBER against the model",
        description=(
            "Simulate FRAMES frames of the link described by the config's [simulation] and "
            "[protocol] sections (only the clicks are drawn) and print, per intensity class "
            "and basis, the measured gain and QBER beside the exact model's expectation."
        ),
    )
    p.add_argument("-c", "--config", required=True, help="node config file (TOML)")
    p.add_argument("--frames", type=int, default=10, help="frames to simulate (default 10)")
    p.add_argument(
        "--eve",
        default=None,
        metavar="MODEL[:f]",
        help="eavesdropper: intercept-resend, biased-intercept-resend, pns, blinding, none; "
        "optional fraction f of slots attacked (default: the config's)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    """Simulate, compare, print."""
    from qkdd.config import ConfigError
    from qkdd.physics.config import EveSpec, SimulationConfig
    from qkdd.physics.expected import expected_statistics
    from qkdd.physics.link import LinkParameters, physics_from_config, role_rng
    from qkdd.physics.simulator import ClickSimulator, measure

    try:
        config = load_checked_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_USAGE
    if args.frames <= 0:
        print("qkdd simulate: --frames must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        eve = None if args.eve is None else EveSpec.parse(args.eve)
    except ValueError as exc:
        print(f"qkdd simulate: --eve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sim = config.simulation
    if sim is None:
        print("qkdd simulate: no [simulation] section, using its defaults", file=sys.stderr)
        sim = SimulationConfig()
    proto = config.protocol
    link = LinkParameters(
        slot_rate_hz=proto.slot_rate_hz,
        p_key=proto.p_key_basis,
        mu=proto.intensities.mu,
        p_class=proto.intensities.probabilities,
    )
    physics = physics_from_config(sim, link, eve)
    slots_per_frame = max(1, round(proto.slot_rate_hz * proto.frame_duration_s))
    simulator = ClickSimulator(physics, role_rng(sim.seed, "bob"))
    ClickSimulator(physics, role_rng(0, "eve")).run(1000)  # load the compiled kernel untimed
    start = time.perf_counter()
    total = None
    for _ in range(args.frames):
        stats = measure(simulator.run(slots_per_frame), physics.bob_key_probability)
        total = stats if total is None else total + stats
    elapsed = time.perf_counter() - start
    assert total is not None
    expected = expected_statistics(physics)
    slots = slots_per_frame * args.frames
    report = _report(total, expected, physics.mu, slots, elapsed)
    report.update(
        {
            "simulated": True,
            "frames": args.frames,
            "eavesdropper": str(eve if eve is not None else sim.eavesdropper),
            "distance_km": sim.channel.distance_km,
            "seed": sim.seed,
        }
    )
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    _print_table(report)
    return EXIT_OK


def _num(value: Any) -> float | None:
    v = float(value)
    return None if math.isnan(v) else v  # no detections → null


def _report(
    total: Any, expected: Any, mu: tuple[float, ...], slots: int, elapsed: float
) -> dict[str, Any]:
    classes = []
    for k, name in enumerate(CLASS_NAMES):
        bases = {
            basis: {
                "gain": _num(total.basis_gain[k, b]),
                "gain_theory": _num(expected.basis_gain[k, b]),
                "qber": _num(total.basis_qber[k, b]),
                "qber_theory": _num(expected.basis_qber[k, b]),
                "detections": int(total.matched[k, b]),
            }
            for b, basis in enumerate(BASIS_NAMES)
        }
        classes.append(
            {
                "name": name,
                "mu": mu[k],
                "sent": int(total.sent[k].sum()),
                "detections": int(total.detections[k]),
                "gain": _num(total.gain[k]),
                "gain_theory": _num(expected.gain[k]),
                "qber": _num(total.qber[k]),
                "qber_theory": _num(expected.qber[k]),
                "bases": bases,
            }
        )
    return {
        "intensities": classes,
        "slots": slots,
        "elapsed_s": elapsed,
        "slots_per_s": slots / elapsed if elapsed > 0 else None,
        "live_fraction": float(expected.live_fraction),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_table(report: dict[str, Any]) -> None:
    print(
        f"# simulated link (SIMULATED): {report['slots']:.3g} slots in {report['frames']} frames, "
        f"{report['distance_km']:g} km, eavesdropper {report['eavesdropper']}"
    )
    print(
        f"{'class':>7} {'basis':>5} {'mu':>7} {'gain':>10} {'theory':>10} {'QBER':>8} {'theory':>8}"
    )
    for c in report["intensities"]:
        rows = [("all", c), *((b, c["bases"][b]) for b in BASIS_NAMES)]
        for basis, row in rows:
            print(
                f"{c['name']:>7} {basis:>5} {c['mu']:7.4f} {_fmt(row['gain'], '10.3e')} "
                f"{_fmt(row['gain_theory'], '10.3e')} {_fmt(row['qber'], '8.4f')} "
                f"{_fmt(row['qber_theory'], '8.4f')}"
            )
    print(f"# {report['slots_per_s']:.3g} simulated slots/s")
