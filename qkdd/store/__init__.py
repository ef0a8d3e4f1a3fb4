"""The node's durable state in one SQLite file: secrets, authentication key
streams, blocks and keys (and, later, the delivery outbox).

Knows keys and counters, never physics or the network (import-linter contract).
"""

from qkdd.store.db import (
    DB_NAME,
    StateStore,
    StoreError,
    ensure_private_dir,
    private_umask,
    utc_now,
)
from qkdd.store.keys import BlockState, KeyMeta, KeyState, KeyStore, NewKey, SecretStore
from qkdd.store.migrations import SCHEMA_VERSION
from qkdd.store.streams import (
    DIRECTIONS,
    UNIT_BYTES,
    AuthSecretInfo,
    Direction,
    ReplenishmentRecord,
    StreamRow,
    StreamStatus,
    StreamStore,
)

__all__ = [
    "DB_NAME",
    "DIRECTIONS",
    "SCHEMA_VERSION",
    "UNIT_BYTES",
    "AuthSecretInfo",
    "BlockState",
    "Direction",
    "KeyMeta",
    "KeyState",
    "KeyStore",
    "NewKey",
    "ReplenishmentRecord",
    "SecretStore",
    "StateStore",
    "StoreError",
    "StreamRow",
    "StreamStatus",
    "StreamStore",
    "ensure_private_dir",
    "private_umask",
    "utc_now",
]
