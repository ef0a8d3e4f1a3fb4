"""Wegman–Carter tags: wrong key or message never verifies; tampering, forged and
replayed indices are rejected; a bad tag burns, closes and resyncs with a cap."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdd.auth import (
    AuthFailedError,
    AuthFailureEvent,
    ResyncExhaustedError,
    StaleIndexError,
    StreamClosedError,
    StreamMarks,
)
from qkdd.auth.session import _check, _compute
from qkdd.store import Direction, StreamStatus, StreamStore
from tests.authpair import End, bootstrap, handshake, handshake_message, open_end

messages = st.binary(max_size=200)


@settings(max_examples=300)
@given(m1=messages, m2=messages)
def test_a_tag_never_verifies_under_another_key_or_message(m1: bytes, m2: bytes) -> None:
    """Messages are adversarial (hypothesis); keys are uniform, as the streams' are
    (an adversarially chosen key such as r = 0 is not a Wegman–Carter key)."""
    k1, k2 = secrets.token_bytes(32), secrets.token_bytes(32)
    header = b"h" * 50
    tag = _compute(bytearray(k1), header, m1)
    assert len(tag) == 16
    assert _check(bytearray(k1), header, m1, tag)
    assert not _check(bytearray(k2), header, m1, tag)
    if m2 != m1:
        assert not _check(bytearray(k1), header, m2, tag)
    flipped = bytes([tag[0] ^ 1]) + tag[1:]
    assert not _check(bytearray(k1), header, m1, flipped)


def test_tag_matches_poly1305_with_r_and_one_time_pad() -> None:
    """The session's tag is Poly1305(r‖s) over header‖message: nothing hand-written."""
    r, s = secrets.token_bytes(16), secrets.token_bytes(16)
    tag = _compute(bytearray(r + s), b"hdr", b"message")
    assert tag == Poly1305.generate_tag(r + s, b"hdrmessage")


@pytest.fixture
def pair(tmp_path: Path) -> tuple[End, End, list[AuthFailureEvent]]:
    alice_dir, bob_dir = bootstrap(tmp_path)
    events: list[AuthFailureEvent] = []
    alice = open_end(alice_dir, "alice", on_failure=events.append, max_failures=3)
    bob = open_end(bob_dir, "bob", on_failure=events.append, max_failures=3)
    handshake(alice.session, bob.session)
    return alice, bob, events


def test_messages_verify_in_both_directions(pair: tuple[End, End, list[AuthFailureEvent]]) -> None:
    alice, bob, events = pair
    for i in range(20):
        bob.session.verify(b"to bob %d" % i, alice.session.tag(b"to bob %d" % i))
        alice.session.verify(b"to alice %d" % i, bob.session.tag(b"to alice %d" % i))
    assert events == []
    assert alice.session.tx.position == bob.session.rx.position
    assert bob.session.tx.position == alice.session.rx.position


def test_tampered_message_burns_the_key_closes_the_stream_and_raises_the_event(
    pair: tuple[End, End, list[AuthFailureEvent]],
) -> None:
    alice, bob, events = pair
    tag = alice.session.tag(b"commit block 7")
    position = bob.session.rx.position
    with pytest.raises(AuthFailedError):
        bob.session.verify(b"commit block 8", tag)
    assert bob.session.rx.position == position + 1  # the pad is burnt
    assert [(e.direction, e.kind, e.failures) for e in events] == [
        (Direction.ALICE_TO_BOB, "message", 1)
    ]
    assert StreamStore(bob.store).stream(Direction.ALICE_TO_BOB).status is StreamStatus.CLOSED
    # The genuine message cannot be accepted any more: the stream is closed.
    with pytest.raises(StreamClosedError):
        bob.session.verify(b"commit block 7", tag)
    # A new handshake resynchronises both ends.
    handshake(alice.session, bob.session)
    bob.session.verify(b"after resync", alice.session.tag(b"after resync"))


def test_tampered_tag_is_rejected(pair: tuple[End, End, list[AuthFailureEvent]]) -> None:
    alice, bob, _ = pair
    tag = bytearray(alice.session.tag(b"vote yes"))
    tag[15] ^= 0x80
    with pytest.raises(AuthFailedError):
        bob.session.verify(b"vote yes", bytes(tag))


def test_receiver_derives_the_index_a_dropped_message_breaks_the_next(
    pair: tuple[End, End, list[AuthFailureEvent]],
) -> None:
    alice, bob, _ = pair
    alice.session.tag(b"lost on the way")
    second = alice.session.tag(b"second")
    with pytest.raises(AuthFailedError):
        bob.session.verify(b"second", second)


def test_resynchronisation_is_capped(pair: tuple[End, End, list[AuthFailureEvent]]) -> None:
    alice, bob, events = pair
    for attempt in range(3):
        with pytest.raises(AuthFailedError) as excinfo:
            bob.session.verify(b"forged", b"\0" * 16)
        if attempt < 2:
            handshake(alice.session, bob.session)
    assert isinstance(excinfo.value, ResyncExhaustedError)
    assert events[-1].exhausted
    with pytest.raises(ResyncExhaustedError):
        handshake(alice.session, bob.session)
    # Exhaustion is durable: a restart does not clear it.
    bob.close()
    bob2 = open_end(bob.store.state_dir, "bob")
    assert bob2.session.rx.status is StreamStatus.EXHAUSTED
    with pytest.raises(ResyncExhaustedError):
        bob2.session.begin_handshake()


def test_a_committed_block_clears_the_failure_count(
    pair: tuple[End, End, list[AuthFailureEvent]],
) -> None:
    alice, bob, _ = pair
    with pytest.raises(AuthFailedError):
        bob.session.verify(b"forged", b"\0" * 16)
    handshake(alice.session, bob.session)
    assert bob.session.rx.failures == 1
    need = alice.session.replenishment_need()
    key = bytearray(secrets.token_bytes(2048))
    alice.session.replenish(1, bytearray(key), 8 * len(key), need)
    bob.session.replenish(1, bytearray(key), 8 * len(key), need)
    assert bob.session.rx.failures == 0
    assert StreamStore(bob.store).stream(Direction.ALICE_TO_BOB).failures == 0


def _offer(end: End) -> tuple[int, bytes, bytes]:
    offer = end.session.begin_handshake()
    message = handshake_message(offer.marks)
    return offer.index, message, end.session.sign_handshake(message)


def test_replayed_handshake_is_rejected_without_burning(tmp_path: Path) -> None:
    alice_dir, bob_dir = bootstrap(tmp_path)
    alice, bob = open_end(alice_dir, "alice"), open_end(bob_dir, "bob")
    index, message, tag = _offer(alice)
    bob.session.verify_handshake(message, index, tag)
    mark = bob.session.rx.mark
    with pytest.raises(StaleIndexError):
        bob.session.verify_handshake(message, index, tag)
    assert bob.session.rx.mark == mark
    # ... also after a restart: the high-water mark is durable.
    bob.close()
    bob = open_end(bob_dir, "bob")
    with pytest.raises(StaleIndexError):
        bob.session.verify_handshake(message, index, tag)


def test_forged_index_is_rejected(tmp_path: Path) -> None:
    alice_dir, bob_dir = bootstrap(tmp_path)
    alice = open_end(alice_dir, "alice")
    bob = open_end(bob_dir, "bob", max_skip=64)
    index, message, tag = _offer(alice)
    # The same genuine tag announced at another index: another key, so it fails.
    with pytest.raises(AuthFailedError):
        bob.session.verify_handshake(message, index + 1, tag)
    # Far beyond the mark: refused before anything is burnt (no drain).
    mark = bob.session.rx.mark
    with pytest.raises(StaleIndexError):
        bob.session.verify_handshake(message, mark + 65, tag)
    assert bob.session.rx.mark == mark
    # A forged message at a fresh index fails and burns only its own two units.
    with pytest.raises(AuthFailedError):
        bob.session.verify_handshake(b'{"marks": {}}', mark + 3, tag)
    assert bob.session.rx.mark == mark + 5


def test_after_a_crash_both_ends_skip_past_the_larger_mark(tmp_path: Path) -> None:
    alice_dir, bob_dir = bootstrap(tmp_path)
    alice, bob = open_end(alice_dir, "alice"), open_end(bob_dir, "bob")
    handshake(alice.session, bob.session)
    for i in range(40):  # beyond one reservation batch
        bob.session.verify(b"%d" % i, alice.session.tag(b"%d" % i))
    alice_mark = alice.session.tx.mark
    alice.close()  # "crash": the reserved-ahead units are lost with the process
    alice = open_end(alice_dir, "alice")
    assert alice.session.tx.position == alice_mark
    with pytest.raises(StreamClosedError):
        alice.session.tag(b"before handshake")
    handshake(alice.session, bob.session)
    assert alice.session.tx.position == bob.session.rx.position > alice_mark
    bob.session.verify(b"resumed", alice.session.tag(b"resumed"))


def test_handshake_marks_round_trip() -> None:
    marks = StreamMarks(alice_to_bob=5, bob_to_alice=9)
    assert StreamMarks.from_mapping(json.loads(json.dumps(marks.as_dict()))) == marks
    assert marks[Direction.BOB_TO_ALICE] == 9
