"""``qkdd demo``: a simulated link with both roles, a consumer at each end, a live view."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qkdd.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a simulated link (both roles, a consumer at each end) with a live view",
        description=(
            "Run both roles of a simulated link in this process, with fresh secrets in a "
            "temporary directory and a key consumer at each end, on the broker given by "
            "--broker or an embedded loopback broker (Mosquitto when installed, else amqtt). "
            "Shows state, QBER with its bound, key rate against qkdd keyrate's theory, "
            "delivered keys and alarms. Keys of a simulated link are NOT secure."
        ),
    )
    parser.add_argument("--broker", help="mqtt://host:port (default: an embedded broker)")
    parser.add_argument(
        "--embedded",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="which embedded broker (auto: Mosquitto when installed, else amqtt)",
    )
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="with --broker")
    parser.add_argument("--duration", type=float, default=None, help="exit after SECONDS")
    parser.add_argument(
        "--eve-at", type=float, default=None, help="switch intercept-resend on after SECONDS"
    )
    parser.add_argument(
        "--eve-model",
        default="intercept-resend",
        choices=("intercept-resend", "biased-intercept-resend", "pns", "blinding"),
        help="the eavesdropper --eve-at switches on (default intercept-resend)",
    )
    parser.add_argument("--workdir", help="keep state and log here (default: a temporary dir)")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="plain lines instead of the live view (default off a TTY)",
    )
    parser.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    import aiomqtt
    from pydantic import ValidationError
    from rich.console import Console

    from qkdd.demo import DemoOptions, run_demo
    from qkdd.mqtt.watch import broker_settings

    broker = None
    if args.broker is not None:
        try:
            broker = broker_settings(args.broker, protocol=args.protocol)
        except (ValueError, ValidationError) as exc:
            print(f"demo: {str(exc).splitlines()[0]}", file=sys.stderr)
            return EXIT_USAGE
    console = Console()
    options = DemoOptions(
        broker=broker,
        embedded=args.embedded,
        duration_s=args.duration,
        eve_at_s=args.eve_at,
        eve_model=args.eve_model,
        live=console.is_terminal and not args.plain,
        workdir=Path(args.workdir) if args.workdir else None,
    )
    try:
        state = asyncio.run(run_demo(options, console))
    except KeyboardInterrupt:
        return EXIT_OK
    except (aiomqtt.MqttError, RuntimeError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if state.different == 0 else EXIT_FAILURE
