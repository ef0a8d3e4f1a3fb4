"""``qkdd keyrate``: secret key per pulse versus distance, finite-key or asymptotic."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

EXIT_OK = 0
EXIT_USAGE = 2


def _distances(text: str) -> list[float]:
    """``0:200:10`` (start:stop:step, stop included) or ``0,50,100``."""
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                raise ValueError
            start, stop, step = parts
            count = math.floor((stop - start) / step + 1e-9) + 1
            values = [start + i * step for i in range(count)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"distances {text!r}: use START:STOP:STEP or a comma list, in km"
        ) from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("distances must be non-negative and not empty")
    return values


def register(subparsers: Any) -> None:
    """Add the ``keyrate`` subcommand."""
    p = subparsers.add_parser(
        "keyrate",
        help="secret key per pulse versus distance (finite-key or asymptotic)",
        description=(
            "Key per sent pulse of decoy-state BB84 versus fibre length: the finite-key bound of "
            "Lim et al. 2014 for a block of --block-size key-basis bits, or the asymptotic GLLP "
            "rate (vacuum + weak decoy). --optimise tunes intensities and probabilities per "
            "distance."
        ),
    )
    ch = p.add_argument_group("channel and detectors")
    ch.add_argument("--alpha", type=float, default=0.2, help="fibre loss, dB/km (default 0.2)")
    ch.add_argument("--extra-loss", type=float, default=0.0, help="extra loss, dB (default 0)")
    ch.add_argument(
        "--eta-bob", type=float, default=0.1, help="Bob's optics × detector efficiency (0.1)"
    )
    ch.add_argument(
        "--dark-count", type=float, default=6e-7, help="dark counts per detector per slot (6e-7)"
    )
    ch.add_argument(
        "--y0",
        type=float,
        default=None,
        help="background yield Y0: selects the textbook model (Ma et al. 2005) instead",
    )
    ch.add_argument("--misalignment", type=float, default=5e-3, help="e_d (default 0.005)")
    ch.add_argument(
        "--afterpulse", type=float, default=0.0, help="afterpulse probability (default 0)"
    )
    ch.add_argument(
        "--model",
        choices=("exact", "lim2014"),
        default="exact",
        help="expected-count model when --y0 is not given (default exact)",
    )
    pr = p.add_argument_group("protocol")
    pr.add_argument("--ec-efficiency", type=float, default=1.16, help="f_EC (default 1.16)")
    pr.add_argument(
        "--block-size",
        type=float,
        default=1e6,
        help="key-basis sifted bits per block, n_K (default 1e6)",
    )
    pr.add_argument("--eps-sec", type=float, default=1e-10, help="ε_sec (default 1e-10)")
    pr.add_argument("--eps-cor", type=float, default=1e-15, help="ε_cor (default 1e-15)")
    pr.add_argument("--phi-tol", type=float, default=0.15, help="φ_tol (default 0.15)")
    pr.add_argument(
        "--asymptotic", action="store_true", help="asymptotic GLLP rate instead of finite-key"
    )
    pr.add_argument(
        "--sifting-factor",
        type=float,
        default=0.5,
        help="q of the asymptotic rate (default 1/2, standard BB84)",
    )
    pr.add_argument("--mu1", type=float, default=0.45, help="signal intensity (default 0.45)")
    pr.add_argument("--mu2", type=float, default=0.2, help="decoy intensity (default 0.2)")
    pr.add_argument("--mu3", type=float, default=2e-4, help="vacuum/weak intensity (2e-4)")
    pr.add_argument("--p-mu1", type=float, default=0.2, help="signal probability (0.2)")
    pr.add_argument("--p-mu2", type=float, default=0.55, help="decoy probability (0.55)")
    pr.add_argument("--p-key", type=float, default=0.78, help="key-basis probability p_K (0.78)")
    p.add_argument(
        "--distances",
        type=_distances,
        default=_distances("0:200:20"),
        help="km: START:STOP:STEP or a comma list (default 0:200:20)",
    )
    p.add_argument(
        "--optimise",
        "--optimize",
        action="store_true",
        help="optimise intensities, probabilities and p_K at each distance (μ3 stays fixed)",
    )
    p.add_argument("--seed", type=int, default=1, help="optimiser seed (default 1)")
    p.add_argument("--json", action="store_true", help="print a JSON list of points")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    """Compute the curve and print it as a table or JSON."""
    from qkdd.physics.expected import LinkModel
    from qkdd.postprocessing.finite_key import IntensityOrderError, SecurityParameters
    from qkdd.postprocessing.keyrate import (
        OptimiserSettings,
        ProtocolParameters,
        key_rate_curve,
    )

    try:
        link = LinkModel(
            alpha_db_per_km=args.alpha,
            eta_bob=args.eta_bob,
            dark_count=args.dark_count,
            misalignment=args.misalignment,
            afterpulse=args.afterpulse,
            y0=args.y0,
            extra_loss_db=args.extra_loss,
            model="textbook" if args.y0 is not None else args.model,
        )
        security = SecurityParameters(
            eps_sec=args.eps_sec, eps_cor=args.eps_cor, phi_tol=args.phi_tol
        )
        params = ProtocolParameters(
            mu1=args.mu1,
            mu2=args.mu2,
            mu3=0.0 if args.asymptotic else args.mu3,
            p_mu1=args.p_mu1,
            p_mu2=args.p_mu2,
            p_key=args.p_key,
        )
        params.decoy_settings()
        if not 0.0 < args.p_key < 1.0:
            raise ValueError("--p-key must lie in (0, 1)")
        if args.block_size <= 0 or args.ec_efficiency < 1.0:
            raise ValueError("--block-size must be positive and --ec-efficiency at least 1")
    except (IntensityOrderError, ValueError) as exc:
        print(f"qkdd keyrate: {exc}", file=sys.stderr)
        return EXIT_USAGE

    points = key_rate_curve(
        link,
        args.distances,
        params,
        block_size=None if args.asymptotic else args.block_size,
        ec_efficiency=args.ec_efficiency,
        security=security,
        optimise=args.optimise,
        sifting_factor=args.sifting_factor,
        optimiser=OptimiserSettings(seed=args.seed),
    )
    if args.json:
        json.dump([pt.as_dict() for pt in points], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    mode = "asymptotic (GLLP)" if args.asymptotic else f"finite-key, n_K = {args.block_size:.3g}"
    print(f"# key rate, {mode}, model {link.model}")
    header = f"{'km':>7} {'rate/pulse':>11} {'mu1':>6} {'mu2':>7} {'p_mu1':>6} {'p_mu2':>6}"
    print(header + f" {'p_K':>6} {'QBER':>7} {'phi_K':>7}")
    for pt in points:
        cells = [
            f"{pt.distance_km:7.1f}",
            f"{pt.rate_per_pulse:11.3e}",
            f"{pt.mu:6.3f}",
            f"{pt.mu2:7.4f}",
            _fmt(pt.p_mu1, 6, 3),
            _fmt(pt.p_mu2, 6, 3),
            _fmt(pt.p_key, 6, 3),
            f"{pt.qber:7.4f}",
            _fmt(pt.phase_error, 7, 4),
        ]
        print(" ".join(cells))
    return EXIT_OK


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"
