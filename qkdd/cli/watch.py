"""``qkdd watch --broker URL``: a live view of every link publishing on a broker."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qkdd.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="live view of links from their MQTT telemetry (state, QBER, rates, alarms)",
        description=(
            "Subscribe to the status, QBER and alarm topics of every link on a broker and "
            "show them live. Reads telemetry only (never keys)."
        ),
    )
    parser.add_argument(
        "--broker", required=True, help="mqtt://[user[:password]@]host[:port] or mqtts://..."
    )
    parser.add_argument("--base-topic", default="qkd", help="base topic (default qkd)")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    parser.add_argument("--cafile", type=Path, help="CA bundle of the broker (TLS)")
    parser.add_argument("--cert", type=Path, help="client certificate (TLS)")
    parser.add_argument("--key", type=Path, help="client private key (TLS)")
    parser.add_argument("--password-file", type=Path, help="read the password from this file")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument(
        "--no-live", action="store_true", help="print the board once at the end (scripts)"
    )
    parser.set_defaults(func=run_watch)


def run_watch(args: argparse.Namespace) -> int:
    import asyncio

    import aiomqtt
    from pydantic import ValidationError
    from rich.console import Console

    from qkdd.mqtt.watch import broker_settings, render, watch

    fields: dict[str, object] = {"protocol": args.protocol, "base_topic": args.base_topic}
    if args.cafile is not None:
        fields["tls"] = {"ca_file": args.cafile, "cert_file": args.cert, "key_file": args.key}
    if args.password_file is not None:
        fields["password_file"] = args.password_file
    try:
        mqtt = broker_settings(args.broker, **fields)
    except (ValueError, ValidationError) as exc:
        print(f"watch: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    console = Console()
    try:
        board = asyncio.run(
            watch(
                mqtt,
                base_topic=args.base_topic,
                duration_s=args.duration,
                console=console,
                live=not args.no_live,
            )
        )
    except KeyboardInterrupt:
        return EXIT_OK
    except aiomqtt.MqttError as exc:
        print(f"watch: broker {mqtt.host}:{mqtt.port}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.no_live:
        console.print(render(board))
    return EXIT_OK
