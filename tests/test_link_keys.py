"""Block keys and the durable steps of the two-phase commit, with real state stores that
are closed and reopened as a crash would leave them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qkdd.auth import UNIT_BITS, ReplenishmentRule
from qkdd.link.keys import BlockKeys, KeyMetadata, key_id, split_block
from qkdd.store import BlockState, Direction, KeyState, KeyStore
from tests.authpair import LINK, End, bootstrap, handshake, open_end

META = KeyMetadata(qber=0.02, eps_sec=1e-10, eps_cor=1e-15, eps_auth=1e-20, simulated=True)
RULE = ReplenishmentRule(floor_units=300)


def _ends(tmp_path: Path) -> tuple[Path, Path]:
    return bootstrap(tmp_path, units=256)


def _keys(end: End) -> BlockKeys:
    return BlockKeys(end.store, end.session, link=LINK, slots=("kms", "app"))


def test_key_ids_deterministic_and_distinct() -> None:
    a = key_id(LINK, "s1", 3, 0)
    assert a == key_id(LINK, "s1", 3, 0)
    assert (
        len({a, key_id(LINK, "s1", 3, 1), key_id(LINK, "s2", 3, 0), key_id("x", "s1", 3, 0)}) == 4
    )


@pytest.mark.parametrize("ell", [0, 100, 128 * 44, 128 * 44 + 255, 128 * 44 + 256 * 3 + 17])
def test_split_rule(ell: int) -> None:
    need = {Direction.ALICE_TO_BOB: 20, Direction.BOB_TO_ALICE: 24}
    split = split_block(ell, need, 256, RULE)
    assert split.replenishment.bits + split.delivered_bits + split.leftover_bits == ell
    assert 0 <= split.leftover_bits < 256 or split.keys == 0
    assert split.replenishment.bits <= 44 * UNIT_BITS


def _stage_both(
    alice: BlockKeys, bob: BlockKeys, block_id: int, key: np.ndarray, need_ab: int = 10
) -> int:
    alice.keys.allocate_block(LINK)
    bob.keys.adopt_block(LINK, block_id)
    need = {Direction.ALICE_TO_BOB: need_ab, Direction.BOB_TO_ALICE: 3}
    split = split_block(key.size, need, 256, RULE)
    n = alice.stage(block_id, key, split, META)
    assert bob.stage(block_id, key.copy(), split, META) == n
    return n


def test_commit_gives_identical_keys_and_refills_both_streams(tmp_path: Path) -> None:
    alice_dir, bob_dir = _ends(tmp_path)
    a, b = open_end(alice_dir, "alice"), open_end(bob_dir, "bob")
    try:
        handshake(a.session, b.session)
        ak, bk = _keys(a), _keys(b)
        key = np.random.default_rng(1).integers(0, 2, 13 * 128 + 256 * 5 + 9, dtype=np.uint8)
        before = (a.session.levels(), b.session.levels())
        assert _stage_both(ak, bk, 1, key) == 5
        assert [k.state for k in ak.keys.list()] == [KeyState.PENDING] * 5
        assert ak.commit(1) == 5 and bk.commit(1) == 5
        la, lb = ak.keys.list(), bk.keys.list()
        assert [k.key_id for k in la] == [k.key_id for k in lb]
        assert [k.consumer_slot for k in la] == ["kms", "app", "kms", "app", "kms"]
        for meta in la:
            assert ak.keys.material(meta.key_id) == bk.keys.material(meta.key_id)
        # Key 0 starts right after the 13 refill units.
        expect = bytes(np.packbits(key[13 * 128 : 13 * 128 + 256]))
        assert bytes(ak.keys.material(la[0].key_id)) == expect
        after = (a.session.levels(), b.session.levels())
        for end in range(2):
            assert after[end][Direction.ALICE_TO_BOB] == before[end][Direction.ALICE_TO_BOB] + 10
            assert after[end][Direction.BOB_TO_ALICE] == before[end][Direction.BOB_TO_ALICE] + 3
        assert ak.blocks_in(BlockState.COMMITTED) == [1]
    finally:
        a.close()
        b.close()


def test_abort_erases_and_block_ids_never_reused(tmp_path: Path) -> None:
    alice_dir, bob_dir = _ends(tmp_path)
    a, b = open_end(alice_dir, "alice"), open_end(bob_dir, "bob")
    try:
        ak, bk = _keys(a), _keys(b)
        key = np.ones(2000, np.uint8)
        _stage_both(ak, bk, 1, key)
        ak.abort(1, "test")
        bk.abort(1, "test")
        assert ak.keys.list() == [] and bk.keys.list() == []
        assert ak.keys.block_state(1) is BlockState.ABORTED
        assert ak.secrets.get("replenish:block:1") is None
        assert ak.keys.allocate_block(LINK) == 2
        with pytest.raises(Exception, match="already used"):
            bk.keys.adopt_block(LINK, 1)
    finally:
        a.close()
        b.close()


def test_participant_that_voted_adopts_commit_after_restart(tmp_path: Path) -> None:
    """Bob voted yes, Alice decided commit, Bob crashed before hearing it."""
    alice_dir, bob_dir = _ends(tmp_path)
    a, b = open_end(alice_dir, "alice"), open_end(bob_dir, "bob")
    ak, bk = _keys(a), _keys(b)
    key = np.random.default_rng(2).integers(0, 2, 3000, dtype=np.uint8)
    _stage_both(ak, bk, 1, key)
    ak.commit(1)
    b.close()  # crash
    b = open_end(bob_dir, "bob")
    try:
        bk = _keys(b)
        assert bk.recover_as_participant() == [1]
        assert ak.decision_for(1) is True
        bk.commit(1)
        assert [k.key_id for k in bk.keys.list(KeyState.COMMITTED)] == [
            k.key_id for k in ak.keys.list(KeyState.COMMITTED)
        ]
    finally:
        a.close()
        b.close()


def test_no_record_means_abort_at_both_ends(tmp_path: Path) -> None:
    """Alice crashed after Bob voted, before deciding: she aborts; Bob adopts it."""
    alice_dir, bob_dir = _ends(tmp_path)
    a, b = open_end(alice_dir, "alice"), open_end(bob_dir, "bob")
    ak, bk = _keys(a), _keys(b)
    _stage_both(ak, bk, 1, np.ones(3000, np.uint8))
    a.close()
    a = open_end(alice_dir, "alice")
    try:
        ak = _keys(a)
        assert ak.recover_as_coordinator() == [1]
        assert bk.recover_as_participant() == [1]
        assert ak.decision_for(1) is False
        bk.abort(1, "coordinator decided abort")
        assert ak.keys.list() == [] and bk.keys.list() == []
        # An unknown block (never recorded at Alice) is an abort too.
        assert ak.decision_for(99) is False
    finally:
        a.close()
        b.close()


def test_refill_finished_after_crash_between_commit_and_refill(tmp_path: Path) -> None:
    alice_dir, bob_dir = _ends(tmp_path)
    a, b = open_end(alice_dir, "alice"), open_end(bob_dir, "bob")
    try:
        ak, bk = _keys(a), _keys(b)
        _stage_both(ak, bk, 1, np.ones(3000, np.uint8))
        before = a.session.levels()[Direction.ALICE_TO_BOB]
        KeyStore(a.store).commit_block(1)  # the decision, then a crash before the refill
        ak.finish_replenishments()
        ak.finish_replenishments()  # idempotent
        assert a.session.levels()[Direction.ALICE_TO_BOB] == before + 10
        assert ak.secrets.get("replenish:block:1") is None
    finally:
        a.close()
        b.close()
