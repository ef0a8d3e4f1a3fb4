"""Two link engines in one process over a real loopback peer channel, each with its own
state store: identical keys at both ends, alarms abort whole blocks, peer loss and
restarts never leave a key at one end only."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from qkdd.link.alarms import AlarmEvent, AlarmKind
from qkdd.link.config import PeerConfig, ProtocolConfig
from qkdd.link.engine import EngineSettings, LinkEngine
from qkdd.link.events import KeysCommitted, LinkEvents
from qkdd.link.keys import BlockKeys
from qkdd.store import KeyState
from tests.authpair import LINK, End, bootstrap, open_end
from tests.linkmodel import ModelLink, ModelPostProcessing

# Small blocks that still give a positive finite-key length (5e5 sifted bits at
# η = 0.3, p_K = 0.5, e_d = 0.5 %).
PROTOCOL = ProtocolConfig(
    slot_rate_hz=1e7,
    frame_duration_s=0.1,
    block_pulses=20_000_000,
    p_key_basis=0.5,
)
MODEL = {"eta": 0.3, "p_key": 0.5, "misalignment": 0.005}


async def _random(n: int) -> bytearray:
    return bytearray(os.urandom(n))


@dataclass
class Node:
    end: End
    engine: LinkEngine
    alarms: list[AlarmEvent] = field(default_factory=list)
    committed: list[KeysCommitted] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def keys(self) -> list[tuple[str, bytes]]:
        ks = self.engine.keys.keys
        return [(m.key_id, bytes(ks.material(m.key_id))) for m in ks.list(KeyState.COMMITTED)]


def _node(
    state_dir: Path, role: str, peer: PeerConfig, model: ModelLink, protocol: ProtocolConfig
) -> Node:
    end = open_end(state_dir, role)
    events = LinkEvents()
    settings = EngineSettings(
        node_id=role, link=LINK, role=role, protocol=protocol, peer=peer, simulated=True
    )
    engine = LinkEngine(
        settings,
        session=end.session,
        keys=BlockKeys(end.store, end.session, link=LINK, slots=peer.consumer_slots),
        post=ModelPostProcessing(),
        random_bytes=_random,
        transmitter=model.transmitter if role == "alice" else None,
        receiver=model.receiver if role == "bob" else None,
        events=events,
    )
    node = Node(end, engine)
    events.on_alarm.append(node.alarms.append)
    events.on_keys.append(node.committed.append)
    return node


@dataclass
class Link:
    alice: Node
    bob: Node
    model: ModelLink
    dirs: tuple[Path, Path]
    port: int

    async def stop(self) -> None:
        for node in (self.alice, self.bob):
            node.engine.request_stop()
        for node in (self.alice, self.bob):
            if node.task is not None:
                await asyncio.wait_for(node.task, 10)


def _peers(port: int) -> tuple[PeerConfig, PeerConfig]:
    fast = {"backoff_initial_s": 0.02, "backoff_max_s": 0.2, "receive_timeout_s": 5.0}
    return (
        PeerConfig(listen=True, port=port, **fast),  # type: ignore[arg-type]
        PeerConfig(listen=False, port=port, **fast),  # type: ignore[arg-type]
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def link(
    tmp_path: Path, protocol: ProtocolConfig = PROTOCOL, **model_args: object
) -> AsyncIterator[Link]:
    dirs = bootstrap(tmp_path, units=2048)
    model = ModelLink(**{**MODEL, **model_args})  # type: ignore[arg-type]
    port = _free_port()
    pa, pb = _peers(port)
    ln = Link(
        _node(dirs[0], "alice", pa, model, protocol),
        _node(dirs[1], "bob", pb, model, protocol),
        model,
        dirs,
        port,
    )
    ln.alice.task = asyncio.create_task(ln.alice.engine.run())
    ln.bob.task = asyncio.create_task(ln.bob.engine.run())
    try:
        yield ln
    finally:
        for node in (ln.alice, ln.bob):
            node.engine.request_stop()
        for node in (ln.alice, ln.bob):
            if node.task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(node.task, 10)
            node.end.close()


async def _until(cond: Callable[[], bool], within_s: float = 60) -> None:
    """Poll a condition on engine counters (they have no event of their own)."""
    async with asyncio.timeout(within_s):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_two_ends_commit_identical_keys(tmp_path: Path) -> None:
    async with link(tmp_path) as ln:
        await _until(lambda: ln.bob.engine.blocks_committed >= 2)
        await ln.stop()
        ka, kb = ln.alice.keys(), ln.bob.keys()
        assert len(ka) > 20 and ka == kb
        assert len({k for k, _ in ka}) == len(ka)
        assert ln.alice.engine.keys_committed == len(ka) == ln.bob.engine.keys_committed
        assert [e.block_id for e in ln.alice.committed] == [e.block_id for e in ln.bob.committed]
        assert not any(a.kind is AlarmKind.QBER_HIGH for a in ln.alice.alarms + ln.bob.alarms)
