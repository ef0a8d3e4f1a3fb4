"""``qkdd consumer add``: a slot's consumer secret, in the daemon's state and a consumer file."""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path
from typing import Any

from qkdd.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "consumer",
        help="manage the key consumers of a node's slots",
        description="Manage the key consumers of this node's [[consumers]] slots.",
    )
    sub = parser.add_subparsers(dest="consumer_command", metavar="ACTION")
    add = sub.add_parser(
        "add",
        help="create a consumer secret for a slot and write its consumer file",
        description=(
            "Create a 256-bit consumer secret for slot NAME: one copy in this node's state "
            "store (the daemon seals the slot's keys under it), one in a consumer file "
            "(mode 0600) for the consumer (`qkdd consume -c FILE`). Each end of a link "
            "registers its own consumer for each slot."
        ),
    )
    add.add_argument("name", help="slot name, as in the config's [[consumers]]")
    add.add_argument("-c", "--config", required=True, type=Path, help="the node's config file")
    add.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="consumer file to write (default: ./<link>-<node>-<NAME>.consumer.toml)",
    )
    add.add_argument(
        "--consumer-state-dir",
        type=Path,
        default=None,
        help="the consumer's own state directory (default: <output>.d beside the file)",
    )
    add.set_defaults(func=run_consumer_add)
    parser.set_defaults(func=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def run_consumer_add(args: argparse.Namespace) -> int:
    import secrets

    from qkdd.cli.common import print_config_error
    from qkdd.config import ConfigError, load_config
    from qkdd.mqtt.consumer import write_consumer_file
    from qkdd.mqtt.publisher import consumer_secret_name
    from qkdd.store.db import StateStore, StoreError
    from qkdd.store.keys import SecretStore

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_USAGE
    slots = [slot.name for slot in config.consumers]
    if args.name not in slots:
        print(
            f"consumer add: {args.config}: consumers: no slot named {args.name!r} "
            f"(slots: {', '.join(slots) or 'none'})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    node, link = config.node.id, config.node.link
    output: Path = args.output or Path(f"{link}-{node}-{args.name}.consumer.toml")
    if output.exists():
        print(f"consumer add: {output} exists; remove it or choose --output", file=sys.stderr)
        return EXIT_USAGE
    state_dir = args.consumer_state_dir or output.with_name(output.name + ".d")
    secret = bytearray(secrets.token_bytes(32))
    secret_id = str(uuid.uuid4())
    try:
        with StateStore.open(config.node.state_dir) as store:
            vault = SecretStore(store)
            name = consumer_secret_name(args.name)
            if vault.get(name) is not None:
                print(
                    f"consumer add: slot {args.name!r} already has a consumer at this node; "
                    "keys sealed to it would be lost to a new secret",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            mqtt: dict[str, Any] = {
                "host": config.mqtt.host,
                "port": config.mqtt.port,
                "protocol": config.mqtt.protocol,
                "base_topic": config.mqtt.base_topic,
            }
            if config.mqtt.tls is not None:
                mqtt["tls"] = {"ca_file": str(config.mqtt.tls.ca_file)}
            try:
                write_consumer_file(
                    output,
                    {
                        "consumer": {
                            "name": args.name,
                            "node": node,
                            "link": link,
                            "secret_id": secret_id,
                            "secret": secret.hex(),
                            "state_dir": str(state_dir.resolve()),
                            "plaintext": config.mqtt.plaintext_keys,
                        },
                        "mqtt": mqtt,
                        "output": {"kind": "stdout"},
                    },
                )
                vault.put(name, "consumer", secret_id, secret)
            except BaseException:
                output.unlink(missing_ok=True)
                raise
    except (OSError, StoreError) as exc:
        print(f"consumer add: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        secret[:] = bytes(len(secret))
    print(f"consumer {args.name} of {node}/{link}: secret_id {secret_id}")
    print(f"wrote {output} (0600; give it to the consumer only, set its MQTT identity there)")
    return EXIT_OK
