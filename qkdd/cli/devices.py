"""``qkdd devices -c FILE [--json]``: connect every instrument and show what serves it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from qkdd.cli.common import load_checked_config, print_config_error
from qkdd.config import ConfigError, NodeConfig
from qkdd.instruments.interfaces import InstrumentError
from qkdd.instruments.registry import (
    BackendUsed,
    OpenedInstrument,
    available_drivers,
    close_instruments,
    load_driver,
    open_instruments,
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "devices",
        help="connect every instrument of a node and report backend, identity and health",
    )
    parser.add_argument("-c", "--config", type=Path, help="node config (TOML)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--drivers", action="store_true", help="list the installed hardware drivers and exit"
    )
    parser.set_defaults(func=devices)


async def _describe(item: OpenedInstrument) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": item.name,
        "class": item.config.kind.value,
        "driver": "simulated" if item.backend is BackendUsed.SIMULATED else item.config.driver,
        "configured_driver": item.config.driver,
        "backend": item.backend.value,
        "reason": item.reason,
        "required": item.config.required,
        "simulated": item.backend is BackendUsed.SIMULATED,
        "identity": None,
        "healthy": False,
        "health": item.reason,
        "readings": {},
    }
    if item.instrument is None:
        return entry
    try:
        entry["identity"] = await item.instrument.identity()
        health = await item.instrument.health()
    except InstrumentError as exc:
        entry["health"] = str(exc)
        return entry
    entry.update(healthy=health.healthy, health=health.detail, readings=health.readings)
    return entry


async def survey(config: NodeConfig) -> list[dict[str, Any]]:
    opened = await open_instruments(config.instruments, allow_simulated=config.node.allow_simulated)
    try:
        return [await _describe(item) for item in opened]
    finally:
        await close_instruments(opened)


def _print_drivers(as_json: bool) -> None:
    rows = []
    for name in available_drivers():
        driver = load_driver(name)
        reason = getattr(driver, "unavailable_reason", lambda: None)()
        rows.append(
            {
                "driver": name,
                "class": driver.instrument_class.value,
                "description": getattr(driver, "description", ""),
                "available": reason is None,
                "reason": reason,
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "available" if row["available"] else f"unavailable: {row['reason']}"
        print(f"{row['driver']:<22} {row['class']:<14} {row['description']} ({state})")


def _print_table(entries: list[dict[str, Any]]) -> None:
    print(f"{'NAME':<14} {'CLASS':<14} {'DRIVER':<20} {'BACKEND':<11} {'HEALTH':<8} IDENTITY")
    for e in entries:
        health = "ok" if e["healthy"] else "FAIL"
        print(
            f"{e['name']:<14} {e['class']:<14} {e['driver']:<20} {e['backend']:<11} "
            f"{health:<8} {e['identity'] or '-'}"
        )
        if e["simulated"]:
            print(f"{'':<14} -> SIMULATED: {e['reason']}")
        elif not e["healthy"]:
            print(f"{'':<14} -> {' '.join(str(e['health']).split())}")


def devices(args: argparse.Namespace) -> int:
    if args.drivers:
        _print_drivers(args.json)
        return 0
    if args.config is None:
        print("qkdd devices: give -c FILE (or --drivers)", file=sys.stderr)
        return 2
    try:
        config = load_checked_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return 2
    entries = asyncio.run(survey(config))
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        _print_table(entries)
    simulated = [e["name"] for e in entries if e["simulated"]]
    if simulated:
        print(
            f"qkdd: SIMULATED instruments on this node: {', '.join(simulated)}; "
            "keys from it are not secure",
            file=sys.stderr,
        )
    unusable = [e["name"] for e in entries if e["required"] and not e["healthy"]]
    if unusable:
        print(f"qkdd: required instruments unusable: {', '.join(unusable)}", file=sys.stderr)
        return 1
    return 0
