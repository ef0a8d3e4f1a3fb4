"""The SQLite state store: permissions, durability settings, migrations, erasure, keys."""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from qkdd.store import (
    DB_NAME,
    SCHEMA_VERSION,
    BlockState,
    KeyState,
    KeyStore,
    NewKey,
    SecretStore,
    StateStore,
    StoreError,
)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Run with a permissive umask, as a careless service manager would."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _key(block_id: int, index: int, material: bytes, slot: str = "kms") -> NewKey:
    return NewKey(
        key_id=f"k-{block_id}-{index}",
        link="lab-1",
        block_id=block_id,
        index=index,
        bits=8 * len(material),
        material=bytearray(material),
        qber=0.021,
        eps_sec=1e-10,
        eps_cor=1e-15,
        eps_auth=3e-30,
        simulated=True,
        consumer_slot=slot,
    )


def test_directory_and_files_are_private_even_under_a_loose_umask(
    tmp_path: Path, loose_umask: None
) -> None:
    state_dir = tmp_path / "state" / "link"
    with StateStore.open(state_dir) as store:
        store.set_meta("probe", "1", durable=True)
        assert _mode(state_dir) == 0o700
        files = [state_dir / DB_NAME, state_dir / f"{DB_NAME}-wal", state_dir / f"{DB_NAME}-shm"]
        for path in files:
            assert path.exists(), path
            assert _mode(path) == 0o600, (path, oct(_mode(path)))
    # A file created by this process under the loose umask is still 0644: the
    # store's umask was temporary.
    probe = tmp_path / "probe"
    probe.touch()
    assert _mode(probe) == 0o644


def test_existing_loose_directory_and_files_are_tightened(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    StateStore.open(state_dir).close()
    os.chmod(state_dir, 0o755)
    os.chmod(state_dir / DB_NAME, 0o644)
    with StateStore.open(state_dir):
        assert _mode(state_dir) == 0o700
        assert _mode(state_dir / DB_NAME) == 0o600


def test_pragmas_and_durable_transactions(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "s") as store:
        conn = store.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        with store.transaction(durable=True):
            assert store.synchronous_mode() == 2  # FULL: fsync at COMMIT
            with store.transaction(durable=True):
                assert store.synchronous_mode() == 2
        with store.transaction():
            assert store.synchronous_mode() == 1  # NORMAL for bookkeeping
            with pytest.raises(StoreError, match="durable"), store.transaction(durable=True):
                pass


def test_nested_failure_rolls_back_only_the_inner_part(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "s") as store:
        with store.transaction(durable=True) as tx:
            tx.execute("INSERT INTO meta VALUES ('outer', '1')")
            with pytest.raises(RuntimeError), store.transaction() as inner:
                inner.execute("INSERT INTO meta VALUES ('inner', '1')")
                raise RuntimeError("inner fails")
        assert store.get_meta("outer") == "1"
        assert store.get_meta("inner") is None
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.execute("INSERT INTO meta VALUES ('gone', '1')")
            raise RuntimeError("outer fails")
        assert store.get_meta("gone") is None


def test_migrations_apply_once_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    with StateStore.open(state_dir) as store:
        assert store.schema_version() == SCHEMA_VERSION
        applied = store.conn.execute("SELECT count(*) FROM schema_version").fetchone()[0]
        assert applied == SCHEMA_VERSION
        tables = {
            row[0]
            for row in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        assert {"secrets", "auth_streams", "auth_units", "keys", "blocks"} <= tables
    with StateStore.open(state_dir) as store:
        assert store.conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == applied
        store.conn.execute("INSERT INTO schema_version VALUES (999, 'future')")
    with pytest.raises(StoreError, match="newer"):
        StateStore.open(state_dir)


def test_keys_table_schema_has_the_design_columns(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "s") as store:
        columns = {row[1] for row in store.conn.execute("PRAGMA table_info(keys)")}
    assert {
        "key_id",
        "material",
        "block_id",
        "qber",
        "eps_sec",
        "eps_cor",
        "eps_auth",
        "eps_total",
        "simulated",
        "created",
        "consumer_slot",
        "state",
    } <= columns
    with StateStore.open(tmp_path / "s") as store, pytest.raises(sqlite3.IntegrityError):
        store.conn.execute(
            "INSERT INTO keys VALUES ('x', 'l', 1, 0, 8, NULL, 0, 0, 0, 0, 0, 0, 'now', "
            "'kms', 'lost')"
        )


def test_block_ids_are_never_reused_across_restarts(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    seen = []
    for _ in range(3):
        with StateStore.open(state_dir) as store:
            keys = KeyStore(store)
            seen += [keys.allocate_block("lab-1") for _ in range(3)]
    assert seen == list(range(1, 10))
    with StateStore.open(state_dir) as store:
        keys = KeyStore(store)
        with pytest.raises(StoreError, match="already used"):
            keys.adopt_block("lab-1", 4)
        keys.adopt_block("lab-1", 20)
        assert keys.allocate_block("lab-1") == 21


def test_key_life_pending_committed_delivered(tmp_path: Path) -> None:
    material = [secrets.token_bytes(32) for _ in range(3)]
    with StateStore.open(tmp_path / "s") as store:
        keys = KeyStore(store)
        block = keys.allocate_block("lab-1")
        keys.add_pending(block, [_key(block, i, m) for i, m in enumerate(material)])
        assert keys.block_state(block) is BlockState.PENDING
        assert [k.state for k in keys.list()] == [KeyState.PENDING] * 3
        assert keys.commit_block(block) == 3
        listed = keys.list(KeyState.COMMITTED, slot="kms")
        assert [k.key_id for k in listed] == ["k-1-0", "k-1-1", "k-1-2"]
        assert listed[0].eps_total == pytest.approx(1e-10 + 1e-15 + 3e-30)
        assert listed[0].simulated is True
        assert not hasattr(listed[0], "material")
        assert keys.material("k-1-1") == bytearray(material[1])
        keys.mark_delivered("k-1-1")
        assert keys.list(KeyState.DELIVERED)[0].key_id == "k-1-1"
        with pytest.raises(StoreError):
            keys.material("k-1-1")
        with pytest.raises(StoreError):
            keys.mark_delivered("k-1-1")
        with pytest.raises(StoreError, match="committed"):
            keys.abort_block(block)


def test_aborted_block_erases_its_keys(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "s") as store:
        keys = KeyStore(store)
        block = keys.allocate_block("lab-1")
        keys.add_pending(block, [_key(block, 0, secrets.token_bytes(16))])
        assert keys.abort_block(block) == 1
        assert keys.list() == []
        assert keys.block_state(block) is BlockState.ABORTED
        with pytest.raises(StoreError):
            keys.add_pending(block, [_key(block, 1, secrets.token_bytes(16))])


def test_erased_material_is_gone_from_the_database_and_the_wal(tmp_path: Path) -> None:
    """secure_delete zeroes freed cells and the checkpoint empties the WAL."""
    state_dir = tmp_path / "s"
    material = secrets.token_bytes(48)
    secret = secrets.token_bytes(40)
    with StateStore.open(state_dir) as store:
        keys = KeyStore(store)
        block = keys.allocate_block("lab-1")
        keys.add_pending(block, [_key(block, 0, material)])
        keys.commit_block(block)
        SecretStore(store).put("consumer:kms", "consumer", "id-1", secret)
        store.checkpoint()
        assert material in (state_dir / DB_NAME).read_bytes()
        keys.mark_delivered("k-1-0")
        assert SecretStore(store).delete("consumer:kms")
        for suffix in ("", "-wal"):
            path = Path(f"{state_dir / DB_NAME}{suffix}")
            data = path.read_bytes() if path.exists() else b""
            assert material not in data, suffix
            assert secret not in data, suffix


def test_reprs_never_show_material(tmp_path: Path) -> None:
    material = bytes(range(200, 232))
    key = _key(1, 0, material)
    assert material.hex() not in repr(key)
    assert repr(list(material)) not in repr(key)
    assert "material" not in repr(key)
