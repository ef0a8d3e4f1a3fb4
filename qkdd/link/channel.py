"""The peer channel: TCP between the two ends of a link, every frame authenticated.

A frame on the stream is ``u32 length ‖ mode ‖ tag(16) ‖ body``, where ``body`` is
:func:`qkdd.link.wire.encode_body` of a :class:`~qkdd.link.messages.LinkMessage`
(it carries the sequence number) and ``mode`` the message kind's
:class:`~qkdd.link.messages.AuthMode`. Sequence numbers start at 0 in each
direction of each connection; the receiver accepts only the next one, checks
that the mode is the one the kind declares, and verifies exactly as DESIGN §4
says (see :mod:`qkdd.link.messages`). Anything else — malformed, unknown,
replayed, reordered, wrongly tagged — is dropped unprocessed, logged, reported
as ``auth_failure`` and the connection is torn down, so both ends abandon the
block in progress and meet again in a fresh handshake.

Either end may listen. The connecting end retries with exponential back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from qkdd.auth import (
    TAG_BYTES,
    AuthError,
    AuthFailedError,
    AuthSession,
    HandshakeOffer,
    ResyncExhaustedError,
    StaleIndexError,
    StreamMarks,
)
from qkdd.link.alarms import AlarmKind
from qkdd.link.config import PeerConfig
from qkdd.link.messages import Abort, AuthMode, Hello, HelloVerdict, LinkMessage
from qkdd.link.wire import MAX_FRAME_BYTES, WireError, decode_body, encode_body
from qkdd.logging import get_logger

_LENGTH = struct.Struct(">I")
_PREFIX = struct.Struct(f">B{TAG_BYTES}s")
_NO_TAG = bytes(TAG_BYTES)
_HANDSHAKE_ROUNDS = 4

_log = get_logger("link.channel")

M = TypeVar("M", bound=LinkMessage)


class PeerLost(Exception):
    """The connection to the peer closed, timed out or was torn down."""


class PeerAuthError(PeerLost):
    """A frame failed the channel's checks; it was dropped and the connection torn down."""


class HandshakeRefused(PeerLost):
    """The ends disagree on the link's parameters (the reason says which)."""


class ProtocolViolation(PeerLost):
    """An authenticated message that the protocol does not expect at this point."""


@dataclass(frozen=True)
class ChannelAlarm:
    kind: AlarmKind
    reason: str


HelloFactory = Callable[[HandshakeOffer], Hello]
HelloCheck = Callable[[Hello], str | None]
AlarmSink = Callable[[ChannelAlarm], None]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.tx_seq = 0
        self.rx_seq = 0
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def close(self) -> None:
        self.writer.close()


class PeerChannel:
    """One end of the authenticated classical channel of a link."""

    def __init__(
        self,
        config: PeerConfig,
        session: AuthSession,
        *,
        hello: HelloFactory,
        check_hello: HelloCheck,
        on_alarm: AlarmSink | None = None,
    ) -> None:
        self.config = config
        self.session = session
        self._hello = hello
        self._check_hello = check_hello
        self._on_alarm = on_alarm
        self._server: asyncio.Server | None = None
        self._incoming: asyncio.Queue[_Connection] = asyncio.Queue()
        self._conn: _Connection | None = None
        self.peer_hello: Hello | None = None
        self.connections = 0
        self.dropped_frames = 0

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listening socket (listening end only)."""
        if self.config.listen and self._server is None:
            self._server = await asyncio.start_server(
                self._accepted, host=self.config.host, port=self.config.port
            )

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            return self.config.port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._incoming.put_nowait(_Connection(reader, writer))

    @property
    def connected(self) -> bool:
        return self._conn is not None and self.session.ready

    async def connect(self, attempts: int | None = None) -> Hello:
        """(Re)establish the connection and run the authenticated handshake, retrying
        with back-off (at most ``attempts`` times if given, then :class:`PeerLost`);
        returns the peer's hello. Raises :class:`~qkdd.auth.ResyncExhaustedError`
        when the secret is used up."""
        await self.drop("reconnecting")
        delay = self.config.backoff_initial_s
        tried = 0
        while True:
            tried += 1
            try:
                conn = await self._open()
                self._conn = conn
                hello = await self._handshake(conn)
            except ResyncExhaustedError:
                await self.drop("authentication exhausted")
                raise
            except (PeerLost, OSError, TimeoutError) as exc:
                await self.drop(f"connection attempt failed: {exc}")
                level = _log.error if isinstance(exc, HandshakeRefused) else _log.info
                level("peer not reachable", reason=str(exc), retry_in_s=round(delay, 3))
                if attempts is not None and tried >= attempts:
                    raise PeerLost(f"no connection after {tried} attempts: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.backoff_max_s)
                continue
            self.peer_hello = hello
            self.connections += 1
            _log.info("peer connected", peer=conn.peer, connections=self.connections)
            return hello

    async def _open(self) -> _Connection:
        if self.config.listen:
            return await self._incoming.get()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.config.host, self.config.port),
            self.config.connect_timeout_s,
        )
        return _Connection(reader, writer)

    async def drop(self, reason: str) -> None:
        """Close the current connection (the peer sees it lost)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            _log.info("peer connection closed", reason=reason)
            conn.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(conn.writer.wait_closed(), 2)

    async def close(self) -> None:
        await self.drop("channel closed")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        while not self._incoming.empty():
            self._incoming.get_nowait().close()

    # -- handshake --------------------------------------------------------------------

    async def _handshake(self, conn: _Connection) -> Hello:
        timeout = self.config.connect_timeout_s
        for _ in range(_HANDSHAKE_ROUNDS):
            offer = self.session.begin_handshake()
            await self.send(self._hello(offer))
            peer, body, tag = await self._read_hello(conn, timeout)
            verdict: HelloVerdict
            try:
                self.session.verify_handshake(body, peer.index, tag)
            except StaleIndexError as stale:
                verdict = HelloVerdict(accepted=False, stale_mark=stale.mark)
            except AuthFailedError as exc:
                raise self._reject(conn, f"handshake: {exc}") from None
            else:
                refusal = self._check_hello(peer)
                verdict = (
                    HelloVerdict(accepted=False, refusal=refusal)
                    if refusal
                    else HelloVerdict(accepted=True)
                )
            await self.send(verdict)
            answer = await self.receive(timeout, handshake=True)
            if not isinstance(answer, HelloVerdict):
                raise self._reject(conn, f"expected a hello verdict, got {answer.kind}")
            if verdict.refusal:
                raise HandshakeRefused(f"peer's parameters refused: {verdict.refusal}")
            if answer.refusal:
                raise HandshakeRefused(f"peer refused this end: {answer.refusal}")
            if answer.stale_mark is not None:
                self.session.skip_tx_to(answer.stale_mark)
            if verdict.accepted and answer.accepted:
                self.session.complete_handshake(StreamMarks.from_mapping(peer.marks))
                return peer
        raise PeerLost("handshake did not converge")

    async def _read_hello(self, conn: _Connection, within_s: float) -> tuple[Hello, bytes, bytes]:
        mode, tag, body = await self._read_frame(conn, within_s)
        seq, message = self._decode(conn, body)
        if not isinstance(message, Hello) or mode != AuthMode.HANDSHAKE:
            raise self._reject(conn, "expected the peer's hello")
        self._check_seq(conn, seq, message)
        return message, body, tag

    # -- frames -----------------------------------------------------------------------

    def _require(self) -> _Connection:
        if self._conn is None:
            raise PeerLost("not connected")
        return self._conn

    async def send(self, message: LinkMessage) -> None:
        """Encode, authenticate (as the kind declares) and send one message."""
        conn = self._require()
        body = encode_body(message, conn.tx_seq)
        tag = self._authenticate(message.auth, body)
        frame = _PREFIX.pack(int(message.auth), tag) + body
        if len(frame) > MAX_FRAME_BYTES:
            raise WireError(f"{message.kind}: frame too large")
        conn.tx_seq += 1
        try:
            conn.writer.write(_LENGTH.pack(len(frame)) + frame)
            await conn.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise PeerLost(f"send failed: {exc}") from None

    def _authenticate(self, mode: AuthMode, body: bytes) -> bytes:
        block = self.session.block
        if mode is AuthMode.HANDSHAKE:
            return self.session.sign_handshake(body)
        if mode is AuthMode.SINGLE:
            return self.session.tag(body)
        if mode is AuthMode.REPORT:
            if block is None:
                raise AuthError("a detection report needs an open block")
            return block.tag(body)
        if mode is AuthMode.TRANSCRIPT:
            if block is None:
                raise AuthError("a transcript message needs an open block")
            block.record_sent(body)
            return _NO_TAG
        if mode is AuthMode.TRANSCRIPT_TAG:
            if block is None:
                raise AuthError("a transcript tag needs an open block")
            return block.transcript_tag()
        return _NO_TAG

    async def receive(
        self, within_s: float | None = None, *, handshake: bool = False
    ) -> LinkMessage:
        """The next valid message; raises :class:`PeerLost` (and tears the connection
        down) on silence, closure or any frame that fails the checks."""
        conn = self._require()
        mode, tag, body = await self._read_frame(conn, within_s)
        seq, message = self._decode(conn, body)
        self._check_seq(conn, seq, message)
        if mode != message.auth:
            raise self._reject(conn, f"{message.kind} sent as {AuthMode(mode).name}")
        if message.auth is AuthMode.HANDSHAKE or (message.auth is AuthMode.CLEAR and not handshake):
            raise self._reject(conn, f"{message.kind} outside the handshake")
        try:
            self._verify(message, body, tag)
        except AuthFailedError as exc:
            raise self._reject(conn, str(exc)) from None
        except AuthError as exc:
            raise self._reject(conn, f"{message.kind}: {exc}") from None
        return message

    async def expect(self, kind: type[M], within_s: float | None = None) -> M:
        """The next message, which must be of ``kind`` (an abort is raised as
        :class:`PeerAborted`)."""
        message = await self.receive(within_s)
        if isinstance(message, kind):
            return message
        if isinstance(message, Abort):
            raise PeerAborted(message.block_id, message.reason)
        raise ProtocolViolation(f"expected {kind.kind}, got {message.kind}")

    def _verify(self, message: LinkMessage, body: bytes, tag: bytes) -> None:
        block = self.session.block
        mode = message.auth
        if mode is AuthMode.SINGLE:
            self.session.verify(body, tag)
        elif mode is AuthMode.REPORT:
            if block is None:
                raise AuthError("no open block")
            block.verify(body, tag)
        elif mode is AuthMode.TRANSCRIPT:
            if block is None:
                raise AuthError("no open block")
            block.record_received(body)
        elif mode is AuthMode.TRANSCRIPT_TAG:
            if block is None:
                raise AuthError("no open block")
            block.verify_transcript(tag)

    async def _read_frame(
        self, conn: _Connection, within_s: float | None
    ) -> tuple[int, bytes, bytes]:
        try:
            async with asyncio.timeout(within_s):
                head = await conn.reader.readexactly(_LENGTH.size)
                (length,) = _LENGTH.unpack(head)
                if length < _PREFIX.size or length > MAX_FRAME_BYTES:
                    raise self._reject(conn, f"frame length {length} out of bounds")
                frame = await conn.reader.readexactly(length)
        except TimeoutError:
            await self.drop("peer silent")
            raise PeerLost(f"no frame from the peer within {within_s} s") from None
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            await self.drop("peer closed the connection")
            raise PeerLost(f"connection lost: {type(exc).__name__}") from None
        mode, tag = _PREFIX.unpack_from(frame)
        if mode not in AuthMode._value2member_map_:
            raise self._reject(conn, f"unknown authentication mode {mode}")
        return mode, tag, frame[_PREFIX.size :]

    def _decode(self, conn: _Connection, body: bytes) -> tuple[int, LinkMessage]:
        try:
            seq, message = decode_body(body)
        except WireError as exc:
            raise self._reject(conn, f"malformed frame: {exc}") from None
        if not isinstance(message, LinkMessage):
            raise self._reject(conn, f"{message.kind} is not a link message")
        return seq, message

    def _check_seq(self, conn: _Connection, seq: int, message: LinkMessage) -> None:
        if seq != conn.rx_seq:
            what = "replayed" if seq < conn.rx_seq else "out of order"
            raise self._reject(
                conn, f"{message.kind} {what}: sequence {seq}, expected {conn.rx_seq}"
            )
        conn.rx_seq += 1

    def _reject(self, conn: _Connection, reason: str) -> PeerAuthError:
        """Drop the frame unprocessed, alarm, and tear the connection down."""
        self.dropped_frames += 1
        _log.error("peer frame rejected", reason=reason, peer=conn.peer)
        if self._conn is conn:
            self._conn = None
        conn.close()
        if self._on_alarm is not None:
            self._on_alarm(ChannelAlarm(AlarmKind.AUTH_FAILURE, reason))
        return PeerAuthError(reason)


class PeerAborted(Exception):
    """The peer abandoned the block (its reason is given); the connection stays up."""

    def __init__(self, block_id: int, reason: str) -> None:
        super().__init__(f"peer aborted block {block_id}: {reason}")
        self.block_id = block_id
        self.reason = reason
