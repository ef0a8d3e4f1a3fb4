"""Numbered schema migrations of the state store.

Each entry is applied once, in order, inside one transaction that also records
its number in ``schema_version``. Never edit a released migration: append a new
one (other subsystems add their tables the same way).
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE meta (
            name  TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );

        -- Named secrets other than the authentication streams (consumer secrets, ...).
        CREATE TABLE secrets (
            name      TEXT PRIMARY KEY,
            kind      TEXT NOT NULL,
            secret_id TEXT NOT NULL,
            material  BLOB NOT NULL,
            created   TEXT NOT NULL
        );

        -- The bootstrap secret this node's authentication streams descend from (one row).
        CREATE TABLE auth_secret (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            secret_id TEXT NOT NULL,
            role      TEXT NOT NULL CHECK (role IN ('alice', 'bob')),
            link      TEXT NOT NULL,
            created   TEXT NOT NULL,
            imported  TEXT NOT NULL
        );

        -- One Wegman-Carter key stream per direction. ``mark`` is the durable
        -- high-water mark: every unit below it may have been used and is burnt.
        CREATE TABLE auth_streams (
            direction TEXT PRIMARY KEY CHECK (direction IN ('alice_to_bob', 'bob_to_alice')),
            mark      INTEGER NOT NULL CHECK (mark >= 0),
            appended  INTEGER NOT NULL CHECK (appended >= mark),
            status    TEXT NOT NULL CHECK (status IN ('open', 'closed', 'exhausted')),
            failures  INTEGER NOT NULL DEFAULT 0
        );

        -- Stream material in 128-bit units, erased (secure_delete) once burnt.
        CREATE TABLE auth_units (
            direction TEXT NOT NULL REFERENCES auth_streams (direction),
            unit      INTEGER NOT NULL,
            material  BLOB NOT NULL CHECK (length(material) = 16),
            source    TEXT NOT NULL,
            PRIMARY KEY (direction, unit)
        ) WITHOUT ROWID;

        -- Replenishment applied per committed block (idempotent across crashes).
        CREATE TABLE auth_replenishments (
            block_id INTEGER PRIMARY KEY,
            units_ab INTEGER NOT NULL,
            units_ba INTEGER NOT NULL,
            bits     INTEGER NOT NULL,
            created  TEXT NOT NULL
        );

        -- Block ids are allocated from meta.next_block_id and never reused.
        CREATE TABLE blocks (
            block_id INTEGER PRIMARY KEY,
            link     TEXT NOT NULL,
            state    TEXT NOT NULL CHECK (state IN ('open', 'pending', 'committed', 'aborted')),
            created  TEXT NOT NULL,
            decided  TEXT
        );

        CREATE TABLE keys (
            key_id        TEXT PRIMARY KEY,
            link          TEXT NOT NULL,
            block_id      INTEGER NOT NULL,
            idx           INTEGER NOT NULL,
            bits          INTEGER NOT NULL CHECK (bits > 0),
            material      BLOB,
            qber          REAL NOT NULL,
            eps_sec       REAL NOT NULL,
            eps_cor       REAL NOT NULL,
            eps_auth      REAL NOT NULL,
            eps_total     REAL NOT NULL,
            simulated     INTEGER NOT NULL CHECK (simulated IN (0, 1)),
            created       TEXT NOT NULL,
            consumer_slot TEXT NOT NULL,
            state         TEXT NOT NULL CHECK (state IN ('pending', 'committed', 'delivered')),
            UNIQUE (block_id, idx)
        );
        CREATE INDEX keys_by_state ON keys (state, consumer_slot);
        """,
    ),
    (
        2,
        """
        -- The delivery outbox: each committed key's message, stored once so every
        -- republish sends identical bytes. ``payload`` is erased (secure_delete)
        -- once the consumer's acknowledgement marks the key delivered.
        CREATE TABLE outbox (
            key_id         TEXT PRIMARY KEY REFERENCES keys (key_id),
            slot           TEXT NOT NULL,
            topic          TEXT NOT NULL,
            mode           TEXT NOT NULL CHECK (mode IN ('sealed', 'plaintext')),
            payload        BLOB,
            state          TEXT NOT NULL CHECK (state IN ('queued', 'delivered')),
            queued         TEXT NOT NULL,
            publishes      INTEGER NOT NULL DEFAULT 0,
            last_published TEXT,
            delivered      TEXT,
            CHECK ((state = 'queued') = (payload IS NOT NULL))
        );
        CREATE INDEX outbox_by_state ON outbox (state, slot);
        """,
    ),
)
"""(version, SQL script) pairs, strictly increasing."""

SCHEMA_VERSION = MIGRATIONS[-1][0]
