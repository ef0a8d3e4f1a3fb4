"""``qkdd run -c FILE``: the key-exchange daemon for one role of one link."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qkdd.cli import EXIT_FAILURE, EXIT_USAGE


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the key-exchange daemon of one node (until SIGTERM)",
        description=(
            "Run one role of one link: connect to the peer, exchange keys, store them. "
            "Needs an authentication secret from `qkdd init-secret` in the state directory "
            "on first start. SIGTERM stops cleanly, SIGHUP reloads the log level."
        ),
    )
    parser.add_argument("-c", "--config", required=True, type=Path, help="node config (TOML)")
    parser.set_defaults(func=run_daemon)


def run_daemon(args: argparse.Namespace) -> int:
    from qkdd.cli.common import load_checked_config, print_config_error
    from qkdd.config import ConfigError
    from qkdd.daemon import DaemonError, run_node
    from qkdd.logging import configure_logging

    try:
        config = load_checked_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_USAGE
    if config.peer is None:
        print(
            f"qkdd: configuration error: {args.config}: peer: missing ([peer] is needed to run)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    configure_logging(config.logging.level, json=config.logging.json_lines)
    try:
        return run_node(config, args.config)
    except DaemonError as exc:
        print(f"qkdd run: {exc}", file=sys.stderr)
        return EXIT_FAILURE
