"""What authentication costs and what it is worth: ε_auth, block cost, replenishment.

Poly1305 with a uniformly random r (clamped to 106 free bits) and a one-time
pad s is ε-almost-Δ-universal with ε = 8⌈L/16⌉/2^106 for messages of at most L
bytes (Bernstein, "The Poly1305-AES message-authentication code", FSE 2005,
Theorem 3.3 with the pad in place of AES). Each verification is one forgery
attempt, so a block's ε_auth is that bound summed over every tag checked in
either direction (DESIGN §4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from qkdd.store.streams import DIRECTIONS, UNIT_BYTES, Direction

UNIT_BITS = 8 * UNIT_BYTES
DEFAULT_RESERVE_FLOOR_UNITS = 512
"""Reserve floor per direction: 512 units = 64 kbit, several blocks' worth of tags
at 100 km with 0.1 s frames, so a few aborted blocks cannot drain a stream."""


def forgery_bound(message_bytes: int) -> float:
    """Probability that one forged (message, tag) of at most ``message_bytes`` bytes
    verifies: 8⌈L/16⌉/2^106 (Bernstein 2005, Thm 3.3)."""
    blocks = max(1, math.ceil(message_bytes / 16))
    return 8.0 * blocks / 2.0**106


@dataclass
class EpsAuthLedger:
    """Sum of forgery bounds and key units spent, per direction."""

    eps_auth: float = 0.0
    tags: int = 0
    units: dict[Direction, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))

    def add_tag(self, message_bytes: int) -> None:
        self.tags += 1
        self.eps_auth += forgery_bound(message_bytes)

    def add_units(self, direction: Direction, count: int) -> None:
        self.units[direction] += count

    def absorb(self, other: EpsAuthLedger) -> None:
        self.eps_auth += other.eps_auth
        self.tags += other.tags
        for d in DIRECTIONS:
            self.units[d] += other.units[d]

    def cost(self) -> BlockAuthCost:
        return BlockAuthCost(
            units_ab=self.units[Direction.ALICE_TO_BOB],
            units_ba=self.units[Direction.BOB_TO_ALICE],
            tags=self.tags,
            eps_auth=self.eps_auth,
        )


@dataclass(frozen=True)
class BlockAuthCost:
    """Authentication key a block consumed (both directions) and its ε_auth."""

    units_ab: int
    units_ba: int
    tags: int
    eps_auth: float

    @property
    def bits(self) -> int:
        return UNIT_BITS * (self.units_ab + self.units_ba)

    def net_key_bits(self, key_bits: int) -> int:
        """What the block leaves for delivery once its authentication is paid back."""
        return key_bits - self.bits

    def net_key_negative(self, key_bits: int) -> bool:
        """True when the block costs at least as much authentication key as it yields
        (warning ``net_key_negative``)."""
        return self.net_key_bits(key_bits) <= 0

    def share_of(self, key_bits: int) -> float:
        """Authentication cost as a fraction of the block's key (inf for no key)."""
        return math.inf if key_bits <= 0 else self.bits / key_bits


def estimate_block_cost(
    frames: int,
    *,
    report_batch: int = 1,
    singles_ab: int = 1,
    singles_ba: int = 1,
    report_bytes: int = 4096,
    transcript_bytes_ab: int = 1 << 20,
    transcript_bytes_ba: int = 1 << 20,
) -> BlockAuthCost:
    """Cost of one block under :class:`~qkdd.auth.session.AuthSession`'s rules, for
    planning and the benchmark (the session measures the real figure).

    Per direction: a hash key r and the transcript pad (2 units); Bob→Alice one pad per
    batch of ``report_batch`` frame reports; ``singles_*`` individually tagged messages
    (vote, commit) one pad each.
    """
    reports = math.ceil(frames / report_batch)
    units_ab = 2 + singles_ab
    units_ba = 2 + reports + singles_ba
    eps = (
        forgery_bound(transcript_bytes_ab)
        + forgery_bound(transcript_bytes_ba)
        + reports * forgery_bound(report_bytes * report_batch)
        + (singles_ab + singles_ba) * forgery_bound(256)
    )
    return BlockAuthCost(units_ab, units_ba, 2 + reports + singles_ab + singles_ba, eps)


@dataclass(frozen=True)
class ReplenishmentPlan:
    """Units taken from the front of a committed block's key, A→B first then B→A."""

    units_ab: int
    units_ba: int

    @property
    def bits(self) -> int:
        return UNIT_BITS * (self.units_ab + self.units_ba)

    def units(self, direction: Direction) -> int:
        return self.units_ab if direction is Direction.ALICE_TO_BOB else self.units_ba


@dataclass(frozen=True)
class ReplenishmentRule:
    """The one deterministic rule both ends apply before any key of a committed block
    is delivered: bring each stream back to ``floor_units`` unused units.

    Both ends must feed it the same ``need`` (the coordinator computes it from its
    levels with :meth:`need` and sends it in the authenticated commit message), so the
    split of the block key is identical at both ends.
    """

    floor_units: int = DEFAULT_RESERVE_FLOOR_UNITS

    def need(self, levels: Mapping[Direction, int]) -> dict[Direction, int]:
        return {d: max(0, self.floor_units - levels[d]) for d in DIRECTIONS}

    @staticmethod
    def plan(key_bits: int, need: Mapping[Direction, int]) -> ReplenishmentPlan:
        """Whole units from the front of the key, A→B first, as far as the key goes."""
        available = max(0, key_bits) // UNIT_BITS
        ab = min(max(0, need[Direction.ALICE_TO_BOB]), available)
        ba = min(max(0, need[Direction.BOB_TO_ALICE]), available - ab)
        return ReplenishmentPlan(ab, ba)
