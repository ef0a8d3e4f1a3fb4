"""Blocks, keys and named secrets in the state store.

The key-exchange daemon fills these; the delivery outbox and the key manager
read them. Key material is returned as ``bytearray`` (overwrite it when done);
metadata listings never carry material.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from qkdd.store.db import StateStore, StoreError, utc_now


class KeyState(StrEnum):
    """Life of a key: pending (voted, not committed) → committed → delivered."""

    PENDING = "pending"
    COMMITTED = "committed"
    DELIVERED = "delivered"


class BlockState(StrEnum):
    OPEN = "open"
    PENDING = "pending"
    COMMITTED = "committed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class KeyMeta:
    """Everything about a key except its bits (safe to list and log)."""

    key_id: str
    link: str
    block_id: int
    index: int
    bits: int
    qber: float
    eps_sec: float
    eps_cor: float
    eps_auth: float
    eps_total: float
    simulated: bool
    created: str
    consumer_slot: str
    state: KeyState


@dataclass
class NewKey:
    """A key to store as pending. ``material`` is never shown in the repr."""

    key_id: str
    link: str
    block_id: int
    index: int
    bits: int
    material: bytearray = field(repr=False)
    qber: float
    eps_sec: float
    eps_cor: float
    eps_auth: float
    simulated: bool
    consumer_slot: str

    @property
    def eps_total(self) -> float:
        """ε_total = ε_sec + ε_cor + ε_auth (DESIGN §4, ε bookkeeping)."""
        return self.eps_sec + self.eps_cor + self.eps_auth


_KEY_COLUMNS = (
    "key_id, link, block_id, idx, bits, qber, eps_sec, eps_cor, eps_auth, eps_total, "
    "simulated, created, consumer_slot, state"
)


def _meta(row: tuple[Any, ...]) -> KeyMeta:
    (kid, link, block, idx, bits, qber, es, ec, ea, et, sim, created, slot, state) = tuple(row)
    return KeyMeta(
        key_id=str(kid),
        link=str(link),
        block_id=int(block),
        index=int(idx),
        bits=int(bits),
        qber=float(qber),
        eps_sec=float(es),
        eps_cor=float(ec),
        eps_auth=float(ea),
        eps_total=float(et),
        simulated=bool(sim),
        created=str(created),
        consumer_slot=str(slot),
        state=KeyState(str(state)),
    )


class KeyStore:
    """Typed access to the ``blocks`` and ``keys`` tables of a :class:`StateStore`."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    # -- blocks -----------------------------------------------------------------------

    def allocate_block(self, link: str) -> int:
        """A fresh block id, durably recorded before it is used (never reused, also
        across crashes: the counter only grows)."""
        with self.store.transaction(durable=True) as tx:
            row = tx.execute("SELECT value FROM meta WHERE name = 'next_block_id'").fetchone()
            block_id = 1 if row is None else int(row[0])
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('next_block_id', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (str(block_id + 1),),
            )
            tx.execute(
                "INSERT INTO blocks (block_id, link, state, created) VALUES (?, ?, 'open', ?)",
                (block_id, link, utc_now()),
            )
        return block_id

    def adopt_block(self, link: str, block_id: int) -> None:
        """Record a block id chosen by the coordinator (Bob's side); refuses a reused id."""
        with self.store.transaction(durable=True) as tx:
            if tx.execute("SELECT 1 FROM blocks WHERE block_id = ?", (block_id,)).fetchone():
                raise StoreError(f"block id {block_id} was already used")
            tx.execute(
                "INSERT INTO blocks (block_id, link, state, created) VALUES (?, ?, 'open', ?)",
                (block_id, link, utc_now()),
            )
            row = tx.execute("SELECT value FROM meta WHERE name = 'next_block_id'").fetchone()
            if row is None or int(row[0]) <= block_id:
                tx.execute(
                    "INSERT INTO meta (name, value) VALUES ('next_block_id', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (str(block_id + 1),),
                )

    def block_state(self, block_id: int) -> BlockState | None:
        row = self.store.conn.execute(
            "SELECT state FROM blocks WHERE block_id = ?", (block_id,)
        ).fetchone()
        return None if row is None else BlockState(str(row[0]))

    # -- keys -------------------------------------------------------------------------

    def add_pending(self, block_id: int, keys: list[NewKey]) -> None:
        """Store a block's keys as pending and mark the block pending (the vote)."""
        created = utc_now()
        with self.store.transaction(durable=True) as tx:
            state = self.block_state(block_id)
            if state not in (BlockState.OPEN, BlockState.PENDING):
                raise StoreError(f"block {block_id} is {state}, cannot add keys")
            for key in keys:
                if key.block_id != block_id:
                    raise StoreError("key belongs to another block")
                tx.execute(
                    f"INSERT INTO keys ({_KEY_COLUMNS}, material) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                    (
                        key.key_id,
                        key.link,
                        key.block_id,
                        key.index,
                        key.bits,
                        key.qber,
                        key.eps_sec,
                        key.eps_cor,
                        key.eps_auth,
                        key.eps_total,
                        int(key.simulated),
                        created,
                        key.consumer_slot,
                        bytes(key.material),
                    ),
                )
            tx.execute("UPDATE blocks SET state = 'pending' WHERE block_id = ?", (block_id,))

    def commit_block(self, block_id: int) -> int:
        """pending → committed for every key of the block; returns how many."""
        with self.store.transaction(durable=True) as tx:
            cur = tx.execute(
                "UPDATE keys SET state = 'committed' WHERE block_id = ? AND state = 'pending'",
                (block_id,),
            )
            tx.execute(
                "UPDATE blocks SET state = 'committed', decided = ? WHERE block_id = ?",
                (utc_now(), block_id),
            )
            return int(cur.rowcount)

    def abort_block(self, block_id: int) -> int:
        """Erase every key of an aborted block (securely) and record the abort."""
        with self.store.transaction(durable=True) as tx:
            state = self.block_state(block_id)
            if state == BlockState.COMMITTED:
                raise StoreError(f"block {block_id} is committed; it cannot be aborted")
            cur = tx.execute("DELETE FROM keys WHERE block_id = ?", (block_id,))
            tx.execute(
                "UPDATE blocks SET state = 'aborted', decided = ? WHERE block_id = ?",
                (utc_now(), block_id),
            )
            self.store.note_erasure()
            return int(cur.rowcount)

    def mark_delivered(self, key_id: str) -> None:
        """The consumer acknowledged: erase the material, keep the metadata."""
        with self.store.transaction(durable=True) as tx:
            cur = tx.execute(
                "UPDATE keys SET state = 'delivered', material = NULL "
                "WHERE key_id = ? AND state = 'committed'",
                (key_id,),
            )
            if cur.rowcount != 1:
                raise StoreError(f"key {key_id} is not a committed key")
            self.store.note_erasure()

    def material(self, key_id: str) -> bytearray:
        """The key's bits (committed or pending); overwrite the copy when done."""
        row = self.store.conn.execute(
            "SELECT material FROM keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        if row is None or row[0] is None:
            raise StoreError(f"no material for key {key_id}")
        return bytearray(row[0])

    def list(self, state: KeyState | None = None, slot: str | None = None) -> list[KeyMeta]:
        """Key metadata in (block, index) order — never the material."""
        sql = f"SELECT {_KEY_COLUMNS} FROM keys WHERE 1 = 1"
        args: list[object] = []
        if state is not None:
            sql += " AND state = ?"
            args.append(str(state))
        if slot is not None:
            sql += " AND consumer_slot = ?"
            args.append(slot)
        sql += " ORDER BY block_id, idx"
        return [_meta(row) for row in self.store.conn.execute(sql, args)]


class SecretStore:
    """Named secrets (consumer secrets and the like) in the ``secrets`` table."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def put(self, name: str, kind: str, secret_id: str, material: bytes | bytearray) -> None:
        with self.store.transaction(durable=True) as tx:
            tx.execute(
                "INSERT INTO secrets (name, kind, secret_id, material, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, kind, secret_id, bytes(material), utc_now()),
            )

    def get(self, name: str) -> tuple[str, bytearray] | None:
        """(secret id, material) or None."""
        row = self.store.conn.execute(
            "SELECT secret_id, material FROM secrets WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else (str(row[0]), bytearray(row[1]))

    def delete(self, name: str) -> bool:
        with self.store.transaction(durable=True) as tx:
            cur = tx.execute("DELETE FROM secrets WHERE name = ?", (name,))
            self.store.note_erasure()
            return cur.rowcount == 1
