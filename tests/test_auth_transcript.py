"""Running transcript tags: any alteration, drop, reorder or replay fails the check;
a block's messages are checked before use; both ends account identically."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qkdd.auth import AuthError, AuthFailedError, StreamClosedError, Transcript, forgery_bound
from qkdd.auth.session import messages_bytes
from tests.authpair import End, bootstrap, handshake, open_end

transcripts = st.lists(st.binary(max_size=64), min_size=1, max_size=12)


def _tag(messages: list[bytes], key: bytes, header: bytes = b"block-1") -> bytes:
    t = Transcript(bytearray(key), header, 0)
    for m in messages:
        t.add(m)
    return t.finalize()


def _verifies(messages: list[bytes], key: bytes, tag: bytes) -> bool:
    t = Transcript(bytearray(key), b"block-1", 0)
    for m in messages:
        t.add(m)
    return t.verify(tag)


@st.composite
def tampered(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """A transcript and a different one obtained by altering, dropping, reordering,
    replaying or inserting messages (or moving bytes across message boundaries)."""
    original = draw(transcripts)
    changed = list(original)
    op = draw(st.sampled_from(["alter", "drop", "swap", "replay", "insert", "reframe"]))
    i = draw(st.integers(0, len(original) - 1))
    if op == "alter":
        m = bytearray(changed[i] or b"\0")
        j = draw(st.integers(0, len(m) - 1))
        m[j] ^= draw(st.integers(1, 255))
        changed[i] = bytes(m)
    elif op == "drop":
        del changed[i]
    elif op == "swap":
        j = draw(st.integers(0, len(original) - 1))
        changed[i], changed[j] = changed[j], changed[i]
    elif op == "replay":
        changed.insert(draw(st.integers(0, len(changed))), changed[i])
    elif op == "insert":
        changed.insert(draw(st.integers(0, len(changed))), draw(st.binary(max_size=64)))
    else:  # same bytes, other boundaries
        joined = b"".join(changed)
        cut = draw(st.integers(0, len(joined)))
        changed = [joined[:cut], joined[cut:]]
    assume(changed != original)
    return original, changed


@settings(max_examples=400)
@given(case=tampered())
def test_any_change_to_the_transcript_fails_the_check(
    case: tuple[list[bytes], list[bytes]],
) -> None:
    original, changed = case
    key = secrets.token_bytes(32)
    tag = _tag(original, key)
    assert _verifies(original, key, tag)
    assert not _verifies(changed, key, tag)


def test_transcript_is_one_shot() -> None:
    t = Transcript(bytearray(32), b"h", 0)
    t.finalize()
    with pytest.raises(AuthError):
        t.add(b"late")
    with pytest.raises(AuthError):
        t.finalize()


def _block_pair(tmp_path: Path) -> tuple[End, End, tuple[bytes, bytes]]:
    alice_dir, bob_dir = bootstrap(tmp_path)
    alice, bob = open_end(alice_dir, "alice"), open_end(bob_dir, "bob")
    hello = handshake(alice.session, bob.session)
    return alice, bob, hello


def test_a_block_runs_frame_reports_transcripts_and_identical_accounting(tmp_path: Path) -> None:
    alice, bob, hello = _block_pair(tmp_path)
    a_block, b_block = alice.session.begin_block(1), bob.session.begin_block(1)
    sent_ab: list[bytes] = []
    sent_ba: list[bytes] = []
    for frame in range(6):
        report = b"detections of frame %d" % frame
        a_block.verify(report, b_block.tag(report))  # before Alice reveals anything
        sent_ba.append(report)
        answer = b"basis match of frame %d" % frame
        a_block.record_sent(answer)
        b_block.record_received(answer)
        sent_ab.append(answer)
    syndrome = secrets.token_bytes(300)
    a_block.record_sent(syndrome)
    b_block.record_received(syndrome)
    sent_ab.append(syndrome)
    a_block.verify_transcript(b_block.transcript_tag())
    b_block.verify_transcript(a_block.transcript_tag())
    a_block.require_verified()
    b_block.require_verified()
    a_cost, b_cost = a_block.cost(), b_block.cost()
    assert a_cost == b_cost
    # Handshake (2 units each way) and session r (1 each way) fall into the first block;
    # the block's r and transcript pad (2 each way); one pad per frame report.
    assert (a_cost.units_ab, a_cost.units_ba) == (2 + 1 + 2, 2 + 1 + 2 + 6)
    assert a_cost.tags == 2 + 6 + 2
    assert a_block.eps_auth == b_block.eps_auth
    header = 8 + 1 + 16 + 1 + 8 + 8
    # Bob's tagged reports also enter his transcript (binding their order).
    expected_eps = (
        sum(forgery_bound(header + len(m)) for m in hello)  # the two handshake tags
        + forgery_bound(messages_bytes(sent_ab))
        + forgery_bound(messages_bytes(sent_ba))
        + sum(forgery_bound(header + len(m)) for m in sent_ba)
    )
    assert a_block.eps_auth == pytest.approx(expected_eps, rel=1e-12)
    assert a_block.eps_auth < 1e-28


def test_a_tampered_block_message_is_caught_at_the_transcript_check(tmp_path: Path) -> None:
    alice, bob, _ = _block_pair(tmp_path)
    a_block, b_block = alice.session.begin_block(1), bob.session.begin_block(1)
    a_block.record_sent(b"parities 0101")
    b_block.record_received(b"parities 0111")  # altered in transit
    with pytest.raises(AuthFailedError):
        b_block.verify_transcript(a_block.transcript_tag())
    with pytest.raises(AuthError):
        b_block.require_verified()
    with pytest.raises(StreamClosedError):
        b_block.record_received(b"anything else")


def test_bob_cannot_start_a_block_before_a_handshake(tmp_path: Path) -> None:
    _, bob_dir = bootstrap(tmp_path)
    bob = open_end(bob_dir, "bob")
    with pytest.raises(StreamClosedError):
        bob.session.begin_block(1)
