"""Wegman–Carter authentication of the classical channel (DESIGN §4).

Tags are Poly1305 (from ``cryptography``) under the 32-byte key r‖s, where r is
the hash key of the direction — fresh per block, and per session after a
handshake — and s a fresh one-time 128-bit pad per tag. One key stream per
direction; the receiver derives every index from its own counter.

What the peer channel calls, in protocol order:

1. Handshake (after every (re)connect): :meth:`AuthSession.begin_handshake` gives
   the index to announce in clear and this end's high-water marks to put in the
   handshake message; :meth:`AuthSession.sign_handshake` tags that message with a
   fresh (r, s) at the announced index; the peer's handshake goes to
   :meth:`AuthSession.verify_handshake` (accepted only above the stored high-water
   mark); :meth:`AuthSession.complete_handshake` with the peer's marks makes both
   ends skip past the larger mark and draws the session hash keys. A handshake
   refused as stale (:class:`~qkdd.auth.errors.StaleIndexError`, e.g. after the
   receiver burnt units on a forgery) is answered with the receiver's mark in
   clear; the sender calls :meth:`AuthSession.skip_tx_to` and starts over.
2. Single messages (handshake follow-ups, vote, commit): :meth:`AuthSession.tag` /
   :meth:`AuthSession.verify`.
3. Per block: :meth:`AuthSession.begin_block` → :class:`BlockAuth`: Bob's per-frame
   detection report via :meth:`BlockAuth.tag` / :meth:`BlockAuth.verify` (verified
   before Alice reveals anything about the frame), every other message recorded in
   the running transcripts, one transcript tag per direction checked with
   :meth:`BlockAuth.verify_transcript` before anything of the block is used.
4. On commit: :meth:`AuthSession.replenish` with the coordinator's ``need``.

A bad tag burns its key, closes the receiving stream, reports an
:class:`AuthFailureEvent` (alarm ``auth_failure``) and raises
:class:`~qkdd.auth.errors.AuthFailedError`; the next handshake resynchronises,
at most ``max_failures`` times without a committed block in between.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qkdd.auth.economics import (
    BlockAuthCost,
    EpsAuthLedger,
    ReplenishmentPlan,
    ReplenishmentRule,
)
from qkdd.auth.errors import (
    AuthError,
    AuthFailedError,
    ResyncExhaustedError,
    StaleIndexError,
    StateLostError,
    StreamClosedError,
)
from qkdd.auth.stream import KeyStream
from qkdd.logging import get_logger
from qkdd.store.db import StateStore
from qkdd.store.streams import (
    DIRECTIONS,
    UNIT_BYTES,
    Direction,
    ReplenishmentRecord,
    StreamStatus,
    StreamStore,
)

TAG_BYTES = 16
_MAGIC = b"qkdd-wc1"
_HEADER = struct.Struct(">8sc16sBQQ")  # magic, kind, secret id, direction, block id, index
_LENGTH = struct.Struct(">Q")
_NO_BLOCK = 0

_log = get_logger("auth")


class Role(StrEnum):
    ALICE = "alice"
    BOB = "bob"

    @property
    def sends(self) -> Direction:
        return Direction.ALICE_TO_BOB if self is Role.ALICE else Direction.BOB_TO_ALICE

    @property
    def receives(self) -> Direction:
        return Direction.BOB_TO_ALICE if self is Role.ALICE else Direction.ALICE_TO_BOB


_HANDSHAKE = b"H"
_MESSAGE = b"M"
_TRANSCRIPT = b"T"


@dataclass(frozen=True)
class StreamMarks:
    """Durable high-water marks of both streams, as one end announces them."""

    alice_to_bob: int
    bob_to_alice: int

    def __getitem__(self, direction: Direction) -> int:
        return self.alice_to_bob if direction is Direction.ALICE_TO_BOB else self.bob_to_alice

    def as_dict(self) -> dict[str, int]:
        return {"alice_to_bob": self.alice_to_bob, "bob_to_alice": self.bob_to_alice}

    @classmethod
    def from_mapping(cls, marks: Mapping[str, int]) -> StreamMarks:
        return cls(int(marks["alice_to_bob"]), int(marks["bob_to_alice"]))


@dataclass(frozen=True)
class HandshakeOffer:
    """What this end announces: the index of its handshake tag (in clear) and its marks
    (inside the authenticated handshake message)."""

    index: int
    marks: StreamMarks


@dataclass(frozen=True)
class AuthFailureEvent:
    """Raised to the link engine (alarm ``auth_failure``); no key material."""

    direction: Direction
    kind: str
    index: int
    block_id: int | None
    failures: int
    exhausted: bool


def _wipe(buffer: bytearray | None) -> None:
    if buffer is not None:
        buffer[:] = bytes(len(buffer))


def _compute(key: bytearray, header: bytes, message: bytes | bytearray | memoryview) -> bytes:
    """Poly1305 tag of header‖message under the one-time key r‖s (key wiped)."""
    mac = Poly1305(key)
    _wipe(key)
    mac.update(header)
    mac.update(message)
    return mac.finalize()


def _check(
    key: bytearray, header: bytes, message: bytes | bytearray | memoryview, tag: bytes
) -> bool:
    """Constant-time check of a Poly1305 tag (key wiped)."""
    mac = Poly1305(key)
    _wipe(key)
    mac.update(header)
    mac.update(message)
    try:
        mac.verify(bytes(tag))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _poly1305_key(r: bytearray, s: bytearray) -> bytearray:
    key = bytearray(2 * UNIT_BYTES)
    key[:UNIT_BYTES] = r
    key[UNIT_BYTES:] = s
    return key


class Transcript:
    """Running Poly1305 over every message of one direction of a block, in order.

    Messages are length-prefixed, so dropping, inserting, altering, reordering or
    replaying any of them changes the authenticated string.
    """

    def __init__(self, key: bytearray, header: bytes, index: int) -> None:
        self.index = index
        self._mac: Poly1305 | None = Poly1305(key)
        _wipe(key)
        self._mac.update(header)
        self.length = len(header)
        self.messages = 0

    @property
    def is_open(self) -> bool:
        """False once finalised, verified or discarded."""
        return self._mac is not None

    def add(self, message: bytes | bytearray | memoryview) -> None:
        if self._mac is None:
            raise AuthError("transcript already finalised")
        view = memoryview(message)
        self._mac.update(_LENGTH.pack(len(view)))
        self._mac.update(view)
        self.length += _LENGTH.size + len(view)
        self.messages += 1

    def finalize(self) -> bytes:
        if self._mac is None:
            raise AuthError("transcript already finalised")
        mac, self._mac = self._mac, None
        return mac.finalize()

    def verify(self, tag: bytes) -> bool:
        if self._mac is None:
            raise AuthError("transcript already finalised")
        mac, self._mac = self._mac, None
        try:
            mac.verify(bytes(tag))
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def discard(self) -> None:
        self._mac = None


class AuthSession:
    """Both key streams of one end of a link and the tagging rules over them."""

    def __init__(
        self,
        store: StateStore,
        *,
        reserve_ahead: int = 32,
        max_skip: int = 4096,
        max_failures: int = 5,
        rule: ReplenishmentRule | None = None,
        on_failure: Callable[[AuthFailureEvent], None] | None = None,
    ) -> None:
        self._store = store
        self._streams = StreamStore(store)
        info = self._streams.secret()
        if info is None:
            raise StateLostError("no authentication secret in the state store")
        self.secret_id = info.secret_id
        self._secret_bytes = uuid.UUID(info.secret_id).bytes
        self.role = Role(info.role)
        self.link = info.link
        self.tx = KeyStream(self._streams, self.role.sends, reserve_ahead=reserve_ahead)
        self.rx = KeyStream(self._streams, self.role.receives, reserve_ahead=reserve_ahead)
        self.max_skip = max_skip
        self.max_failures = max_failures
        self.rule = rule or ReplenishmentRule()
        self._on_failure = on_failure
        self._r_tx: bytearray | None = None
        self._r_rx: bytearray | None = None
        self._hs_units: tuple[int, bytearray] | None = None
        self._peer_handshake_ok = False
        self._own_handshake_sent = False
        self._pending = EpsAuthLedger()  # costs outside any block (handshakes)
        self._block: BlockAuth | None = None

    def __repr__(self) -> str:
        return (
            f"AuthSession(role={self.role}, secret_id={self.secret_id}, "
            f"tx={self.tx!r}, rx={self.rx!r})"
        )

    # -- helpers ------------------------------------------------------------------------

    def _header(self, kind: bytes, direction: Direction, block_id: int, index: int) -> bytes:
        return _HEADER.pack(
            _MAGIC, kind, self._secret_bytes, DIRECTIONS.index(direction), block_id, index
        )

    @property
    def ready(self) -> bool:
        """True once a handshake completed and the session hash keys are drawn."""
        return self._r_tx is not None and self.tx.synced and self.rx.synced

    @property
    def ledger(self) -> EpsAuthLedger:
        return self._block.ledger if self._block is not None else self._pending

    def _fail(self, kind: str, index: int, block_id: int | None) -> AuthFailedError:
        """Burn (already done: the position moved past the units), close, report."""
        self.rx.burn_and_close()
        exhausted = self.rx.failures >= self.max_failures
        if exhausted:
            self.rx.exhaust()
        self._drop_session_keys()
        event = AuthFailureEvent(
            self.rx.direction, kind, index, block_id, self.rx.failures, exhausted
        )
        _log.error(
            "authentication failed",
            direction=str(event.direction),
            kind=kind,
            unit_index=index,
            block_id=block_id,
            failure_count=event.failures,
            exhausted=exhausted,
        )
        if self._on_failure is not None:
            self._on_failure(event)
        if exhausted:
            return ResyncExhaustedError(
                f"{kind} tag on {event.direction} failed; {event.failures} failures without a "
                "committed block: the stream stays closed until both ends get a new secret"
            )
        return AuthFailedError(f"{kind} tag on {event.direction} failed (index {index})")

    def _drop_session_keys(self) -> None:
        _wipe(self._r_tx)
        _wipe(self._r_rx)
        self._r_tx = self._r_rx = None
        if self._block is not None:
            self._block.discard()
            self._block = None

    # -- handshake --------------------------------------------------------------------

    def begin_handshake(self) -> HandshakeOffer:
        """Reserve (durably) the two units of this end's handshake tag at its
        high-water mark; returns the index to announce and the marks to send."""
        if self.rx.status is StreamStatus.EXHAUSTED:
            raise ResyncExhaustedError(
                f"authentication stream {self.rx.direction} is exhausted: "
                "both ends need a new secret"
            )
        self._drop_session_keys()
        if self._hs_units is not None:
            _wipe(self._hs_units[1])
        self.tx.start_handshake()
        self._hs_units = self.tx.take(2)
        self._own_handshake_sent = False
        self._peer_handshake_ok = False
        self._pending.add_units(self.tx.direction, 2)
        return HandshakeOffer(self._hs_units[0], self.local_marks())

    def skip_tx_to(self, peer_rx_mark: int) -> None:
        """The peer refused this end's handshake as stale and said (in clear, so it is
        only a hint) that its high-water mark is ``peer_rx_mark``: move the sending
        stream forward to it, durably, then start a new handshake. Skipping forward
        only wastes units, so a forged hint is bounded by ``max_skip``."""
        if peer_rx_mark <= self.tx.mark:
            return
        if peer_rx_mark - self.tx.mark > self.max_skip:
            raise StaleIndexError(
                f"peer mark {peer_rx_mark} is more than {self.max_skip} units beyond "
                f"{self.tx.mark} on {self.tx.direction}",
                self.tx.mark,
            )
        self.tx.skip_to(peer_rx_mark)
        self.tx.synced = False

    def local_marks(self) -> StreamMarks:
        marks = {self.tx.direction: self.tx.mark, self.rx.direction: self.rx.mark}
        return StreamMarks(marks[Direction.ALICE_TO_BOB], marks[Direction.BOB_TO_ALICE])

    def sign_handshake(self, message: bytes | bytearray) -> bytes:
        """Tag this end's handshake message (which carries the offer's marks)."""
        if self._hs_units is None:
            raise AuthError("begin_handshake first")
        index, units = self._hs_units
        self._hs_units = None
        key = bytearray(units)
        _wipe(units)
        header = self._header(_HANDSHAKE, self.tx.direction, _NO_BLOCK, index)
        tag = _compute(key, header, message)
        self._pending.add_tag(len(header) + len(message))
        self._own_handshake_sent = True
        return tag

    def verify_handshake(self, message: bytes | bytearray, index: int, tag: bytes) -> None:
        """Check the peer's handshake tag at the index it announced in clear.

        Raises :class:`~qkdd.auth.errors.StaleIndexError` (nothing burnt) for an index at
        or below the stored high-water mark (a replay) or too far beyond it.
        """
        if self.rx.status is StreamStatus.EXHAUSTED:
            raise ResyncExhaustedError(
                f"authentication stream {self.rx.direction} is exhausted: "
                "both ends need a new secret"
            )
        key = self.rx.take_at(index, 2, max_skip=self.max_skip)
        header = self._header(_HANDSHAKE, self.rx.direction, _NO_BLOCK, index)
        self._pending.add_units(self.rx.direction, 2)
        self._pending.add_tag(len(header) + len(message))
        if not _check(key, header, message, tag):
            raise self._fail("handshake", index, None)
        self._peer_handshake_ok = True

    def complete_handshake(self, peer_marks: StreamMarks) -> None:
        """Both handshakes verified: jump both streams past the larger of the two ends'
        marks (durably) and draw this session's hash keys r, one per direction."""
        if not (self._own_handshake_sent and self._peer_handshake_ok):
            raise AuthError("complete_handshake needs both handshakes (sent and verified)")
        for stream in (self.tx, self.rx):
            stream.skip_to(max(stream.mark, peer_marks[stream.direction]))
        self.rx.reopen()
        self.tx.reopen()
        _, self._r_tx = self.tx.take(1)
        _, self._r_rx = self.rx.take(1)
        self._pending.add_units(self.tx.direction, 1)
        self._pending.add_units(self.rx.direction, 1)
        self._own_handshake_sent = self._peer_handshake_ok = False
        _log.info(
            "authentication streams synchronised",
            secret_id=self.secret_id,
            tx_index=self.tx.position,
            rx_index=self.rx.position,
        )

    # -- single messages --------------------------------------------------------------

    def _require_ready(self) -> None:
        if not self.ready:
            raise StreamClosedError("authentication session not synchronised: handshake first")

    def tag(self, message: bytes | bytearray | memoryview) -> bytes:
        """Tag one outgoing message under the current hash key r and a fresh pad s."""
        self._require_ready()
        assert self._r_tx is not None
        index, pad = self.tx.take(1)
        block_id = self._block.block_id if self._block is not None else _NO_BLOCK
        header = self._header(_MESSAGE, self.tx.direction, block_id, index)
        key = _poly1305_key(self._r_tx, pad)
        _wipe(pad)
        tag = _compute(key, header, message)
        self.ledger.add_units(self.tx.direction, 1)
        self.ledger.add_tag(len(header) + len(message))
        # Individually tagged messages of a block also enter its transcript (binding
        # their order) until the transcript is sealed; vote and commit come after.
        if self._block is not None and self._block.tx_transcript.is_open:
            self._block.tx_transcript.add(message)
        return tag

    def verify(self, message: bytes | bytearray | memoryview, tag: bytes) -> None:
        """Verify one incoming message at the index this end derives itself."""
        self._require_ready()
        assert self._r_rx is not None
        index, pad = self.rx.take(1)
        block = self._block
        block_id = block.block_id if block is not None else _NO_BLOCK
        header = self._header(_MESSAGE, self.rx.direction, block_id, index)
        key = _poly1305_key(self._r_rx, pad)
        _wipe(pad)
        self.ledger.add_units(self.rx.direction, 1)
        self.ledger.add_tag(len(header) + len(message))
        if not _check(key, header, message, tag):
            raise self._fail("message", index, block.block_id if block else None)
        if block is not None and block.rx_transcript.is_open:
            block.rx_transcript.add(message)

    # -- blocks -----------------------------------------------------------------------

    def begin_block(self, block_id: int) -> BlockAuth:
        """Fresh hash keys r for both directions and the two running transcripts."""
        self._require_ready()
        if block_id <= 0:
            raise ValueError("block ids start at 1")
        if self._block is not None:
            self._block.discard()
        for stream in (self.tx, self.rx):
            stream.erase_used()
        ledger = EpsAuthLedger()
        ledger.absorb(self._pending)
        self._pending = EpsAuthLedger()
        tx_index, tx_units = self.tx.take(2)
        rx_index, rx_units = self.rx.take(2)
        ledger.add_units(self.tx.direction, 2)
        ledger.add_units(self.rx.direction, 2)
        _wipe(self._r_tx)
        _wipe(self._r_rx)
        self._r_tx = bytearray(tx_units[:UNIT_BYTES])
        self._r_rx = bytearray(rx_units[:UNIT_BYTES])
        # Transcript key: the block's r with its own pad (the unit after r).
        tx_t = Transcript(
            tx_units, self._header(_TRANSCRIPT, self.tx.direction, block_id, tx_index), tx_index
        )
        rx_t = Transcript(
            rx_units, self._header(_TRANSCRIPT, self.rx.direction, block_id, rx_index), rx_index
        )
        self._block = BlockAuth(self, block_id, tx_t, rx_t, ledger)
        return self._block

    @property
    def block(self) -> BlockAuth | None:
        return self._block

    # -- replenishment ----------------------------------------------------------------

    def levels(self) -> dict[Direction, int]:
        """Unused units per direction at this end."""
        self.tx.refresh_appended()
        self.rx.refresh_appended()
        return {self.tx.direction: self.tx.level, self.rx.direction: self.rx.level}

    def replenishment_need(self) -> dict[Direction, int]:
        """Units each stream needs to reach the reserve floor, from this end's levels
        (the coordinator sends these numbers in the authenticated commit)."""
        return self.rule.need(self.levels())

    def replenish(
        self,
        block_id: int,
        block_key: bytearray,
        key_bits: int,
        need: Mapping[Direction, int],
    ) -> ReplenishmentPlan:
        """Move ``need`` units per direction from the front of a committed block's key
        into the streams (A→B first), durably and once per block; the taken prefix of
        ``block_key`` is overwritten with zeros. Returns the plan: the block's
        deliverable key starts at bit ``plan.bits``.
        """
        if key_bits > 8 * len(block_key):
            raise ValueError("key_bits exceeds the key buffer")
        done = self._streams.replenishment(block_id)
        if done is not None:
            return ReplenishmentPlan(done.units_ab, done.units_ba)
        plan = self.rule.plan(key_bits, need)
        with self._store.transaction(durable=True):
            offset = 0
            for direction in DIRECTIONS:
                count = plan.units(direction) * UNIT_BYTES
                if count:
                    self._streams.append(
                        direction, block_key[offset : offset + count], f"block:{block_id}"
                    )
                offset += count
            self._streams.record_replenishment(
                ReplenishmentRecord(block_id, plan.units_ab, plan.units_ba, plan.bits)
            )
        block_key[: plan.bits // 8] = bytes(plan.bits // 8)
        for stream in (self.tx, self.rx):
            stream.refresh_appended()
            stream.clear_failures()
        return plan

    def close(self) -> None:
        """Overwrite the hash keys held in memory and erase used units from the store."""
        self._drop_session_keys()
        if not self._store.closed:
            for stream in (self.tx, self.rx):
                stream.erase_used()
        if self._hs_units is not None:
            _wipe(self._hs_units[1])
            self._hs_units = None


class BlockAuth:
    """Authentication of one block: per-message tags under the block's r and the two
    running transcripts. Obtain it from :meth:`AuthSession.begin_block`."""

    def __init__(
        self,
        session: AuthSession,
        block_id: int,
        tx_transcript: Transcript,
        rx_transcript: Transcript,
        ledger: EpsAuthLedger,
    ) -> None:
        self._session = session
        self.block_id = block_id
        self.tx_transcript = tx_transcript
        self.rx_transcript = rx_transcript
        self.ledger = ledger
        self.tx_sealed = False
        self.rx_verified = False
        self.discarded = False

    def __repr__(self) -> str:
        return (
            f"BlockAuth(block_id={self.block_id}, tx_sealed={self.tx_sealed}, "
            f"rx_verified={self.rx_verified}, discarded={self.discarded})"
        )

    def _live(self) -> None:
        if self.discarded:
            raise StreamClosedError(f"block {self.block_id} authentication was discarded")

    def record_sent(self, message: bytes | bytearray | memoryview) -> None:
        """Add an outgoing message (not individually tagged) to this end's transcript."""
        self._live()
        self.tx_transcript.add(message)

    def record_received(self, message: bytes | bytearray | memoryview) -> None:
        """Add an incoming message (not individually tagged) to the peer's transcript."""
        self._live()
        self.rx_transcript.add(message)

    def tag(self, message: bytes | bytearray | memoryview) -> bytes:
        """An individually tagged message of the block (Bob's per-frame detection
        report); it also enters the transcript until that is sealed.

        One pad per tag is the dominant authentication cost at long distance; the
        reports of several frames may be tagged as one message (Alice then reveals
        nothing about any of those frames before it verifies), see
        ``benchmarks/bench_auth.py``."""
        self._live()
        return self._session.tag(message)

    def verify(self, message: bytes | bytearray | memoryview, tag: bytes) -> None:
        """Verify an individually tagged message of the block before using it."""
        self._live()
        self._session.verify(message, tag)

    def transcript_tag(self) -> bytes:
        """This end's transcript tag (send it last; nothing more can be recorded)."""
        self._live()
        tag = self.tx_transcript.finalize()
        self.tx_sealed = True
        self.ledger.add_tag(self.tx_transcript.length)
        return tag

    def verify_transcript(self, tag: bytes) -> None:
        """Check the peer's transcript tag; must pass before anything of the block is
        committed, delivered or used to refill a stream."""
        self._live()
        self.ledger.add_tag(self.rx_transcript.length)
        if not self.rx_transcript.verify(tag):
            raise self._session._fail("transcript", self.rx_transcript.index, self.block_id)
        self.rx_verified = True

    def require_verified(self) -> None:
        """Raise unless the peer's transcript tag verified at this end."""
        if not self.rx_verified:
            raise AuthError(f"block {self.block_id}: the peer's transcript is not verified")

    @property
    def eps_auth(self) -> float:
        return self.ledger.eps_auth

    def cost(self) -> BlockAuthCost:
        return self.ledger.cost()

    def discard(self) -> None:
        self.discarded = True
        self.tx_transcript.discard()
        self.rx_transcript.discard()


def messages_bytes(messages: Iterable[bytes]) -> int:
    """Authenticated length of a transcript of ``messages`` (header and framing included)."""
    return _HEADER.size + sum(_LENGTH.size + len(m) for m in messages)
