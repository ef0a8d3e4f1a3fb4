"""Durable state of the Wegman–Carter authentication key streams.

Each direction (Alice→Bob, Bob→Alice) is a sequence of 128-bit units indexed
from 0. ``mark`` is the durable high-water mark: every unit below it may have
been used and is burnt (its row is erased). ``appended`` is how many units the
stream has ever received (bootstrap secret, then replenishment from committed
blocks). Only ``qkdd.auth`` should write here; it decides *when* (reserve before
a tag leaves), this module makes it durable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from qkdd.store.db import StateStore, StoreError, utc_now

UNIT_BYTES = 16
"""One stream unit: a Poly1305 hash key r or a one-time pad s (128 bits)."""


class Direction(StrEnum):
    """The two key streams of a link, named by who sends the tags."""

    ALICE_TO_BOB = "alice_to_bob"
    BOB_TO_ALICE = "bob_to_alice"


DIRECTIONS: tuple[Direction, Direction] = (Direction.ALICE_TO_BOB, Direction.BOB_TO_ALICE)
"""Canonical order (used wherever both ends must do the same thing in the same order)."""


class StreamStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"  # a bad tag was seen: only a resynchronising handshake reopens it
    EXHAUSTED = "exhausted"  # too many failures: an operator must give a new secret


@dataclass(frozen=True)
class StreamRow:
    direction: Direction
    mark: int
    appended: int
    status: StreamStatus
    failures: int


@dataclass(frozen=True)
class AuthSecretInfo:
    """Identity of the bootstrap secret (the epoch checked in the handshake)."""

    secret_id: str
    role: str
    link: str
    created: str
    imported: str


@dataclass(frozen=True)
class ReplenishmentRecord:
    block_id: int
    units_ab: int
    units_ba: int
    bits: int


class StreamStore:
    """Typed access to ``auth_secret``, ``auth_streams``, ``auth_units`` and
    ``auth_replenishments``."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    # -- secret -----------------------------------------------------------------------

    def secret(self) -> AuthSecretInfo | None:
        row = self.store.conn.execute(
            "SELECT secret_id, role, link, created, imported FROM auth_secret"
        ).fetchone()
        if row is None:
            return None
        return AuthSecretInfo(*(str(v) for v in row))

    def install_secret(
        self,
        *,
        secret_id: str,
        role: str,
        link: str,
        created: str,
        material: Mapping[Direction, bytes | bytearray | memoryview],
    ) -> None:
        """Install the bootstrap secret and start both streams from it (one durable
        transaction: either the whole secret is imported or nothing)."""
        with self.store.transaction(durable=True) as tx:
            if self.secret() is not None:
                raise StoreError("an authentication secret is already installed")
            tx.execute(
                "INSERT INTO auth_secret (singleton, secret_id, role, link, created, imported) "
                "VALUES (1, ?, ?, ?, ?, ?)",
                (secret_id, role, link, created, utc_now()),
            )
            for direction in DIRECTIONS:
                tx.execute(
                    "INSERT INTO auth_streams (direction, mark, appended, status, failures) "
                    "VALUES (?, 0, 0, 'open', 0)",
                    (str(direction),),
                )
                self.append(direction, material[direction], f"secret:{secret_id}")

    # -- streams ----------------------------------------------------------------------

    def stream(self, direction: Direction) -> StreamRow:
        row = self.store.conn.execute(
            "SELECT mark, appended, status, failures FROM auth_streams WHERE direction = ?",
            (str(direction),),
        ).fetchone()
        if row is None:
            raise StoreError(f"no authentication stream {direction}: no secret installed")
        return StreamRow(direction, int(row[0]), int(row[1]), StreamStatus(row[2]), int(row[3]))

    def reserve(self, direction: Direction, new_mark: int, *, erase_below: int | None) -> None:
        """Durably raise the high-water mark to ``new_mark`` (fsync before return) and
        erase the units below ``erase_below`` (already used), if given."""
        with self.store.transaction(durable=True) as tx:
            row = self.stream(direction)
            if new_mark > row.appended:
                raise StoreError("reservation beyond the stream's material")
            if new_mark > row.mark:
                tx.execute(
                    "UPDATE auth_streams SET mark = ? WHERE direction = ?",
                    (new_mark, str(direction)),
                )
            if erase_below is not None:
                self._erase_below(direction, min(erase_below, max(new_mark, row.mark)))

    def erase_below(self, direction: Direction, unit: int) -> None:
        """Erase used units below ``unit`` (securely; the WAL is checkpointed)."""
        with self.store.transaction(durable=True):
            self._erase_below(direction, min(unit, self.stream(direction).mark))

    def _erase_below(self, direction: Direction, unit: int) -> None:
        cur = self.store.conn.execute(
            "DELETE FROM auth_units WHERE direction = ? AND unit < ?", (str(direction), unit)
        )
        if cur.rowcount:
            self.store.note_erasure()

    def read_units(self, direction: Direction, start: int, count: int) -> bytearray:
        """Material of units ``start .. start+count-1`` (caller overwrites it when done)."""
        rows = self.store.conn.execute(
            "SELECT unit, material FROM auth_units WHERE direction = ? AND unit >= ? AND unit < ?"
            " ORDER BY unit",
            (str(direction), start, start + count),
        ).fetchall()
        if len(rows) != count or (rows and int(rows[0][0]) != start):
            raise StoreError(f"stream {direction} has no material at units {start}+{count}")
        out = bytearray(UNIT_BYTES * count)
        for i, (_, material) in enumerate(rows):
            out[i * UNIT_BYTES : (i + 1) * UNIT_BYTES] = material
        return out

    def append(
        self, direction: Direction, material: bytes | bytearray | memoryview, source: str
    ) -> int:
        """Append whole units of material; returns the index of the first new unit."""
        view = memoryview(material)
        if len(view) % UNIT_BYTES:
            raise StoreError("stream material must be a whole number of 128-bit units")
        with self.store.transaction(durable=True) as tx:
            first = self.stream(direction).appended
            count = len(view) // UNIT_BYTES
            tx.executemany(
                "INSERT INTO auth_units (direction, unit, material, source) VALUES (?, ?, ?, ?)",
                (
                    (
                        str(direction),
                        first + i,
                        bytes(view[i * UNIT_BYTES : (i + 1) * UNIT_BYTES]),
                        source,
                    )
                    for i in range(count)
                ),
            )
            tx.execute(
                "UPDATE auth_streams SET appended = appended + ? WHERE direction = ?",
                (count, str(direction)),
            )
        return first

    def set_status(self, direction: Direction, status: StreamStatus, failures: int) -> None:
        with self.store.transaction(durable=True) as tx:
            tx.execute(
                "UPDATE auth_streams SET status = ?, failures = ? WHERE direction = ?",
                (str(status), failures, str(direction)),
            )

    # -- replenishment ----------------------------------------------------------------

    def replenishment(self, block_id: int) -> ReplenishmentRecord | None:
        row = self.store.conn.execute(
            "SELECT units_ab, units_ba, bits FROM auth_replenishments WHERE block_id = ?",
            (block_id,),
        ).fetchone()
        if row is None:
            return None
        return ReplenishmentRecord(block_id, int(row[0]), int(row[1]), int(row[2]))

    def record_replenishment(self, record: ReplenishmentRecord) -> None:
        with self.store.transaction(durable=True) as tx:
            tx.execute(
                "INSERT INTO auth_replenishments (block_id, units_ab, units_ba, bits, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (record.block_id, record.units_ab, record.units_ba, record.bits, utc_now()),
            )
