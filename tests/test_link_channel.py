"""The peer channel over real sockets, with a man in the middle that tampers, replays,
reorders and forges frames: every bad frame is dropped unprocessed and alarmed."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from qkdd.auth import HandshakeOffer
from qkdd.link.alarms import AlarmKind
from qkdd.link.channel import (
    ChannelAlarm,
    PeerAuthError,
    PeerChannel,
    PeerLost,
)
from qkdd.link.config import PeerConfig
from qkdd.link.messages import (
    PROTOCOL_VERSION,
    Abort,
    BlockStart,
    DetectionReport,
    Hello,
    SiftReply,
    TranscriptTag,
    Vote,
)
from tests.authpair import LINK, End, bootstrap, open_end

_LEN = struct.Struct(">I")

FrameHook = Callable[[bytes], list[bytes]]


@dataclass
class Proxy:
    """A TCP man in the middle between Bob (connecting) and Alice (listening)."""

    target_port: int
    bob_to_alice: FrameHook | None = None
    server: asyncio.Server | None = None
    seen: list[bytes] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.tasks.append(asyncio.create_task(self._pump(cr, sw, self.bob_to_alice)))
        self.tasks.append(asyncio.create_task(self._pump(sr, cw, None)))

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hook: FrameHook | None
    ) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                frame = await reader.readexactly(_LEN.unpack(head)[0])
                if hook is not None:
                    self.seen.append(frame)
                out = hook(frame) if hook is not None else [frame]
                for f in out:
                    writer.write(_LEN.pack(len(f)) + f)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def _hello_factory(role: str, end: End, protocol: dict[str, object]) -> Callable[..., Hello]:
    def make(offer: HandshakeOffer) -> Hello:
        return Hello(
            link=LINK,
            role=role,
            protocol_version=PROTOCOL_VERSION,
            secret_id=end.session.secret_id,
            consumers=["default"],
            protocol=protocol,
            index=offer.index,
            marks=offer.marks.as_dict(),
            simulated=True,
        )

    return make


def _check(role: str, protocol: dict[str, object]) -> Callable[[Hello], str | None]:
    def check(peer: Hello) -> str | None:
        if peer.role == role:
            return "same role at both ends"
        if peer.protocol != protocol:
            return "protocol parameters differ"
        return None

    return check


@dataclass
class Pair:
    alice: PeerChannel
    bob: PeerChannel
    ends: tuple[End, End]
    alarms: list[ChannelAlarm]
    proxy: Proxy | None


@contextlib.asynccontextmanager
async def pair(
    tmp_path: Path,
    hook: FrameHook | None = None,
    bob_protocol: dict[str, object] | None = None,
) -> AsyncIterator[Pair]:
    alice_dir, bob_dir = bootstrap(tmp_path)
    a_end, b_end = open_end(alice_dir, "alice"), open_end(bob_dir, "bob")
    alarms: list[ChannelAlarm] = []
    proto = {"block_pulses": 1000}
    fast = {"backoff_initial_s": 0.02, "backoff_max_s": 0.1, "connect_timeout_s": 2.0}
    alice = PeerChannel(
        PeerConfig(listen=True, port=0, **fast),
        a_end.session,
        hello=_hello_factory("alice", a_end, proto),
        check_hello=_check("alice", proto),
        on_alarm=alarms.append,
    )
    await alice.start()
    proxy = None
    port = alice.port
    if hook is not None:
        proxy = Proxy(alice.port, hook)
        port = await proxy.start()
    bp = bob_protocol if bob_protocol is not None else proto
    bob = PeerChannel(
        PeerConfig(listen=False, port=port, **fast),
        b_end.session,
        hello=_hello_factory("bob", b_end, bp),
        check_hello=_check("bob", bp),
        on_alarm=alarms.append,
    )
    try:
        yield Pair(alice, bob, (a_end, b_end), alarms, proxy)
    finally:
        await bob.close()
        await alice.close()
        if proxy is not None:
            await proxy.close()
        a_end.close()
        b_end.close()


async def _connect(p: Pair, attempts: int | None = None) -> None:
    async with asyncio.timeout(10):
        await asyncio.gather(p.alice.connect(attempts), p.bob.connect(attempts))


def _report(block_id: int = 1, frame: int = 0) -> DetectionReport:
    return DetectionReport(
        block_id=block_id,
        frame=frame,
        slot=np.arange(5, dtype=np.int64),
        basis=np.zeros(5, np.uint8),
        test_bits=np.zeros(0, np.uint8),
    )


async def test_handshake_single_and_block_messages(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        await _connect(p)
        assert p.alice.peer_hello is not None and p.alice.peer_hello.role == "bob"
        await p.alice.send(BlockStart(block_id=1, frames=1, frame_slots=10))
        start = await p.bob.expect(BlockStart, within_s=5)
        assert start.block_id == 1
        for ch in (p.alice, p.bob):
            ch.session.begin_block(1)
        await p.bob.send(_report())
        report = await p.alice.expect(DetectionReport, within_s=5)
        assert report.slot.tolist() == [0, 1, 2, 3, 4]
        reply = SiftReply(
            block_id=1,
            frame=0,
            matched=np.ones(5, np.uint8),
            classes=np.zeros(5, np.uint8),
            test_bits=np.zeros(0, np.uint8),
            sent_per_class=np.array([7, 2, 1], np.int64),
        )
        await p.alice.send(reply)
        got = await p.bob.expect(SiftReply, within_s=5)
        assert got.sent_per_class.tolist() == [7, 2, 1]
        await p.alice.send(TranscriptTag(block_id=1))
        await p.bob.send(TranscriptTag(block_id=1))
        await p.bob.expect(TranscriptTag, within_s=5)
        await p.alice.expect(TranscriptTag, within_s=5)
        assert p.alice.session.block is not None and p.alice.session.block.rx_verified
        assert p.bob.session.block is not None and p.bob.session.block.rx_verified
        await p.bob.send(Vote(block_id=1, yes=True))
        assert (await p.alice.expect(Vote, within_s=5)).yes
        assert p.alarms == []


def _flip_after(n: int, offset: int = -1) -> FrameHook:
    """Flip one byte of the n-th frame Bob sends (counting from 0)."""
    count = [0]

    def hook(frame: bytes) -> list[bytes]:
        count[0] += 1
        if count[0] - 1 != n:
            return [frame]
        data = bytearray(frame)
        data[offset] ^= 0x01
        return [bytes(data)]

    return hook


def _replay(n: int) -> FrameHook:
    """Send Bob's n-th frame twice."""
    count = [0]

    def hook(frame: bytes) -> list[bytes]:
        count[0] += 1
        return [frame, frame] if count[0] - 1 == n else [frame]

    return hook


def _swap(n: int) -> FrameHook:
    """Hold Bob's n-th frame and send it after the next one."""
    state: dict[str, bytes] = {}
    count = [0]

    def hook(frame: bytes) -> list[bytes]:
        count[0] += 1
        if count[0] - 1 == n:
            state["held"] = frame
            return []
        if "held" in state:
            return [frame, state.pop("held")]
        return [frame]

    return hook


def _downgrade(n: int) -> FrameHook:
    """Relabel Bob's n-th frame as a transcript message (no tag checked at once)."""
    count = [0]

    def hook(frame: bytes) -> list[bytes]:
        count[0] += 1
        if count[0] - 1 != n:
            return [frame]
        return [bytes([4]) + frame[1:]]

    return hook


# Bob's frames: 0 hello, 1 verdict, 2 the first message after the handshake.
@pytest.mark.parametrize(
    ("name", "hook"),
    [
        ("tampered body", _flip_after(2)),
        ("tampered tag", _flip_after(2, offset=3)),
        ("replayed", _replay(2)),
        ("reordered", _swap(2)),
        ("downgraded to transcript", _downgrade(2)),
    ],
)
async def test_bad_frames_are_dropped_and_alarmed(
    tmp_path: Path, name: str, hook: FrameHook
) -> None:
    async with pair(tmp_path, hook) as p:
        await _connect(p)
        await p.bob.send(Vote(block_id=1, yes=True))
        await p.bob.send(Abort(block_id=1, reason="second"))
        received: list[object] = []
        with pytest.raises(PeerAuthError):
            async with asyncio.timeout(5):
                while True:
                    received.append(await p.alice.receive(within_s=5))
        # Nothing bad was processed: at most the untouched frames before the bad one.
        if name in ("replayed",):
            assert [type(m) for m in received] == [Vote]
        else:
            assert received == []
        assert [a.kind for a in p.alarms] == [AlarmKind.AUTH_FAILURE]
        assert not p.alice.connected


async def test_tampered_report_fails_before_use(tmp_path: Path) -> None:
    """A detection report altered in flight never reaches Alice's engine."""
    async with pair(tmp_path, _flip_after(3)) as p:
        await _connect(p)
        await p.alice.send(BlockStart(block_id=1, frames=1, frame_slots=10))
        await p.bob.expect(BlockStart, within_s=5)
        for ch in (p.alice, p.bob):
            ch.session.begin_block(1)
        await p.bob.send(Vote(block_id=1, yes=True))  # frame 2: untouched
        await p.bob.send(_report())  # frame 3: one bit flipped
        assert isinstance(await p.alice.receive(within_s=5), Vote)
        with pytest.raises(PeerAuthError):
            await p.alice.receive(within_s=5)
        assert p.alarms and p.alarms[0].kind is AlarmKind.AUTH_FAILURE


async def test_tampered_transcript_message_caught_at_transcript_check(tmp_path: Path) -> None:
    """An untagged block message altered in flight is found by the transcript tag."""
    async with pair(tmp_path, _flip_after(2, offset=-2)) as p:
        await _connect(p)
        await p.alice.send(BlockStart(block_id=1, frames=1, frame_slots=10))
        await p.bob.expect(BlockStart, within_s=5)
        for ch in (p.alice, p.bob):
            ch.session.begin_block(1)
        reply = SiftReply(
            block_id=1,
            frame=0,
            matched=np.ones(5, np.uint8),
            classes=np.zeros(5, np.uint8),
            test_bits=np.zeros(0, np.uint8),
            sent_per_class=np.array([7, 2, 1], np.int64),
        )
        await p.bob.send(reply)  # frame 2: its last array byte altered
        await p.bob.send(TranscriptTag(block_id=1))
        altered = await p.alice.expect(SiftReply, within_s=5)
        assert altered.sent_per_class.tolist() != [7, 2, 1]
        with pytest.raises(PeerAuthError):
            await p.alice.receive(within_s=5)
        block = p.alice.session.block
        assert block is None or not block.rx_verified
        assert [a.kind for a in p.alarms] == [AlarmKind.AUTH_FAILURE]


async def test_reconnect_after_teardown_and_fresh_handshake(tmp_path: Path) -> None:
    async with pair(tmp_path, _flip_after(2)) as p:
        await _connect(p)
        await p.bob.send(Vote(block_id=1, yes=True))
        with pytest.raises(PeerAuthError):
            await p.alice.receive(within_s=5)
        # Both ends reconnect; the burnt units are skipped in the new handshake.
        await _connect(p)
        await p.bob.send(Vote(block_id=2, yes=True))
        assert (await p.alice.expect(Vote, within_s=5)).block_id == 2
        assert p.alice.connections == 2


async def test_parameter_mismatch_is_refused_with_reason(tmp_path: Path) -> None:
    async with pair(tmp_path, bob_protocol={"block_pulses": 2000}) as p:
        results = await asyncio.gather(
            p.alice.connect(attempts=2), p.bob.connect(attempts=2), return_exceptions=True
        )
        assert all(isinstance(r, PeerLost) for r in results)
        assert any("protocol parameters differ" in str(r) for r in results)


async def test_peer_lost_on_close(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        await _connect(p)
        await p.bob.drop("test")
        with pytest.raises(PeerLost):
            await p.alice.receive(within_s=5)
        with pytest.raises(PeerLost):
            await p.alice.receive(within_s=5)
        assert p.alarms == []
