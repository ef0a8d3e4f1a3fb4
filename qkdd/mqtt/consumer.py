"""The reference key consumer, as a library: unseal, de-duplicate, store, acknowledge, hand over.

For each key message on ``…/links/<link>/keys/<slot>``:

1. open it with the slot key derived from the consumer secret (a key sealed by
   anyone without the secret fails here and is dropped, never acknowledged);
2. store it durably, unless its id was ever seen before: the consumer's store keeps a
   row for every id it received (the row is the tombstone once the key is handed
   over and its bits erased), so a republished duplicate is recognised forever;
3. acknowledge it (also a duplicate: the daemon may have missed the first
   acknowledgement) with the tag of ``qkdd.mqtt.sealing``;
4. hand a new key to the sink (file, FIFO, stdout or a callback), then erase its bits.

A key stored but not yet handed over (a crash in between) is handed over on the next
start. ``qkdd consume -c CONSUMER.toml`` runs :class:`KeyConsumer` with a line sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import stat
import sys
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from qkdd.logging import get_logger
from qkdd.mqtt.client import IN_FLIGHT, broker_session, keep_connected, link_topic
from qkdd.mqtt.config import MqttConfig
from qkdd.mqtt.messages import AckMessage, PlaintextKeyMessage, SealedKeyMessage, now_utc
from qkdd.mqtt.sealing import SealingError, SlotKey
from qkdd.store.db import ensure_private_dir, private_umask

_log = get_logger("consumer")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
STORE_NAME = "qkdd-consumer.sqlite3"


class ConsumerSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME, description="the consumer slot")
    node: str = Field(pattern=_NAME, description="the node whose daemon seals the keys")
    link: str = Field(pattern=_NAME)
    secret_id: str
    secret: SecretStr = Field(description="256-bit consumer secret, hex")
    state_dir: Path = Field(description="the consumer's own store (tombstones, pending keys)")
    plaintext: bool = Field(default=False, description="the daemon runs with plaintext_keys")


class OutputSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["stdout", "file", "fifo", "none"] = "stdout"
    path: Path | None = None


class ConsumerConfig(BaseModel):
    """A consumer file (``qkdd consumer add`` writes it; mode 0600: it holds the secret)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    consumer: ConsumerSection
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    output: OutputSection = Field(default_factory=OutputSection)

    def secret_bytes(self) -> bytearray:
        try:
            raw = bytearray.fromhex(self.consumer.secret.get_secret_value())
        except ValueError:
            raise ValueError("consumer.secret is not hex") from None
        if len(raw) != 32:
            raise ValueError("consumer.secret is not 256 bits")
        return raw


class ConsumerConfigError(Exception):
    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


def load_consumer_config(path: Path | str) -> ConsumerConfig:
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConsumerConfigError(file, "no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConsumerConfigError(file, f"cannot read: {exc}") from None
    if stat.S_IMODE(file.stat().st_mode) & 0o077:
        _log.warning("consumer file readable by others; it holds a secret", config_path=str(file))
    section = data.get("consumer")
    if isinstance(section, dict) and isinstance(section.get("state_dir"), str):
        state_dir = Path(section["state_dir"])
        if not state_dir.is_absolute():
            section["state_dir"] = str((file.parent / state_dir).resolve())
    try:
        config = ConsumerConfig.model_validate(data)
        config.secret_bytes()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConsumerConfigError(file, problems) from None
    except ValueError as exc:
        raise ConsumerConfigError(file, str(exc)) from None
    return config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_consumer_file(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    """Write a consumer file (mode 0600, created exclusively: never overwrites)."""
    lines = ["# qkdd consumer file: holds a consumer secret. Keep it 0600, never share it."]
    for name, values in sections.items():
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict) and v is not None}
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        for sub, table in values.items():
            if isinstance(table, dict):
                lines.append(f"\n[{name}.{sub}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
        out.flush()
        os.fsync(out.fileno())


@dataclass
class ReceivedKey:
    """A key as the consumer got it; ``material`` never shows in a repr."""

    key_id: str
    link: str
    slot: str
    bits: int
    block: int
    qber: float
    eps_total: float
    simulated: bool
    created: str
    material: bytearray = field(repr=False)

    def wipe(self) -> None:
        self.material[:] = bytes(len(self.material))

    def to_json_line(self) -> str:
        return json.dumps(
            {
                "key_id": self.key_id,
                "link": self.link,
                "slot": self.slot,
                "bits": self.bits,
                "block": self.block,
                "qber": self.qber,
                "eps_total": self.eps_total,
                "simulated": self.simulated,
                "created": self.created,
                "key_hex": self.material.hex(),
            },
            separators=(",", ":"),
        )


class ConsumerStore:
    """The consumer's SQLite store: one row per key id ever received (UNIQUE); the bits
    are erased (``secure_delete``, WAL checkpoint) once handed over, the row stays as
    the tombstone."""

    def __init__(self, state_dir: Path) -> None:
        directory = ensure_private_dir(Path(state_dir))
        self.path = directory / STORE_NAME
        with private_umask():
            self._conn = sqlite3.connect(self.path, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL").fetchone()
            self._conn.execute("PRAGMA secure_delete=ON")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS received ("
                " key_id TEXT PRIMARY KEY, link TEXT NOT NULL, slot TEXT NOT NULL,"
                " bits INTEGER NOT NULL, block INTEGER NOT NULL, qber REAL NOT NULL,"
                " eps_total REAL NOT NULL, simulated INTEGER NOT NULL, created TEXT NOT NULL,"
                " material BLOB, state TEXT NOT NULL CHECK (state IN ('stored', 'handed')),"
                " received TEXT NOT NULL, handed TEXT)"
            )
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    def __repr__(self) -> str:
        return f"ConsumerStore({str(self.path)!r})"

    def close(self) -> None:
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self._conn.close()

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction; ``durable=False`` commits without an fsync (the commit
        survives a crash of this process, not of the machine, until the next
        checkpoint or durable commit)."""
        if not durable:
            self._conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        finally:
            if not durable:
                self._conn.execute("PRAGMA synchronous=FULL")

    def insert_new(self, keys: list[ReceivedKey]) -> list[str]:
        """Store, in one durable transaction, the keys whose ids were never seen; returns
        their ids (a repeated id within ``keys`` counts once)."""
        added = []
        with self._tx() as tx:
            for key in keys:
                cur = tx.execute(
                    "INSERT OR IGNORE INTO received (key_id, link, slot, bits, block, qber, "
                    "eps_total, simulated, created, material, state, received) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'stored', ?)",
                    (
                        key.key_id,
                        key.link,
                        key.slot,
                        key.bits,
                        key.block,
                        key.qber,
                        key.eps_total,
                        int(key.simulated),
                        key.created,
                        bytes(key.material),
                        now_utc(),
                    ),
                )
                if cur.rowcount == 1:
                    added.append(key.key_id)
        return added

    def insert_if_new(self, key: ReceivedKey) -> bool:
        """Store a key durably unless its id was ever seen; True if it was new."""
        return bool(self.insert_new([key]))

    def pending(self) -> list[ReceivedKey]:
        """Keys stored but not yet handed over, in arrival order."""
        rows = self._conn.execute(
            "SELECT key_id, link, slot, bits, block, qber, eps_total, simulated, created, "
            "material FROM received WHERE state = 'stored' ORDER BY rowid"
        ).fetchall()
        return [
            ReceivedKey(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], bytearray(r[9]))
            for r in rows
        ]

    def mark_handed(self, key_id: str, *, checkpoint: bool = True) -> None:
        """The key was handed over: erase its bits (the row stays as its tombstone).

        Committed without an fsync: it survives a crash of the consumer at once, and
        reaches the disk with the checkpoint (``checkpoint=True``, or the caller's
        after a pass). An fsync per key (~5 ms) capped delivery at ~200 keys/s; a
        machine crash within a pass now re-hands that pass's keys (same ids)."""
        with self._tx(durable=False) as tx:
            tx.execute(
                "UPDATE received SET state = 'handed', material = NULL, handed = ? "
                "WHERE key_id = ?",
                (now_utc(), key_id),
            )
        if checkpoint:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Truncate the WAL so erased bits do not linger there."""
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def ids(self) -> list[str]:
        """Every key id ever received, in arrival order (each exactly once)."""
        return [str(r[0]) for r in self._conn.execute("SELECT key_id FROM received ORDER BY rowid")]


Sink = Callable[[ReceivedKey], Awaitable[None]]


class LineSink:
    """Hands keys over as JSON lines (with ``key_hex``) to stdout, a file (appended,
    fsynced, 0600) or a FIFO (opened per key, so a reader may come and go)."""

    def __init__(self, kind: str, path: Path | None = None) -> None:
        if kind in ("file", "fifo") and path is None:
            raise ValueError(f"output kind {kind} needs a path")
        self.kind, self.path = kind, path

    async def __call__(self, key: ReceivedKey) -> None:
        line = key.to_json_line() + "\n"
        try:
            if self.kind == "stdout":
                sys.stdout.write(line)
                sys.stdout.flush()
            elif self.kind in ("file", "fifo"):
                await asyncio.to_thread(self._write, line)
        finally:
            line = ""

    def _write(self, line: str) -> None:
        assert self.path is not None
        flags = os.O_WRONLY | (os.O_APPEND | os.O_CREAT if self.kind == "file" else 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            os.write(fd, line.encode())
            if self.kind == "file":
                os.fsync(fd)
        finally:
            os.close(fd)


#: How long the SUBACK of a resumed session may take (see KeyConsumer._session).
SUBSCRIBE_TIMEOUT_S = 300.0


class KeyConsumer:
    """Receives one slot's keys from one daemon; see the module docstring."""

    def __init__(
        self, config: ConsumerConfig, sink: Sink | None = None, *, handover_retry_s: float = 5.0
    ) -> None:
        self.config = config
        self.handover_retry_s = handover_retry_s
        section = config.consumer
        self.slot, self.link, self.node = section.name, section.link, section.node
        secret = config.secret_bytes()
        try:
            self.slot_key = SlotKey.derive(secret, self.link, self.slot)
        finally:
            secret[:] = bytes(len(secret))
        self.topic = f"{link_topic(config.mqtt, self.node, self.link)}/keys/{self.slot}"
        self.store = ConsumerStore(section.state_dir)
        if sink is None:
            sink = LineSink(config.output.kind, config.output.path)
        self.sink = sink
        self._stop = asyncio.Event()
        self.connected = asyncio.Event()
        self.rejected = 0
        self.duplicates = 0
        self.received = 0

    def __repr__(self) -> str:
        return f"KeyConsumer({self.topic!r})"

    async def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.store.close()

    async def run(self) -> None:
        """Hand over what a previous run stored, then receive until :meth:`stop`."""
        await self._hand_over_pending()
        await keep_connected(self._session, stop=self._stop, connected=self.connected)

    async def _session(self) -> None:
        identifier = (
            self.config.mqtt.client_id or f"qkdd-consumer-{self.node}-{self.link}-{self.slot}"
        )
        # A persistent session: keys published while this consumer is away wait at
        # the broker (the daemon republishes them anyway).
        async with broker_session(self.config.mqtt, identifier, persistent_session=True) as client:
            # A resumed session first receives everything the broker kept for it (after
            # a long absence, thousands of keys) and the SUBACK comes after that: the
            # default 15 s operation timeout would drop the connection and start over.
            await client.subscribe(self.topic, qos=1, timeout=SUBSCRIBE_TIMEOUT_S)
            self.connected.set()
            stop = asyncio.create_task(self._stop.wait())
            try:
                messages = aiomqtt_messages(client)
                while True:
                    nxt = asyncio.create_task(anext(messages))
                    done: set[asyncio.Task[Any]] = set()
                    while not done:
                        done, _ = await asyncio.wait(
                            {nxt, stop},
                            timeout=self.handover_retry_s,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        if not done:  # quiet: retry keys whose hand-over failed
                            await self._hand_over_pending()
                    if stop in done:
                        nxt.cancel()
                        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                            await nxt
                        return
                    batch = [nxt.result()]
                    while len(client.messages) and len(batch) < 256:
                        batch.append(await anext(messages))
                    await self.handle(
                        client, [m.payload for m in batch if isinstance(m.payload, bytes)]
                    )
            finally:
                stop.cancel()
                self.connected.clear()

    async def handle(self, client: aiomqtt.Client, payloads: list[bytes]) -> None:
        """Key messages that arrived together: open, store the new ones (one durable
        transaction), acknowledge each (duplicates too), hand over."""
        keys = []
        for payload in payloads:
            key = self._open(payload)
            if key is None:
                self.rejected += 1
            else:
                keys.append(key)
        self.received += len(keys)
        try:
            new = self.store.insert_new(keys)
            self.duplicates += len(keys) - len(new)
            acks = [
                AckMessage(key_id=k.key_id, tag=self.slot_key.ack_tag(k.key_id)).to_json()
                for k in keys
            ]
            for start in range(0, len(acks), IN_FLIGHT):
                await asyncio.gather(
                    *(
                        client.publish(f"{self.topic}/ack", a, qos=1)
                        for a in acks[start : start + IN_FLIGHT]
                    )
                )
        finally:
            for key in keys:
                key.wipe()
        # Also after duplicates: a key stored earlier whose hand-over failed (or was cut
        # short by a lost connection) goes out now, from the store.
        await self._hand_over_pending()

    def _open(self, payload: bytes) -> ReceivedKey | None:
        try:
            if self.config.consumer.plaintext:
                plain = PlaintextKeyMessage.model_validate_json(payload)
                material = bytearray.fromhex(plain.key_hex)
                meta: SealedKeyMessage | PlaintextKeyMessage = plain
                if plain.link != self.link or plain.slot != self.slot:
                    raise SealingError("key for another link or slot")
            else:
                sealed = SealedKeyMessage.model_validate_json(payload)
                material = self.slot_key.open(sealed)
                meta = sealed
        except (ValidationError, SealingError, ValueError) as exc:
            _log.warning("key message rejected", error=str(exc).splitlines()[0])
            return None
        return ReceivedKey(
            key_id=meta.key_id,
            link=meta.link,
            slot=meta.slot,
            bits=meta.bits,
            block=meta.block,
            qber=meta.qber,
            eps_total=meta.eps_total,
            simulated=meta.simulated,
            created=meta.created,
            material=material,
        )

    async def _hand_over_pending(self) -> None:
        """Hand every stored key to the sink, then erase it; a sink that fails (a FIFO
        without a reader, a full disk) leaves the key stored for the next attempt."""
        handed = 0
        try:
            for key in self.store.pending():
                try:
                    await self.sink(key)
                except OSError as exc:
                    _log.warning(
                        "hand-over failed; the key stays stored", key_id=key.key_id, error=str(exc)
                    )
                    return
                finally:
                    key.wipe()
                # Marked one by one (a consumer crash re-hands at most one key),
                # made durable by the one checkpoint after the pass.
                self.store.mark_handed(key.key_id, checkpoint=False)
                handed += 1
        finally:
            if handed:
                self.store.checkpoint()


def aiomqtt_messages(client: aiomqtt.Client) -> Any:
    """The client's message iterator (an async iterator of ``aiomqtt.Message``)."""
    return aiter(client.messages)
