"""Test helpers: two ends of a link bootstrapped from one secret, and a handshake."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qkdd.auth import (
    AuthSession,
    StaleIndexError,
    StreamMarks,
    generate_secret,
    load_auth_state,
    write_secret_file,
)
from qkdd.store import Direction, StateStore

LINK = "lab-1"

Uses = dict[tuple[str, Direction], list[tuple[int, int]]]
"""Stream units read for use: (state dir, direction) → [(start, count)]."""


def assert_no_unit_used_twice(uses: Uses) -> int:
    """Every unit read at most once per end and direction; returns how many were read."""
    total = 0
    for (end, direction), ranges in uses.items():
        units = [u for start, count in ranges for u in range(start, start + count)]
        assert len(units) == len(set(units)), (end, direction, sorted(units))
        total += len(units)
    return total


def bootstrap(tmp_path: Path, units: int = 256) -> tuple[Path, Path]:
    """Write a fresh secret into two state directories (like ``qkdd init-secret``)."""
    alice_dir, bob_dir = tmp_path / "alice", tmp_path / "bob"
    bundle = generate_secret(LINK, units)
    write_secret_file(alice_dir, bundle, "alice")
    write_secret_file(bob_dir, bundle, "bob")
    bundle.wipe()
    return alice_dir, bob_dir


@dataclass
class End:
    store: StateStore
    session: AuthSession

    def close(self) -> None:
        self.session.close()
        self.store.close()


def open_end(state_dir: Path, role: str, **session_args: object) -> End:
    store = StateStore.open(state_dir)
    load_auth_state(store, role=role, link=LINK)
    return End(store, AuthSession(store, **session_args))  # type: ignore[arg-type]


def handshake_message(marks: StreamMarks, extra: str = "") -> bytes:
    return json.dumps({"hello": extra, "marks": marks.as_dict()}, sort_keys=True).encode()


def handshake(a: AuthSession, b: AuthSession, attempts: int = 3) -> tuple[bytes, bytes]:
    """The peer channel's handshake: both ends announce an index and their marks, each
    verifies the other's; a stale refusal sends the refusing end's mark back (in clear)
    and the refused end skips forward and tries again; then both skip past the marks."""
    for _ in range(attempts):
        offer_a = a.begin_handshake()
        offer_b = b.begin_handshake()
        msg_a = handshake_message(offer_a.marks, "a")
        msg_b = handshake_message(offer_b.marks, "b")
        tag_a = a.sign_handshake(msg_a)
        tag_b = b.sign_handshake(msg_b)
        stale = False
        try:
            b.verify_handshake(msg_a, offer_a.index, tag_a)
        except StaleIndexError as refused:
            a.skip_tx_to(refused.mark)
            stale = True
        try:
            a.verify_handshake(msg_b, offer_b.index, tag_b)
        except StaleIndexError as refused:
            b.skip_tx_to(refused.mark)
            stale = True
        if stale:
            continue
        a.complete_handshake(StreamMarks.from_mapping(json.loads(msg_b)["marks"]))
        b.complete_handshake(StreamMarks.from_mapping(json.loads(msg_a)["marks"]))
        return msg_a, msg_b
    raise AssertionError("handshake did not converge")
