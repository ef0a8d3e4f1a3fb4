"""A block's secret key into stored keys, and the two-phase commit's durable steps.

One deterministic rule at both ends (DESIGN §4, §5):

1. the first ``plan.bits`` bits of the block's ℓ secret bits refill the
   authentication streams (A→B units first), with the ``need`` that Alice
   computed and sent in the authenticated prepare message;
2. the rest is cut into keys of ``key_size`` bits, key i going to consumer slot
   i mod (number of slots); the leftover (ℓ − plan.bits) mod key_size bits are
   discarded at both ends (they are never stored, so no end holds more key than
   the other);
3. key ids are UUIDv5 of (link, secret id, block id, index): authenticated data
   only, identical at both ends.

Commit steps, each one durable transaction: ``stage`` stores the keys pending
and the replenishment prefix (Bob: this is his yes vote); ``commit`` marks the
block committed (at Alice this *is* the coordinator's decision record), then
refills the streams; only then are the keys deliverable. ``abort`` erases
everything of the block. A crash between commit and refill is finished by
:meth:`BlockKeys.finish_replenishments` at start.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qkdd.auth import AuthSession, ReplenishmentPlan, ReplenishmentRule
from qkdd.logging import get_logger
from qkdd.store import BlockState, Direction, KeyStore, NewKey, SecretStore, StateStore

KEY_ID_NAMESPACE = uuid.UUID("6f1d3c52-8a43-5e0b-9d2e-4b7a1c0e5f21")
_REPLENISH_PREFIX = "replenish:block:"
_REPLENISH_KIND = "auth-replenishment"

_log = get_logger("link.keys")

Bits = npt.NDArray[np.uint8]


def key_id(link: str, secret_id: str, block_id: int, index: int) -> str:
    """The key's id: UUIDv5 of authenticated data only, identical at both ends."""
    return str(uuid.uuid5(KEY_ID_NAMESPACE, f"qkdd-key/{link}/{secret_id}/{block_id}/{index}"))


@dataclass(frozen=True)
class KeySplit:
    """How a block's ℓ secret bits are used: refill, keys, discarded leftover."""

    secret_bits: int
    replenishment: ReplenishmentPlan
    key_size: int
    keys: int

    @property
    def leftover_bits(self) -> int:
        return self.secret_bits - self.replenishment.bits - self.keys * self.key_size

    @property
    def delivered_bits(self) -> int:
        return self.keys * self.key_size


def split_block(
    secret_bits: int, need: Mapping[Direction, int], key_size: int, rule: ReplenishmentRule
) -> KeySplit:
    """The deterministic split of ℓ bits (both ends call it with the same arguments)."""
    plan = rule.plan(secret_bits, need)
    rest = max(0, secret_bits - plan.bits)
    return KeySplit(secret_bits, plan, key_size, rest // key_size)


@dataclass(frozen=True)
class KeyMetadata:
    """What every key of a block carries besides its bits (agreed in the prepare)."""

    qber: float
    eps_sec: float
    eps_cor: float
    eps_auth: float
    simulated: bool


class BlockKeys:
    """The key store side of a link end: stage, commit, abort, recover."""

    def __init__(
        self,
        store: StateStore,
        session: AuthSession,
        *,
        link: str,
        slots: Sequence[str],
    ) -> None:
        if not slots:
            raise ValueError("at least one consumer slot")
        self.store = store
        self.session = session
        self.keys = KeyStore(store)
        self.secrets = SecretStore(store)
        self.link = link
        self.slots = tuple(slots)

    # -- blocks ---------------------------------------------------------------------

    def blocks_in(self, *states: BlockState) -> list[int]:
        marks = ",".join("?" for _ in states)
        rows = self.store.conn.execute(
            f"SELECT block_id FROM blocks WHERE link = ? AND state IN ({marks}) ORDER BY block_id",
            (self.link, *[str(s) for s in states]),
        ).fetchall()
        return [int(r[0]) for r in rows]

    # -- two-phase commit -------------------------------------------------------------

    def stage(self, block_id: int, secret_key: Bits, split: KeySplit, meta: KeyMetadata) -> int:
        """Store the block's keys as pending and its refill prefix, in one durable
        transaction (a participant's yes vote). Returns the number of keys."""
        if secret_key.size != split.secret_bits:
            raise ValueError("the secret key does not have ℓ bits")
        prefix_bits = split.replenishment.bits
        new_keys: list[NewKey] = []
        packed: list[bytearray] = []
        try:
            for i in range(split.keys):
                start = prefix_bits + i * split.key_size
                material = bytearray(np.packbits(secret_key[start : start + split.key_size]))
                packed.append(material)
                new_keys.append(
                    NewKey(
                        key_id=key_id(self.link, self.session.secret_id, block_id, i),
                        link=self.link,
                        block_id=block_id,
                        index=i,
                        bits=split.key_size,
                        material=material,
                        qber=meta.qber,
                        eps_sec=meta.eps_sec,
                        eps_cor=meta.eps_cor,
                        eps_auth=meta.eps_auth,
                        simulated=meta.simulated,
                        consumer_slot=self.slots[i % len(self.slots)],
                    )
                )
            prefix = bytearray(np.packbits(secret_key[:prefix_bits]))
            packed.append(prefix)
            with self.store.transaction(durable=True):
                self.keys.add_pending(block_id, new_keys)
                if prefix_bits:
                    plan = split.replenishment
                    self.secrets.put(
                        f"{_REPLENISH_PREFIX}{block_id}",
                        f"{_REPLENISH_KIND}:{plan.units_ab}:{plan.units_ba}",
                        self.session.secret_id,
                        prefix,
                    )
        finally:
            for buf in packed:
                buf[:] = bytes(len(buf))
        return len(new_keys)

    def commit(self, block_id: int) -> int:
        """pending → committed (durable: at Alice this is the decision), then refill the
        authentication streams; returns the number of keys now deliverable."""
        count = self.keys.commit_block(block_id)
        self._replenish(block_id)
        _log.info("block committed", block_id=block_id, key_count=count)
        return count

    def abort(self, block_id: int, reason: str) -> None:
        """Erase every key of the block and record the abort (never a committed one)."""
        state = self.keys.block_state(block_id)
        if state is None or state in (BlockState.ABORTED, BlockState.COMMITTED):
            return
        with self.store.transaction(durable=True):
            self.keys.abort_block(block_id)
            self.secrets.delete(f"{_REPLENISH_PREFIX}{block_id}")
        _log.info("block aborted", block_id=block_id, reason=reason)

    def _replenish(self, block_id: int) -> None:
        name = f"{_REPLENISH_PREFIX}{block_id}"
        row = self.store.conn.execute("SELECT kind FROM secrets WHERE name = ?", (name,)).fetchone()
        found = self.secrets.get(name)
        if row is None or found is None:
            return
        _, ab, ba = str(row[0]).split(":")
        material = found[1]
        need = {Direction.ALICE_TO_BOB: int(ab), Direction.BOB_TO_ALICE: int(ba)}
        try:
            self.session.replenish(block_id, material, 8 * len(material), need)
        finally:
            material[:] = bytes(len(material))
        self.secrets.delete(name)

    def finish_replenishments(self) -> None:
        """After a crash between commit and refill: finish every committed block's refill
        (idempotent per block)."""
        for block_id in self.blocks_in(BlockState.COMMITTED):
            self._replenish(block_id)

    def recover_as_coordinator(self) -> list[int]:
        """Alice at start: a block without a commit record is aborted (the decision)."""
        undecided = self.blocks_in(BlockState.OPEN, BlockState.PENDING)
        for block_id in undecided:
            self.abort(block_id, "coordinator restarted before deciding")
        self.finish_replenishments()
        return undecided

    def recover_as_participant(self) -> list[int]:
        """Bob at start: blocks never voted on are aborted; voted ones (pending) wait for
        the coordinator's answer after the handshake. Returns the pending ones."""
        for block_id in self.blocks_in(BlockState.OPEN):
            self.abort(block_id, "participant restarted before voting")
        self.finish_replenishments()
        return self.blocks_in(BlockState.PENDING)

    def decision_for(self, block_id: int) -> bool:
        """The coordinator's answer to a query: commit only with a commit record; an
        undecided block is decided abort here, durably, before answering."""
        state = self.keys.block_state(block_id)
        if state is BlockState.COMMITTED:
            return True
        if state in (BlockState.OPEN, BlockState.PENDING):
            self.abort(block_id, "participant asked; no commit record")
        return False
