"""``qkdd status -c FILE [--json]``: the running daemon's health, from its snapshot.

Reads ``health.json`` in the node's state directory (written by the daemon, see
:mod:`qkdd.health`) and checks that its process still runs. Exit codes follow the
LSB convention for status actions: 0 running, 3 not running (no snapshot, or its
process is gone), 4 the snapshot cannot be read (permissions: run it as the
service user or root); 2 for a config error, as everywhere in qkdd.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qkdd.cli import EXIT_OK, EXIT_USAGE

EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the running daemon's state, QBER, key rate and alarms (exit 3: not running)",
        description=(
            "Show the health of the daemon running this config: role, link, state, QBER, "
            "keys and key rate, active alarms, simulated instruments, pid, uptime, MQTT. "
            "Exit 0 when it runs, 3 when it does not, 4 when its snapshot cannot be read."
        ),
    )
    parser.add_argument("-c", "--config", required=True, type=Path, help="node config (TOML)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.set_defaults(func=show_status)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    s = int(max(seconds, 0))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {s}s"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def show_status(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from qkdd.cli.common import print_config_error
    from qkdd.config import ConfigError, load_config
    from qkdd.health import health_path, is_alive, read_snapshot

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_USAGE
    node = config.node
    path = health_path(node.state_dir)
    try:
        snapshot = read_snapshot(node.state_dir)
    except PermissionError:
        print(
            f"status: cannot read {path}: permission denied (run as the qkdd user or root)",
            file=sys.stderr,
        )
        return EXIT_UNKNOWN
    except (OSError, ValidationError, ValueError) as exc:
        print(f"status: unreadable health snapshot {path}: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    now = time.time()
    running = snapshot is not None and snapshot.running and is_alive(snapshot)
    if args.json:
        doc: dict[str, Any] = {"running": running, "config": str(args.config)}
        if snapshot is not None:
            doc["uptime_s"] = now - snapshot.started_at if running else None
            doc["snapshot_age_s"] = now - snapshot.updated_at
            doc["health"] = snapshot.model_dump(mode="json", by_alias=True)
        json.dump(doc, sys.stdout, indent=1)
        print()
        return EXIT_OK if running else EXIT_NOT_RUNNING
    title = f"qkdd {node.link} ({node.role.value}, node {node.id})"
    if snapshot is None:
        print(f"{title}: not running (no health snapshot in {node.state_dir})")
        return EXIT_NOT_RUNNING
    if not running:
        print(
            f"{title}: not running (last seen {_when(snapshot.updated_at)}, "
            f"{_duration(now - snapshot.updated_at)} ago, pid {snapshot.pid}, "
            f"state {snapshot.state})"
        )
        if snapshot.reason:
            print(f"  last reason  {snapshot.reason}")
        return EXIT_NOT_RUNNING
    s = snapshot
    rows = [
        ("process", f"running, pid {s.pid}, up {_duration(now - s.started_at)}"),
        (
            "state",
            f"{s.state} since {_when(s.state_since)} ({_duration(now - s.state_since)} ago)",
        ),
        ("reason", s.reason or "-"),
        (
            "qber",
            f"frame {_percent(s.qber_frame)}, window {_percent(s.qber_window)}, "
            f"last block {_percent(s.qber_block)}",
        ),
        (
            "keys",
            f"{s.keys_committed} keys, {s.secret_bits_committed} secret bits committed "
            f"in {s.blocks_committed} blocks since start",
        ),
        ("key rate", f"{s.key_rate_bits_per_s:.1f} bit/s (last {s.key_rate_window_s:g} s)"),
        (
            "alarms",
            ", ".join(f"{a.name} ({a.level}, since {_when(a.since)})" for a in s.alarms) or "none",
        ),
        ("instruments", "SIMULATED (keys are not secure)" if s.simulated else "hardware"),
        (
            "mqtt",
            "not configured"
            if not s.mqtt_enabled
            else ("connected" if s.mqtt_connected else "not connected"),
        ),
    ]
    print(f"{title}: running")
    for label, value in rows:
        print(f"  {label:<12} {value}")
    return EXIT_OK
