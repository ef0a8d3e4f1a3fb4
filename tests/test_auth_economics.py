"""ε_auth, block cost, reserve floor and the replenishment rule."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qkdd.auth import (
    UNIT_BITS,
    BlockAuthCost,
    EpsAuthLedger,
    ReplenishmentRule,
    estimate_block_cost,
    forgery_bound,
)
from qkdd.store import Direction, StreamStore
from tests.authpair import bootstrap, handshake, open_end


def test_forgery_bound_is_bernsteins_8_ceil_l_over_16_over_2_to_106() -> None:
    assert forgery_bound(1) == 2.0**-103
    assert forgery_bound(16) == 2.0**-103
    assert forgery_bound(17) == 2.0**-102
    assert forgery_bound(10**6) == 8 * 62_500 / 2.0**106
    assert forgery_bound(0) == 2.0**-103  # an empty message still takes one attempt


def test_ledger_sums_bounds_and_units() -> None:
    ledger = EpsAuthLedger()
    for length in (10, 100, 1000):
        ledger.add_tag(length)
    ledger.add_units(Direction.ALICE_TO_BOB, 3)
    ledger.add_units(Direction.BOB_TO_ALICE, 5)
    cost = ledger.cost()
    assert cost.tags == 3
    assert cost.eps_auth == forgery_bound(10) + forgery_bound(100) + forgery_bound(1000)
    assert cost.bits == 8 * UNIT_BITS
    assert cost.net_key_bits(2000) == 2000 - 1024
    assert not cost.net_key_negative(1025)
    assert cost.net_key_negative(1024)
    assert cost.share_of(10240) == pytest.approx(0.1)


levels = st.integers(0, 2000)


@given(key_bits=st.integers(-10, 300_000), ab=levels, ba=levels, floor=st.integers(0, 1500))
def test_replenishment_plan_is_deterministic_bounded_and_fills_a_to_b_first(
    key_bits: int, ab: int, ba: int, floor: int
) -> None:
    rule = ReplenishmentRule(floor_units=floor)
    need = rule.need({Direction.ALICE_TO_BOB: ab, Direction.BOB_TO_ALICE: ba})
    plan = rule.plan(key_bits, need)
    assert plan == ReplenishmentRule(floor_units=floor).plan(key_bits, dict(need))
    assert plan.bits <= max(0, key_bits)
    assert plan.bits % UNIT_BITS == 0
    assert plan.units_ab <= need[Direction.ALICE_TO_BOB]
    assert plan.units_ba <= need[Direction.BOB_TO_ALICE]
    if plan.units_ba > 0:
        assert plan.units_ab == need[Direction.ALICE_TO_BOB]
    if key_bits >= UNIT_BITS * sum(need.values()):
        # Enough key: both streams end exactly at the floor (or above if already there).
        assert ab + plan.units_ab == max(ab, floor)
        assert ba + plan.units_ba == max(ba, floor)


def test_estimate_matches_what_a_session_actually_spends(tmp_path: Path) -> None:
    alice_dir, bob_dir = bootstrap(tmp_path, units=512)
    alice, bob = open_end(alice_dir, "alice"), open_end(bob_dir, "bob")
    a, b = alice.session, bob.session
    handshake(a, b)
    costs = []
    for block_id in (1, 2):  # block 1 also carries the handshake; block 2 is steady state
        ab, bb = a.begin_block(block_id), b.begin_block(block_id)
        for frame in range(7):
            report = secrets.token_bytes(100)
            ab.verify(report, bb.tag(report))
            ab.record_sent(b"sift %d" % frame)
            bb.record_received(b"sift %d" % frame)
        ab.verify_transcript(bb.transcript_tag())
        bb.verify_transcript(ab.transcript_tag())
        a.verify(b"vote yes", b.tag(b"vote yes"))
        b.verify(b"commit", a.tag(b"commit"))
        assert ab.cost() == bb.cost()
        costs.append(ab.cost())
    estimate = estimate_block_cost(7)
    assert (costs[1].units_ab, costs[1].units_ba, costs[1].tags) == (
        estimate.units_ab,
        estimate.units_ba,
        estimate.tags,
    )
    assert costs[1].bits == UNIT_BITS * (3 + 10)
    # Batching Bob's reports (Alice waits for the batch) saves pads.
    assert estimate_block_cost(7, report_batch=4).units_ba == 2 + 2 + 1


def test_replenishment_refills_both_streams_identically_and_once(tmp_path: Path) -> None:
    alice_dir, bob_dir = bootstrap(tmp_path, units=64)
    rule = ReplenishmentRule(floor_units=200)
    alice = open_end(alice_dir, "alice", rule=rule, reserve_ahead=2)
    bob = open_end(bob_dir, "bob", rule=rule, reserve_ahead=2)
    a, b = alice.session, bob.session
    handshake(a, b)
    need = a.replenishment_need()
    assert need == b.replenishment_need()
    block_key = bytearray(secrets.token_bytes(8000))
    key_bits = 8 * len(block_key) - 3
    copy_a, copy_b = bytearray(block_key), bytearray(block_key)
    plan = a.replenish(7, copy_a, key_bits, need)
    assert b.replenish(7, copy_b, key_bits, need) == plan
    assert plan.units_ab == need[Direction.ALICE_TO_BOB] > 0
    assert copy_a[: plan.bits // 8] == bytes(plan.bits // 8)  # taken part overwritten
    assert copy_a[plan.bits // 8 :] == block_key[plan.bits // 8 :]
    assert a.levels() == {Direction.ALICE_TO_BOB: 200, Direction.BOB_TO_ALICE: 200}
    # Applying the same block again (a crash before the keys were committed) is a no-op.
    assert a.replenish(7, bytearray(block_key), key_bits, need) == plan
    assert StreamStore(alice.store).stream(Direction.ALICE_TO_BOB).appended == 64 + plan.units_ab
    # Run both streams well into the replenished material: tags still verify.
    for i in range(150):
        b.verify(b"%d" % i, a.tag(b"%d" % i))
        a.verify(b"%d" % i, b.tag(b"%d" % i))
    assert a.tx.position > 64 and a.rx.position > 64


def test_cost_share_and_net_key_negative() -> None:
    cost = BlockAuthCost(units_ab=3, units_ba=90, tags=95, eps_auth=1e-28)
    assert cost.bits == 93 * 128
    assert cost.net_key_negative(10_000)
    assert not cost.net_key_negative(20_000)
    assert cost.share_of(0) == float("inf")
