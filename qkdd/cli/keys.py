"""``qkdd keys list -c FILE``: the node's keys (metadata; material only with --reveal)."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from qkdd.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="inspect the keys in a node's state store")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    lister = sub.add_parser(
        "list",
        help="list keys: id, bits, block, qber, eps_total, created, simulated, state",
        description=(
            "List the keys of this node's state store. Key material is never shown unless "
            "--reveal is given (for tests and debugging: it prints secret keys)."
        ),
    )
    lister.add_argument("-c", "--config", required=True, type=Path, help="node config (TOML)")
    lister.add_argument("--json", action="store_true", help="one JSON document on stdout")
    lister.add_argument(
        "--reveal", action="store_true", help="include the key material (base64); prints secrets"
    )
    lister.add_argument(
        "--state",
        choices=("pending", "committed", "delivered"),
        default=None,
        help="only keys in this state",
    )
    lister.set_defaults(func=list_keys)


def list_keys(args: argparse.Namespace) -> int:
    from qkdd.cli.common import print_config_error
    from qkdd.config import ConfigError, load_config
    from qkdd.store import KeyState, KeyStore, StateStore, StoreError
    from qkdd.store.db import DB_NAME

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_USAGE
    if not (config.node.state_dir / DB_NAME).exists():
        print(f"keys list: no state store in {config.node.state_dir}", file=sys.stderr)
        return EXIT_FAILURE
    if args.reveal:
        print(
            "WARNING: --reveal prints secret key material; anyone who sees it holds the keys",
            file=sys.stderr,
        )
    try:
        store = StateStore.open(config.node.state_dir)
    except (StoreError, OSError) as exc:
        print(f"keys list: cannot open the state store: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        keys = KeyStore(store)
        state = KeyState(args.state) if args.state else None
        rows = []
        for meta in keys.list(state):
            row: dict[str, Any] = {
                "key_id": meta.key_id,
                "bits": meta.bits,
                "block": meta.block_id,
                "index": meta.index,
                "qber": meta.qber,
                "eps_total": meta.eps_total,
                "created": meta.created,
                "simulated": meta.simulated,
                "consumer_slot": meta.consumer_slot,
                "state": str(meta.state),
            }
            if args.reveal and meta.state is not KeyState.DELIVERED:
                material = keys.material(meta.key_id)
                row["key"] = base64.b64encode(bytes(material)).decode()
                material[:] = bytes(len(material))
            rows.append(row)
    finally:
        store.close()
    if args.json:
        json.dump({"link": config.node.link, "keys": rows}, sys.stdout, indent=1)
        print()
        return EXIT_OK
    if not rows:
        print("no keys")
        return EXIT_OK
    header = f"{'key id':36}  {'bits':>5}  {'block':>5}  {'qber':>6}  {'eps_total':>9}  state"
    print(header)
    for r in rows:
        line = (
            f"{r['key_id']:36}  {r['bits']:>5}  {r['block']:>5}  {r['qber']:>6.4f}  "
            f"{r['eps_total']:>9.2e}  {r['state']}{'  SIMULATED' if r['simulated'] else ''}"
        )
        if "key" in r:
            line += f"  {r['key']}"
        print(line)
    return EXIT_OK
