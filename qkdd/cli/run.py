"""``qkdd run -c FILE``: the key-exchange daemon for one role of one link."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qkdd.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


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
    eve = subparsers.add_parser(
        "eve",
        help="switch the simulated eavesdropper of a running link (simulation only)",
        description=(
            "Talk to a running simulated node's control socket (in its state directory; "
            "the eavesdropper acts on Bob's receiver, so give Bob's config). MODEL is none, "
            "intercept-resend, biased-intercept-resend, pns or blinding, optionally :FRACTION."
        ),
    )
    eve.add_argument("-c", "--config", required=True, type=Path, help="Bob's node config")
    eve.add_argument("model", help="MODEL[:FRACTION], or 'status'")
    eve.set_defaults(func=control_eve)


def run_daemon(args: argparse.Namespace) -> int:
    from qkdd.cli.common import load_checked_config, print_config_error
    from qkdd.config import ConfigError
    from qkdd.daemon import DaemonError, exit_now, run_node
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
        code = run_node(config, args.config)
    except DaemonError as exc:
        print(f"qkdd run: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    exit_now(code)
    return code


def control_eve(args: argparse.Namespace) -> int:
    import socket

    from qkdd.cli.common import print_config_error
    from qkdd.config import ConfigError, load_config
    from qkdd.daemon import CONTROL_SOCKET

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_USAGE
    if not config.node.allow_simulated or config.simulation is None:
        print("qkdd eve: this node is not a simulated link", file=sys.stderr)
        return EXIT_USAGE
    if config.node.role.value != "bob" and args.model != "status":
        print(
            "qkdd eve: the eavesdropper acts on the light at Bob's receiver: give Bob's config",
            file=sys.stderr,
        )
        return EXIT_USAGE
    path = config.node.state_dir / CONTROL_SOCKET
    command = "status" if args.model == "status" else f"eve {args.model}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(command.encode() + b"\n")
            reply = sock.makefile().readline().strip()
    except OSError as exc:
        print(f"qkdd eve: no running node answers at {path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(reply)
    return EXIT_OK if reply.startswith("ok") else EXIT_FAILURE
