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
from typing import Any

import pytest

from qkdd.link.alarms import AlarmEvent, AlarmKind
from qkdd.link.config import PeerConfig, ProtocolConfig
from qkdd.link.engine import EngineSettings, LinkEngine
from qkdd.link.events import KeysCommitted, LinkEvents
from qkdd.link.keys import BlockKeys
from qkdd.link.states import LinkState
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


async def _until(cond: Callable[[], bool], within_s: float = 180) -> None:
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
        assert ln.model.calibrated_delay_ps == pytest.approx(7.4e5)
        assert len({k for k, _ in ka}) == len(ka)
        assert ln.alice.engine.keys_committed == len(ka) == ln.bob.engine.keys_committed
        assert [e.block_id for e in ln.alice.committed] == [e.block_id for e in ln.bob.committed]
        assert not any(a.kind is AlarmKind.QBER_HIGH for a in ln.alice.alarms + ln.bob.alarms)


def _committed_blocks(node: Node) -> list[int]:
    from qkdd.store import BlockState

    return node.engine.keys.blocks_in(BlockState.COMMITTED)


async def test_intercept_resend_alarms_both_ends_and_nothing_attacked_is_committed(
    tmp_path: Path,
) -> None:
    async with link(tmp_path) as ln:
        await _until(lambda: ln.bob.engine.blocks_committed >= 1)
        ln.model.intercept_resend = True
        attacked_from = ln.alice.engine.block_id or 0
        await _until(
            lambda: all(
                any(a.kind is AlarmKind.QBER_HIGH and a.active for a in n.alarms)
                for n in (ln.alice, ln.bob)
            )
        )
        before_off = set(_committed_blocks(ln.alice))
        assert all(b < attacked_from for b in before_off)
        assert ln.alice.engine.alarm_test.alarm_active
        ln.model.intercept_resend = False
        await _until(lambda: ln.bob.engine.blocks_committed >= 2)
        await ln.stop()
        for node in (ln.alice, ln.bob):
            cleared = [a for a in node.alarms if a.kind is AlarmKind.QBER_HIGH and not a.active]
            assert cleared, "the alarm clears after a clean window"
        assert _committed_blocks(ln.alice) == _committed_blocks(ln.bob)
        assert ln.alice.keys() == ln.bob.keys()
        assert not set(_committed_blocks(ln.alice)) & set(range(attacked_from, attacked_from + 2))


async def test_blinding_suspected_at_both_ends(tmp_path: Path) -> None:
    async with link(tmp_path, bias_monitor_a=3e-3) as ln:
        await _until(
            lambda: all(
                any(a.kind is AlarmKind.BLINDING_SUSPECT for a in n.alarms)
                for n in (ln.alice, ln.bob)
            ),
            within_s=20,
        )
        await ln.stop()
        assert _committed_blocks(ln.alice) == _committed_blocks(ln.bob) == []


async def test_a_committed_block_clears_block_level_alarms(tmp_path: Path) -> None:
    """key_length_zero, blinding_suspect and auth_failure judged one block: the next block
    committed clears them (status, MQTT and metrics stop showing them)."""
    async with link(tmp_path) as ln:
        for node in (ln.alice, ln.bob):  # as if an earlier block had ended with ℓ ≤ 0
            node.engine._raise_alarm(AlarmKind.KEY_LENGTH_ZERO, {"block_id": 0})
        await _until(lambda: ln.bob.engine.blocks_committed >= 1)
        await _until(lambda: ln.alice.engine.blocks_committed >= 1)
        await ln.stop()
        for node in (ln.alice, ln.bob):
            assert AlarmKind.KEY_LENGTH_ZERO not in node.engine.active_alarms
            kinds = [(a.kind, a.active) for a in node.alarms]
            assert kinds.index((AlarmKind.KEY_LENGTH_ZERO, False)) > kinds.index(
                (AlarmKind.KEY_LENGTH_ZERO, True)
            )
            assert (AlarmKind.BLINDING_SUSPECT, False) not in kinds  # only raised ones clear


def _drop_before(node: Node, kind: str) -> None:
    """Cut the connection when this end is about to send its first ``kind``."""
    channel = node.engine.channel
    original = channel.send
    fired = [False]

    async def send(message: Any) -> None:
        if message.kind == kind and not fired[0]:
            fired[0] = True
            await channel.drop(f"test: cut before {kind}")
            from qkdd.link.channel import PeerLost

            raise PeerLost(f"cut before {kind}")
        await original(message)

    channel.send = send  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("role", "kind"),
    [
        ("alice", "decision"),
        pytest.param("alice", "prepare", marks=pytest.mark.slow),
        pytest.param("bob", "vote", marks=pytest.mark.slow),
        pytest.param("alice", "sift-reply", marks=pytest.mark.slow),
        pytest.param("bob", "transcript-tag", marks=pytest.mark.slow),
    ],
)
async def test_connection_cut_at_a_commit_step_leaves_no_key_at_one_end(
    tmp_path: Path, role: str, kind: str
) -> None:
    async with link(tmp_path) as ln:
        _drop_before(ln.alice if role == "alice" else ln.bob, kind)
        await _until(
            lambda: ln.bob.engine.blocks_committed >= 1 and ln.alice.engine.blocks_committed >= 1
        )
        await _until(lambda: _committed_blocks(ln.alice) == _committed_blocks(ln.bob))
        await ln.stop()
        assert _committed_blocks(ln.alice) == _committed_blocks(ln.bob)
        assert ln.alice.keys() == ln.bob.keys()
        assert any(a.kind is AlarmKind.PEER_LOST for a in ln.alice.alarms + ln.bob.alarms)
        from qkdd.store import BlockState

        for node in (ln.alice, ln.bob):
            assert node.engine.keys.blocks_in(BlockState.PENDING, BlockState.OPEN) == []


# -- issue 13: warnings, faults, restarts ---------------------------------------------------


def _active(node: Node, kind: AlarmKind) -> bool:
    return any(a.kind is kind and a.active for a in node.alarms)


def _no_partial_blocks(ln: Link) -> None:
    """No key at one end only: a block Alice committed is committed at Bob, or pending
    there (he voted yes and was stopped before her decision arrived; he asks on his next
    connect); nothing is left open; the keys of blocks committed at both are identical."""
    from qkdd.store import BlockState

    a, b = set(_committed_blocks(ln.alice)), set(_committed_blocks(ln.bob))
    assert b <= a
    assert a - b == set(ln.bob.engine.keys.blocks_in(BlockState.PENDING))
    assert ln.alice.engine.keys.blocks_in(BlockState.PENDING, BlockState.OPEN) == []
    assert ln.bob.engine.keys.blocks_in(BlockState.OPEN) == []

    def keys(node: Node) -> list[tuple[str, bytes]]:
        ks = node.engine.keys.keys
        return [
            (m.key_id, bytes(ks.material(m.key_id)))
            for m in ks.list(KeyState.COMMITTED)
            if m.block_id in b
        ]

    assert keys(ln.alice) == keys(ln.bob)


def _drain(model: ModelLink) -> None:
    """Frames in flight are lost when Bob's receiver restarts (as with the real fibre)."""
    while not model.queue.empty():
        model.queue.get_nowait()


async def test_detector_timing_shift_warns_and_the_link_goes_on(tmp_path: Path) -> None:
    async with link(tmp_path) as ln:
        await _until(lambda: ln.bob.engine.blocks_committed >= 1)
        period = 1e12 / PROTOCOL.slot_rate_hz
        ln.model.detector_shift_ps = {1: 0.0, 2: 0.25 * period}  # one detector moves
        await _until(lambda: _active(ln.bob, AlarmKind.TIMING_SHIFT))
        committed = ln.bob.engine.blocks_committed
        # A warning: blocks still commit (the window tracks the common peak meanwhile).
        await _until(lambda: ln.bob.engine.blocks_committed > committed)
        event = next(a for a in ln.bob.alarms if a.kind is AlarmKind.TIMING_SHIFT)
        assert event.level.value == "warning"
        assert any(k.startswith("detector_2") for k in event.values)
        ln.model.detector_shift_ps = {1: 0.0, 2: 0.0}
        await _until(
            lambda: any(a.kind is AlarmKind.TIMING_SHIFT and not a.active for a in ln.bob.alarms)
        )
        await ln.stop()
        _no_partial_blocks(ln)
        assert not any(a.kind is AlarmKind.DEVICE_FAULT for a in ln.bob.alarms)


async def test_timing_beyond_bounds_recalibrates_through_a_fault(tmp_path: Path) -> None:
    async with link(tmp_path) as ln:
        await _until(lambda: ln.bob.engine.blocks_committed >= 1)
        before = ln.model.calibrated_delay_ps
        assert before is not None
        period = 1e12 / PROTOCOL.slot_rate_hz
        ln.model.detector_shift_ps = {1: 0.35 * period, 2: 0.35 * period}
        await _until(lambda: _active(ln.bob, AlarmKind.DEVICE_FAULT))
        assert _active(ln.bob, AlarmKind.TIMING_SHIFT)
        committed = ln.bob.engine.blocks_committed
        await _until(lambda: ln.bob.engine.blocks_committed > committed, within_s=120)
        # Recalibrated on the moved peak.
        assert ln.model.calibrated_delay_ps == pytest.approx(
            before + 0.35 * period, abs=0.01 * period
        )
        await ln.stop()
        _no_partial_blocks(ln)


@pytest.mark.slow  # waits out instrument timeouts / several blocks
async def test_silent_instrument_faults_retries_with_backoff_and_resumes(tmp_path: Path) -> None:
    states: list[tuple[str, str]] = []
    async with link(tmp_path) as ln:
        ln.bob.engine.events.on_transition.append(
            lambda t: states.append((str(t.target), t.reason))
        )
        await _until(lambda: ln.bob.engine.blocks_committed >= 1)
        ln.model.silent = True

        def faults() -> int:
            return sum(a.kind is AlarmKind.DEVICE_FAULT and a.active for a in ln.bob.alarms)

        # Silent through at least two attempts (the first in a block, the next while
        # calibrating after the back-off).
        await _until(lambda: faults() >= 2, within_s=120)
        retries = [
            a.values["retry_in_s"]
            for a in ln.bob.alarms
            if a.kind is AlarmKind.DEVICE_FAULT and "retry_in_s" in a.values
        ]
        assert retries[1] > retries[0]  # back-off grows
        assert "FAULT" in {s for s, _ in states}
        committed = ln.bob.engine.blocks_committed
        ln.model.silent = False
        await _until(lambda: ln.bob.engine.blocks_committed > committed, within_s=120)
        assert any(a.kind is AlarmKind.DEVICE_FAULT and not a.active for a in ln.bob.alarms)
        await ln.stop()
        _no_partial_blocks(ln)


@pytest.mark.slow  # waits out instrument timeouts / several blocks
async def test_block_costing_more_authentication_than_it_yields_warns(tmp_path: Path) -> None:
    from qkdd.auth.economics import ReplenishmentRule

    async with link(tmp_path) as ln:
        await _until(lambda: ln.bob.engine.blocks_committed >= 1)
        keys_before = ln.bob.engine.keys_committed
        # Alice's levels decide the refill: a floor far above them takes every bit.
        ln.alice.engine.session.rule = ReplenishmentRule(floor_units=10**7)
        await _until(
            lambda: all(_active(n, AlarmKind.NET_KEY_NEGATIVE) for n in (ln.alice, ln.bob))
        )
        event = next(a for a in ln.alice.alarms if a.kind is AlarmKind.NET_KEY_NEGATIVE)
        assert event.values["authentication_bits"] >= event.values["secret_bits"]
        assert ln.bob.engine.keys_committed == keys_before  # no key from that block
        ln.alice.engine.session.rule = ReplenishmentRule()
        await _until(
            lambda: all(
                any(a.kind is AlarmKind.NET_KEY_NEGATIVE and not a.active for a in n.alarms)
                for n in (ln.alice, ln.bob)
            ),
            within_s=120,
        )
        await ln.stop()
        _no_partial_blocks(ln)


async def test_authentication_units_are_never_reused_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collections import defaultdict

    from qkdd.store import StreamStore
    from tests.authpair import Uses, assert_no_unit_used_twice

    uses: Uses = defaultdict(list)
    original = StreamStore.read_units

    def recording(self: StreamStore, direction: Any, start: int, count: int) -> bytearray:
        uses[(str(self.store.state_dir), direction)].append((start, count))
        return original(self, direction, start, count)

    monkeypatch.setattr(StreamStore, "read_units", recording)
    async with link(tmp_path) as ln:
        await _until(lambda: ln.bob.engine.blocks_committed >= 1)
        # Bob's node stops and starts again on the same state directory.
        ln.bob.engine.request_stop()
        assert ln.bob.task is not None
        await asyncio.wait_for(ln.bob.task, 20)
        ln.bob.end.close()
        before = {k: list(v) for k, v in uses.items()}
        # Alice notices and stops sending; what she sent meanwhile is lost with Bob.
        await _until(lambda: ln.alice.engine.state is LinkState.CONNECTING)
        _drain(ln.model)
        ln.bob = _node(ln.dirs[1], "bob", _peers(ln.port)[1], ln.model, PROTOCOL)
        ln.bob.task = asyncio.create_task(ln.bob.engine.run())
        await _until(lambda: ln.bob.engine.blocks_committed >= 1, within_s=120)
        await ln.stop()
        _no_partial_blocks(ln)
    assert_no_unit_used_twice(uses)
    for key, ranges in uses.items():
        earlier = {u for s, c in before.get(key, []) for u in range(s, s + c)}
        later = {u for s, c in ranges[len(before.get(key, [])) :] for u in range(s, s + c)}
        assert later, key  # both directions, both ends used units after the restart
        assert not earlier & later, key
