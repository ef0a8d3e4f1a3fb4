"""The ``qkdd`` command line: one module per command group.

Exit codes: 0 success, 1 a runtime failure (an instrument unusable, a peer
unreachable), 2 a usage or configuration error (the message says what to fix).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qkdd import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Each module defines ``register(subparsers)``; a subcommand stores its
# handler as ``func(args) -> int``. Listed, not discovered, so the command set
# is explicit and import errors surface here.
COMMAND_MODULES: tuple[str, ...] = (
    "qkdd.cli.config",
    "qkdd.cli.consume",
    "qkdd.cli.consumer",
    "qkdd.cli.demo",
    "qkdd.cli.devices",
    "qkdd.cli.keyrate",
    "qkdd.cli.keys",
    "qkdd.cli.run",
    "qkdd.cli.schema",
    "qkdd.cli.secret",
    "qkdd.cli.simulate",
    "qkdd.cli.status",
    "qkdd.cli.watch",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkdd", description="Run and inspect quantum key distribution nodes."
    )
    parser.add_argument("--version", action="version", version=f"qkdd {__version__}")
    parser.add_argument(
        "--log-level", default="warning", help="log level for this command (default: warning)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from qkdd.logging import configure_logging

    configure_logging(args.log_level)
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (`qkdd ... | head`): not an error of ours.
        sys.stderr.close()
        return EXIT_OK
    return result
