"""``qkdd init-secret``: a fresh authentication secret, one copy per end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qkdd.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "init-secret",
        help="create the pre-shared authentication secret of a link (one file per end)",
        description=(
            "Create a fresh authentication secret with an id and write one copy (mode 0600) "
            "into each end's state directory. Each daemon imports its copy on first start "
            "and deletes the file. Never reuse a secret: a node whose state is lost needs "
            "a new secret at both ends."
        ),
    )
    parser.add_argument("--link", required=True, help="link id (as in both nodes' configs)")
    parser.add_argument(
        "--alice-dir", required=True, type=Path, help="Alice's state directory (created 0700)"
    )
    parser.add_argument(
        "--bob-dir", required=True, type=Path, help="Bob's state directory (created 0700)"
    )
    parser.add_argument(
        "--units",
        type=int,
        default=None,
        help="128-bit units per direction (default 2048 = 256 kbit each way)",
    )
    parser.add_argument(
        "--random-source",
        type=Path,
        default=None,
        help="read the secret from this device or file (e.g. a QRNG) instead of the OS CSPRNG",
    )
    parser.set_defaults(func=run_init_secret)


def run_init_secret(args: argparse.Namespace) -> int:
    from qkdd.auth.bootstrap import (
        DEFAULT_UNITS_PER_DIRECTION,
        generate_secret,
        secret_file_path,
        write_secret_file,
    )
    from qkdd.auth.errors import SecretFileError
    from qkdd.store.db import StoreError

    units = DEFAULT_UNITS_PER_DIRECTION if args.units is None else args.units
    if args.alice_dir.resolve() == args.bob_dir.resolve():
        print("init-secret: Alice and Bob need different state directories", file=sys.stderr)
        return EXIT_USAGE
    for directory in (args.alice_dir, args.bob_dir):
        if secret_file_path(directory).exists():
            print(
                f"init-secret: {secret_file_path(directory)} already exists; "
                "install or remove it first",
                file=sys.stderr,
            )
            return EXIT_USAGE
    try:
        bundle = generate_secret(args.link, units, random_source=args.random_source)
    except ValueError as exc:
        print(f"init-secret: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, SecretFileError) as exc:
        print(f"init-secret: cannot read random bytes: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    written = []
    try:
        for role, directory in (("alice", args.alice_dir), ("bob", args.bob_dir)):
            written.append(write_secret_file(directory, bundle, role))
    except (OSError, SecretFileError, StoreError) as exc:
        for path in written:
            path.unlink(missing_ok=True)
        print(f"init-secret: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        bundle.wipe()
    print(f"secret_id {bundle.secret_id}")
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK
