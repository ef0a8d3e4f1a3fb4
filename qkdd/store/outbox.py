"""The delivery outbox: each committed key's outgoing message, until its consumer acknowledges.

DESIGN §5. A message is stored once (``enqueue`` keeps the first bytes of a key),
so every republish — after a reconnect, a restart, or periodically — sends
identical bytes and a consumer's tombstone drops the duplicates. States are
queued → delivered. Delivery is one durable transaction that erases the stored
message and the key's material (``secure_delete``, then a WAL checkpoint).

The payload is opaque here: sealing is ``qkdd.mqtt``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from qkdd.store.db import StateStore, StoreError, utc_now
from qkdd.store.keys import _KEY_COLUMNS, KeyMeta, KeyState, KeyStore, _meta


class OutboxState(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"


@dataclass(frozen=True)
class OutboxEntry:
    """One key's message: the exact bytes to publish on ``topic``."""

    key_id: str
    slot: str
    topic: str
    mode: str  # "sealed" or "plaintext"
    payload: bytes = field(repr=False)
    publishes: int = 0


class Outbox:
    """Typed access to the ``outbox`` table of a :class:`StateStore`."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.keys = KeyStore(store)

    def enqueue(self, entries: list[OutboxEntry]) -> int:
        """Store messages durably (before any is published); a key already in the outbox
        keeps its first message. Returns how many were new."""
        added = 0
        with self.store.transaction(durable=True) as tx:
            for entry in entries:
                row = tx.execute(
                    "SELECT state, consumer_slot FROM keys WHERE key_id = ?", (entry.key_id,)
                ).fetchone()
                if row is None or row[0] != KeyState.COMMITTED:
                    raise StoreError(f"key {entry.key_id} is not a committed key")
                if row[1] != entry.slot:
                    raise StoreError(f"key {entry.key_id} belongs to slot {row[1]}")
                cur = tx.execute(
                    "INSERT OR IGNORE INTO outbox (key_id, slot, topic, mode, payload, state, "
                    "queued) VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                    (entry.key_id, entry.slot, entry.topic, entry.mode, entry.payload, utc_now()),
                )
                added += cur.rowcount
        return added

    def committed_without_message(self, link: str | None = None) -> list[KeyMeta]:
        """Committed keys with no outbox row yet (e.g. the daemon stopped between commit
        and sealing): they still need a message."""
        sql = (
            f"SELECT {_KEY_COLUMNS} FROM keys k WHERE k.state = 'committed' "
            "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.key_id = k.key_id)"
        )
        args: list[object] = []
        if link is not None:
            sql += " AND k.link = ?"
            args.append(link)
        sql += " ORDER BY k.block_id, k.idx"
        return [_meta(row) for row in self.store.conn.execute(sql, args)]

    def queued(
        self, slot: str | None = None, *, unpublished_for_s: float | None = None
    ) -> list[OutboxEntry]:
        """Undelivered messages in the order they were queued (block, then index); with
        ``unpublished_for_s``, only those not published within that many seconds."""
        sql = (
            "SELECT o.key_id, o.slot, o.topic, o.mode, o.payload, o.publishes "
            "FROM outbox o JOIN keys k USING (key_id) WHERE o.state = 'queued'"
        )
        args: list[object] = []
        if slot is not None:
            sql += " AND o.slot = ?"
            args.append(slot)
        if unpublished_for_s is not None:
            # ISO 8601 UTC strings of one format compare as the times they name.
            cutoff = datetime.now(UTC) - timedelta(seconds=unpublished_for_s)
            sql += " AND (o.last_published IS NULL OR o.last_published < ?)"
            args.append(cutoff.isoformat(timespec="milliseconds"))
        sql += " ORDER BY k.block_id, k.idx"
        return [
            OutboxEntry(str(r[0]), str(r[1]), str(r[2]), str(r[3]), bytes(r[4]), int(r[5]))
            for r in self.store.conn.execute(sql, args)
        ]

    def get(self, key_id: str) -> tuple[OutboxState, str] | None:
        """(state, slot) of a key's message, or None if it has none."""
        row = self.store.conn.execute(
            "SELECT state, slot FROM outbox WHERE key_id = ?", (key_id,)
        ).fetchone()
        return None if row is None else (OutboxState(str(row[0])), str(row[1]))

    def count_queued(self) -> int:
        row = self.store.conn.execute("SELECT count(*) FROM outbox WHERE state = 'queued'")
        return int(row.fetchone()[0])

    def mark_published(self, key_ids: list[str]) -> None:
        """Bookkeeping only (not durable): how often and when a message went out."""
        now = utc_now()
        with self.store.transaction() as tx:
            tx.executemany(
                "UPDATE outbox SET publishes = publishes + 1, last_published = ? WHERE key_id = ?",
                [(now, key_id) for key_id in key_ids],
            )

    def deliver_many(self, key_ids: list[str]) -> list[str]:
        """:meth:`deliver` for several keys in one durable transaction (one fsync, one
        checkpoint); returns the ids that were queued and are now delivered."""
        delivered = []
        with self.store.transaction(durable=True):
            for key_id in key_ids:
                if self.deliver(key_id):
                    delivered.append(key_id)
        return delivered

    def deliver(self, key_id: str) -> bool:
        """The consumer acknowledged: queued → delivered, erasing the message and the key's
        material in one durable transaction. False if it was not queued (a duplicate
        acknowledgement or an unknown key)."""
        with self.store.transaction(durable=True) as tx:
            cur = tx.execute(
                "UPDATE outbox SET state = 'delivered', payload = NULL, delivered = ? "
                "WHERE key_id = ? AND state = 'queued'",
                (utc_now(), key_id),
            )
            if cur.rowcount != 1:
                return False
            self.keys.mark_delivered(key_id)
            self.store.note_erasure()
        return True
