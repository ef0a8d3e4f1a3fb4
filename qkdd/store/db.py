"""The SQLite state store: one database file in the node's state directory.

Durability and erasure rules (DESIGN §5, security review #21):

* the directory is 0700 and every file (database, ``-wal``, ``-shm``) 0600;
  files are created under umask 077;
* WAL journal; ``synchronous=FULL`` for every transaction that precedes an
  external effect (a tag leaving, a key delivered) — :meth:`StateStore.transaction`
  with ``durable=True`` — and ``NORMAL`` for bookkeeping;
* ``secure_delete=ON`` so freed pages are zeroed, and a ``wal_checkpoint(TRUNCATE)``
  after every erasure of secret material so no copy survives in the WAL.

The store is synchronous and meant for one thread (the daemon's event loop or
one worker); each call is a few milliseconds at most (one fsync).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from qkdd.logging import get_logger
from qkdd.store.migrations import MIGRATIONS

DB_NAME: Final = "qkdd-state.sqlite3"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600

_log = get_logger("store")


class StoreError(RuntimeError):
    """The state store cannot be used (permissions, schema from the future, ...)."""


def utc_now() -> str:
    """ISO 8601 UTC timestamp used for every ``created``/``decided`` column."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Run a block under umask 077 (files 0600, directories 0700).

    The daemon should set umask 077 for its whole life (systemd ``UMask=0077``);
    this guards the store's own file creation when it has not.
    """
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` as a 0700 directory, or tighten an existing one to 0700.

    Refuses a directory owned by another user: its owner could read the secrets.
    """
    with private_umask():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"state directory {path} is not a directory")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise StoreError(f"state directory {path} belongs to uid {st.st_uid}, not to this user")
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        _log.warning(
            "state directory permissions tightened",
            state_path=str(path),
            old_mode=oct(stat.S_IMODE(st.st_mode)),
        )
        os.chmod(path, DIR_MODE)
    return path


class StateStore:
    """The node's durable state: secrets, authentication streams, blocks and keys.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    Subsystem APIs (``qkdd.store.keys``, ``qkdd.auth``) take a store and run
    their statements through :meth:`transaction`.
    """

    def __init__(self, state_dir: Path, conn: sqlite3.Connection) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self._conn: sqlite3.Connection | None = conn
        self._depth = 0
        self._durable = False
        self._erased = False

    def __repr__(self) -> str:
        return f"StateStore({str(self.path)!r}, open={self._conn is not None})"

    # -- life cycle -------------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str]) -> StateStore:
        """Open (creating if needed) the store in ``state_dir`` and migrate its schema."""
        directory = ensure_private_dir(Path(state_dir))
        path = directory / DB_NAME
        with private_umask():
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
            try:
                conn.execute("PRAGMA journal_mode=WAL").fetchone()
                conn.execute("PRAGMA secure_delete=ON")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA synchronous=FULL")
                store = cls(directory, conn)
                store._migrate()
            except BaseException:
                conn.close()
                raise
        store.fix_file_modes()
        return store

    def close(self) -> None:
        """Checkpoint the WAL into the database and close (idempotent)."""
        conn = self._conn
        if conn is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
            self._conn = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def fix_file_modes(self) -> None:
        """Make the database and its ``-wal``/``-shm`` files 0600 (SQLite copies the
        database's mode to them; this also repairs files made under a looser umask)."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            candidate = Path(f"{self.path}{suffix}")
            with contextlib.suppress(FileNotFoundError):
                if stat.S_IMODE(candidate.stat().st_mode) != FILE_MODE:
                    os.chmod(candidate, FILE_MODE)

    # -- transactions -----------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("state store is closed")
        return self._conn

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``), nested ones become savepoints.

        ``durable=True`` commits with ``synchronous=FULL`` (the WAL is fsynced before
        ``COMMIT`` returns): use it for every transition that precedes an external
        effect. A nested block asking for durability makes the outer commit durable.
        If secret material was erased inside, the WAL is checkpointed afterwards.
        """
        conn = self.conn
        if self._depth == 0:
            self._durable = durable
            self._erased = False
            # The safety level cannot change inside a transaction, so it is set here.
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield conn
            except BaseException:
                self._depth = 0
                conn.execute("ROLLBACK")
                raise
            self._depth = 0
            conn.execute("COMMIT")
            if self._erased:
                self.checkpoint()
            return
        if durable and not self._durable:
            raise StoreError("a durable transaction cannot nest inside a non-durable one")
        name = f"sp{self._depth}"
        conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield conn
        except BaseException:
            self._depth -= 1
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        self._depth -= 1
        conn.execute(f"RELEASE {name}")

    def synchronous_mode(self) -> int:
        """Current ``PRAGMA synchronous`` (1 NORMAL, 2 FULL); for tests and diagnostics."""
        row = self.conn.execute("PRAGMA synchronous").fetchone()
        return int(row[0])

    def note_erasure(self) -> None:
        """Record that the current transaction erased secret material: the WAL is
        checkpointed (TRUNCATE) once it commits."""
        if self._depth == 0:
            self.checkpoint()
        else:
            self._erased = True

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it, so erased material does not
        linger in ``-wal``."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    # -- schema -----------------------------------------------------------------------

    def schema_version(self) -> int:
        row = self.conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        conn = self.conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, applied TEXT NOT NULL)"
        )
        current = self.schema_version()
        known = MIGRATIONS[-1][0] if MIGRATIONS else 0
        if current > known:
            raise StoreError(
                f"state store schema {current} is newer than this qkdd understands ({known}); "
                "upgrade qkdd rather than downgrading the state"
            )
        for version, script in MIGRATIONS:
            if version <= current:
                continue
            # executescript commits implicitly, so run the statements one by one
            # inside an explicit transaction: a migration applies fully or not at all.
            with self.transaction(durable=True) as tx:
                for statement in _split_sql(script):
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
                    (version, utc_now()),
                )
            _log.info("state store migrated", schema_version=version)

    # -- small typed helpers ------------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str, *, durable: bool = False) -> None:
        with self.transaction(durable=durable) as tx:
            tx.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (scripts hold no string literals
    containing ';' — keep it that way)."""
    statements = []
    for chunk in script.split(";"):
        lines = [ln for ln in chunk.splitlines() if not ln.strip().startswith("--")]
        text = "\n".join(lines).strip()
        if text:
            statements.append(text)
    return statements
