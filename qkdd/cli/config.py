"""``qkdd check-config FILE``: validate a node config without touching any instrument."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qkdd.cli.common import load_checked_config, print_config_error
from qkdd.config import ConfigError
from qkdd.instruments.config import Backend


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check-config",
        help="validate a node config (exit 0 if usable, 2 with the problem otherwise)",
    )
    parser.add_argument("file", type=Path, help="node config (TOML)")
    parser.set_defaults(func=check_config)

    schema: argparse.ArgumentParser = subparsers.add_parser(
        "config-schema", help="print the node config's JSON Schema (or the markdown reference)"
    )
    schema.add_argument(
        "--markdown", action="store_true", help="the reference of docs/config-reference.md"
    )
    schema.set_defaults(func=config_schema)


def config_schema(args: argparse.Namespace) -> int:
    from qkdd.config_reference import json_schema, markdown_reference

    print(
        markdown_reference() if args.markdown else json_schema(), end="" if args.markdown else "\n"
    )
    return 0


def check_config(args: argparse.Namespace) -> int:
    try:
        config = load_checked_config(args.file)
    except ConfigError as exc:
        print_config_error(exc)
        return 2
    node = config.node
    simulated = [n for n, i in config.instruments.items() if i.backend is Backend.SIMULATED]
    auto = [n for n, i in config.instruments.items() if i.backend is Backend.AUTO]
    print(
        f"{args.file}: ok: node {node.id}, role {node.role.value}, link {node.link}, "
        f"{len(config.instruments)} instruments"
    )
    if simulated:
        print(f"SIMULATED instruments (keys will be marked simulated): {', '.join(simulated)}")
    if auto:
        print(f"may fall back to simulation if the hardware fails: {', '.join(auto)}")
    return 0
