"""``qkdd consume -c CONSUMER.toml``: the reference key consumer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qkdd.cli import EXIT_OK, EXIT_USAGE


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "consume",
        help="receive one slot's sealed keys: unseal, de-duplicate, store, acknowledge, hand over",
        description=(
            "Receive the keys of one consumer slot from MQTT, unseal them with the consumer "
            "secret, drop duplicates (tombstones), store them, acknowledge each, and hand "
            "them over as JSON lines (key_hex) to stdout, a file or a FIFO. Runs until "
            "interrupted; keys stored but not handed over are handed over at the next start."
        ),
    )
    parser.add_argument("-c", "--config", required=True, type=Path, help="consumer file")
    parser.add_argument(
        "--output",
        default=None,
        help="stdout, file:PATH or fifo:PATH (default: the file's [output])",
    )
    parser.set_defaults(func=run_consume)


def run_consume(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from qkdd.mqtt.consumer import ConsumerConfigError, KeyConsumer, LineSink, load_consumer_config

    try:
        config = load_consumer_config(args.config)
    except ConsumerConfigError as exc:
        print(f"qkdd: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sink = None
    if args.output is not None:
        kind, _, path = str(args.output).partition(":")
        if kind not in ("stdout", "file", "fifo") or (kind != "stdout" and not path):
            print("consume: --output is stdout, file:PATH or fifo:PATH", file=sys.stderr)
            return EXIT_USAGE
        sink = LineSink(kind, Path(path) if path else None)

    async def main() -> None:
        consumer = KeyConsumer(config, sink)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(consumer.stop()))
        try:
            await consumer.run()
        finally:
            consumer.close()

    asyncio.run(main())
    return EXIT_OK
