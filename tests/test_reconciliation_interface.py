"""The sans-I/O reconciliation interface: messages, ledgers, the local driver."""

from __future__ import annotations

import numpy as np
import pytest

from qkdd.postprocessing.reconciliation import (
    LeakageLedger,
    LocalChannel,
    Message,
    Outcome,
    Party,
    ReconciliationError,
    Role,
    run_local,
)
from qkdd.postprocessing.reconciliation.base import pack_bits, unpack_bits


class _Echo(Party):
    """A toy protocol: Alice discloses her key's parity, Bob answers with his, twice."""

    def __init__(self, role: Role, key: np.ndarray) -> None:
        super().__init__(role)
        self.key = key
        self.turns = 0

    def _start(self) -> Message | None:
        if self.role is Role.BOB:
            return None
        return self._say()

    def _say(self) -> Message:
        self.turns += 1
        parity = np.array([int(self.key.sum()) & 1], dtype=np.uint8)
        return Message(sender=self.role, kind="parity", disclosed={"p": parity})

    def _receive(self, message: Message) -> Message | None:
        if self.role is Role.ALICE and self.turns >= 2:
            self.turns += 1
            return None
        return self._say()

    @property
    def finished(self) -> bool:
        return self.turns >= 2

    def outcome(self) -> Outcome:
        return Outcome(self.role, self.key, True, self.ledger.leaked_bits, self.ledger.round_trips)


def test_local_run_counts_both_directions_at_both_ends() -> None:
    seen: list[Message] = []
    run = run_local(
        _Echo(Role.ALICE, np.ones(5, np.uint8)),
        _Echo(Role.BOB, np.zeros(5, np.uint8)),
        LocalChannel(observer=seen.append),
    )
    assert [m.sender for m in seen] == [Role.ALICE, Role.BOB, Role.ALICE, Role.BOB]
    assert run.ledger.sent_by == {Role.ALICE: 2, Role.BOB: 2}
    assert run.ledger.leaked_bits == 4 == run.alice.leaked_bits == run.bob.leaked_bits
    assert run.ledger.round_trips == 2


def test_message_declares_and_validates_its_disclosure() -> None:
    bits = np.array([1, 0, 1], dtype=np.uint8)
    msg = Message(Role.ALICE, "x", disclosed={"a": bits, "b": bits[:1]}, credit=2)
    assert msg.disclosed_bits == 4 and msg.leaked_bits == 2
    assert "1, 0" not in repr(msg) and "'a': 3" in repr(msg)
    with pytest.raises(ReconciliationError):
        Message(Role.ALICE, "x", disclosed={"a": bits}, credit=4)
    with pytest.raises(ReconciliationError):
        Message(Role.ALICE, "x", disclosed={"a": bits.astype(np.int64)})  # type: ignore[dict-item]


def test_ledger_and_roles() -> None:
    ledger = LeakageLedger()
    ledger.record(Message(Role.BOB, "y", disclosed={"s": np.ones(7, np.uint8)}))
    assert ledger.leaked_bits == 7 and ledger.sent_by[Role.ALICE] == 0
    assert Role.ALICE.peer is Role.BOB and Role.BOB.peer is Role.ALICE


def test_driver_refuses_swapped_roles_and_unfinished_runs() -> None:
    a = _Echo(Role.ALICE, np.ones(3, np.uint8))
    b = _Echo(Role.BOB, np.ones(3, np.uint8))
    with pytest.raises(ReconciliationError, match="swapped"):
        run_local(b, a)
    with pytest.raises(ReconciliationError, match="budget"):
        run_local(_Echo(Role.ALICE, np.ones(3, np.uint8)), b, max_messages=1)


def test_outcome_repr_hides_the_key() -> None:
    out = Outcome(Role.BOB, np.array([1, 1, 0, 1], np.uint8), True, 3, 1)
    assert "key_bits=4" in repr(out) and "1, 1" not in repr(out)


def test_bits_pack_roundtrip() -> None:
    bits = np.random.default_rng(0).integers(0, 2, 77, dtype=np.uint8)
    np.testing.assert_array_equal(unpack_bits(pack_bits(bits), 77), bits)
