"""``qkdd schema``: the JSON Schema of every MQTT payload."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qkdd.cli import EXIT_OK, EXIT_USAGE


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of the MQTT payloads",
        description=(
            "Print the JSON Schema of the MQTT payloads (qkdd.mqtt.messages): all of them "
            "as one object keyed by name, or one by name."
        ),
    )
    parser.add_argument("name", nargs="?", help="one payload (status, qber, alarm, key, ...)")
    parser.set_defaults(func=run_schema)


def run_schema(args: argparse.Namespace) -> int:
    from qkdd.mqtt.messages import json_schemas

    schemas = json_schemas()
    if args.name is None:
        print(json.dumps(schemas, indent=2))
        return EXIT_OK
    if args.name not in schemas:
        print(f"schema: no payload {args.name!r} (one of: {', '.join(schemas)})", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(schemas[args.name], indent=2))
    return EXIT_OK
