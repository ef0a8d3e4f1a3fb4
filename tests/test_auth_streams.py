"""Key-stream indices: no unit is ever used twice by an end, whatever the sequence of
messages in both directions, blocks, losses, forgeries, replenishments and restarts."""

from __future__ import annotations

import secrets
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkdd.auth import AuthFailedError
from qkdd.store import Direction, StreamStore
from tests.authpair import End, Uses, assert_no_unit_used_twice, bootstrap, handshake, open_end


@pytest.fixture
def unit_uses(monkeypatch: pytest.MonkeyPatch) -> Iterator[Uses]:
    """Record every read of stream material: (state dir, direction) → [(start, count)]."""
    uses: Uses = defaultdict(list)
    original = StreamStore.read_units

    def recording(self: StreamStore, direction: Direction, start: int, count: int) -> bytearray:
        uses[(str(self.store.state_dir), direction)].append((start, count))
        return original(self, direction, start, count)

    monkeypatch.setattr(StreamStore, "read_units", recording)
    yield uses


OPS = st.sampled_from(
    [
        "ab",
        "ba",
        "both_at_once",
        "block",
        "restart_alice",
        "restart_bob",
        "lost_ab",
        "forged_ba",
        "replenish",
        "handshake",
    ]
)


class Link:
    def __init__(self, root: Path, reserve_ahead: int) -> None:
        self.dirs = bootstrap(root, units=4096)
        self.reserve_ahead = reserve_ahead
        self.alice = self._open("alice")
        self.bob = self._open("bob")
        self.block_id = 0
        self.need_handshake = True

    def _open(self, role: str) -> End:
        directory = self.dirs[0] if role == "alice" else self.dirs[1]
        return open_end(directory, role, reserve_ahead=self.reserve_ahead, max_failures=10_000)

    def sync(self) -> None:
        if self.need_handshake or not (self.alice.session.ready and self.bob.session.ready):
            handshake(self.alice.session, self.bob.session)
            self.need_handshake = False

    def run(self, op: str) -> None:
        a, b = self.alice.session, self.bob.session
        if op == "restart_alice":
            self.alice.close()
            self.alice = self._open("alice")
            self.need_handshake = True
            return
        if op == "restart_bob":
            self.bob.close()
            self.bob = self._open("bob")
            self.need_handshake = True
            return
        if op == "handshake":
            self.need_handshake = True
        self.sync()
        if op == "ab":
            b.verify(b"ab", a.tag(b"ab"))
        elif op == "ba":
            a.verify(b"ba", b.tag(b"ba"))
        elif op == "both_at_once":
            ta, tb = a.tag(b"x"), b.tag(b"y")
            b.verify(b"x", ta)
            a.verify(b"y", tb)
        elif op == "block":
            self.block_id += 1
            ab, bb = a.begin_block(self.block_id), b.begin_block(self.block_id)
            for frame in range(2):
                ab.verify(b"report %d" % frame, bb.tag(b"report %d" % frame))
                ab.record_sent(b"answer")
                bb.record_received(b"answer")
            ab.verify_transcript(bb.transcript_tag())
            bb.verify_transcript(ab.transcript_tag())
        elif op == "lost_ab":
            a.tag(b"never arrives")
            with pytest.raises(AuthFailedError):
                b.verify(b"next", a.tag(b"next"))
            self.need_handshake = True
        elif op == "forged_ba":
            with pytest.raises(AuthFailedError):
                a.verify(b"forged", secrets.token_bytes(16))
            self.need_handshake = True
        elif op == "replenish":
            self.block_id += 1
            need = a.replenishment_need()
            key = secrets.token_bytes(1024)
            plan_a = a.replenish(self.block_id, bytearray(key), 8 * len(key), need)
            plan_b = b.replenish(self.block_id, bytearray(key), 8 * len(key), need)
            assert plan_a == plan_b

    def close(self) -> None:
        self.alice.close()
        self.bob.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, max_size=20), reserve_ahead=st.integers(0, 6))
def test_no_unit_is_ever_used_twice(unit_uses: Uses, ops: list[str], reserve_ahead: int) -> None:
    unit_uses.clear()
    with tempfile.TemporaryDirectory() as root:
        link = Link(Path(root), reserve_ahead)
        try:
            for op in ops:
                link.run(op)
            # Whatever happened, the two ends can still talk afterwards.
            link.need_handshake = True
            link.run("both_at_once")
        finally:
            link.close()
    assert assert_no_unit_used_twice(unit_uses) > 0


def test_units_in_both_directions_are_independent_streams(tmp_path: Path, unit_uses: Uses) -> None:
    link = Link(tmp_path, reserve_ahead=3)
    for op in ["both_at_once"] * 10 + ["block", "restart_bob", "both_at_once"]:
        link.run(op)
    link.close()
    assert assert_no_unit_used_twice(unit_uses) > 0
    directions = {direction for (_, direction) in unit_uses}
    assert directions == {Direction.ALICE_TO_BOB, Direction.BOB_TO_ALICE}


def test_used_units_are_erased_from_the_store(tmp_path: Path) -> None:
    link = Link(tmp_path, reserve_ahead=2)
    for _ in range(10):
        link.run("ab")

    def lowest_unit(end: End) -> int:
        row = end.store.conn.execute(
            "SELECT min(unit) FROM auth_units WHERE direction = 'alice_to_bob'"
        ).fetchone()
        return int(row[0])

    # A block start erases everything used before it, at both ends.
    position = link.bob.session.rx.position
    assert lowest_unit(link.bob) < position
    link.run("block")
    assert lowest_unit(link.bob) == position
    assert lowest_unit(link.alice) == position
    # So does closing the session.
    link.run("ab")
    position = link.alice.session.tx.position
    link.alice.session.close()
    assert lowest_unit(link.alice) == position
    link.close()


@pytest.mark.slow
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, max_size=60), reserve_ahead=st.integers(0, 40))
def test_no_unit_is_ever_used_twice_long_sequences(
    unit_uses: Uses, ops: list[str], reserve_ahead: int
) -> None:
    test_no_unit_is_ever_used_twice.hypothesis.inner_test(unit_uses, ops, reserve_ahead)  # type: ignore[attr-defined]
