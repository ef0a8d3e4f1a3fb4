"""Cascade, vectorised over all blocks at once, with optional BICONF, leakage counted both ways.

Cascade (Brassard & Salvail 1993; parameters of Martinez-Mateo et al.,
"Demystifying the information reconciliation protocol Cascade",
arXiv:1407.3257): in pass i the key, permuted by a public random
permutation, is cut into blocks of k_i bits (k_1 = ⌈0.73/q⌉, k_{i+1} = 2k_i);
a block whose parities differ holds an odd number of errors and a binary
search finds one; every corrected bit flips the error parity of the block
that holds it in every other pass, which may open new searches (the cascade).
BICONF (Buttler et al., PRA 67, 052303 (2003)) then compares the parity of
random half-size subsets until ``biconf_streak`` of them in a row agree,
searching and cascading on a mismatch.

Vectorisation: every binary search in progress advances by one step per
round trip — one message from Alice with the parity of the left half of
every active range, one reply from Bob — so a round costs O(bits touched)
numpy work instead of one message per parity.

Leakage, both directions (Tupkary & Lütkenhaus, arXiv:2307.00576): each of
Alice's parities is one disclosed bit, and so is each of Bob's answers (the
parity of his range, sent as "mismatch"), since it depends on his key. The
positions queried next are a public function of what was already disclosed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qkdd.postprocessing.reconciliation.base import (
    Bits,
    Message,
    Outcome,
    Party,
    ReconciliationError,
    Role,
)

Index = npt.NDArray[np.int64]

#: Smallest QBER used to size blocks.
MIN_QBER = 0.002


@dataclass(frozen=True)
class CascadeParams:
    """Public protocol parameters (both ends must use the same)."""

    passes: int = 4
    first_block_factor: float = 0.73
    biconf_streak: int = 0

    def first_block(self, qber: float) -> int:
        return max(2, math.ceil(self.first_block_factor / max(qber, MIN_QBER)))


#: Original Cascade (4 passes, k₁ = 0.73/q, doubling).
ORIGINAL = CascadeParams()
#: Cascade followed by BICONF until 10 random-subset parities in a row agree.
WITH_BICONF = CascadeParams(passes=4, first_block_factor=0.73, biconf_streak=10)


class _State:
    """The public state of a Cascade run, kept identically at both ends."""

    def __init__(self, n: int, qber: float, params: CascadeParams, seed: int) -> None:
        self.n = n
        self.params = params
        self.rng = np.random.default_rng(seed)
        self.k1 = params.first_block(qber)
        self.orders: list[Index] = []
        self.inverse: list[Index] = []
        self.block: list[int] = []
        self.err_parity: list[npt.NDArray[np.uint8]] = []
        self.searching: list[npt.NDArray[np.bool_]] = []
        # Active binary searches: range [lo, hi) of pass `s_pass`'s order, odd error parity.
        self.s_pass: Index = np.zeros(0, dtype=np.int64)
        self.s_lo: Index = np.zeros(0, dtype=np.int64)
        self.s_hi: Index = np.zeros(0, dtype=np.int64)
        self.normal_passes_started = 0
        self.clean_biconf = 0
        self.pending_kind = ""
        self.corrections: list[Index] = []

    # -- passes -------------------------------------------------------------
    def _add_pass(self, order: Index, block: int) -> int:
        inv = np.full(self.n, -1, dtype=np.int64)
        inv[order] = np.arange(order.size, dtype=np.int64)
        blocks = -(-order.size // block)
        self.orders.append(order)
        self.inverse.append(inv)
        self.block.append(block)
        self.err_parity.append(np.zeros(blocks, dtype=np.uint8))
        self.searching.append(np.zeros(blocks, dtype=bool))
        return len(self.orders) - 1

    def next_request(self) -> tuple[str, Index, Index, Index]:
        """The ranges whose parities Alice discloses next: (kind, pass, lo, hi)."""
        if self.s_pass.size:
            mid = (self.s_lo + self.s_hi) // 2
            return "search", self.s_pass, self.s_lo, mid
        if self.normal_passes_started < self.params.passes:
            k = self.k1 << self.normal_passes_started
            q = self._add_pass(self.rng.permutation(self.n), k)
            self.normal_passes_started += 1
            starts = np.arange(0, self.n, k, dtype=np.int64)
            ends = np.minimum(starts + k, self.n)
            return "blocks", np.full(starts.size, q, dtype=np.int64), starts, ends
        if self.clean_biconf < self.params.biconf_streak:
            subset = np.flatnonzero(self.rng.integers(0, 2, self.n, dtype=np.uint8)).astype(
                np.int64
            )
            if subset.size == 0:
                subset = np.array([int(self.rng.integers(self.n))], dtype=np.int64)
            q = self._add_pass(self.rng.permutation(subset), subset.size)
            return "biconf", np.array([q]), np.array([0]), np.array([subset.size])
        return "done", np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)

    # -- public update from Bob's answers -----------------------------------
    def advance(
        self, kind: str, passes: Index, lo: Index, hi: Index, odd: npt.NDArray[np.uint8]
    ) -> Index:
        """Apply one round's answers; returns the positions Bob must flip."""
        found: list[Index] = []
        if kind == "search":
            left_odd = odd.astype(bool)
            mid = hi
            new_lo = np.where(left_odd, self.s_lo, mid)
            new_hi = np.where(left_odd, mid, self.s_hi)
            done = new_hi - new_lo == 1
            for q in np.unique(self.s_pass[done]):
                sel = done & (self.s_pass == q)
                found.append(self.orders[int(q)][new_lo[sel]])
                self.searching[int(q)][new_lo[sel] // self.block[int(q)]] = False
            keep = ~done
            self.s_pass, self.s_lo, self.s_hi = self.s_pass[keep], new_lo[keep], new_hi[keep]
        else:
            q = int(passes[0])
            self.err_parity[q][:] = odd
            if kind == "biconf":
                self.clean_biconf = 0 if odd[0] else self.clean_biconf + 1
        # Searches in different passes can land on the same erroneous bit in the
        # same round: it is one correction, applied (and cascaded) once.
        flips = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
        all_flips = [flips]
        while True:
            self._apply(flips)
            flips = self._open_searches()
            if flips.size == 0:
                break
            all_flips.append(flips)
        return np.concatenate(all_flips)

    def _apply(self, flips: Index) -> None:
        """Each corrected bit toggles the error parity of its block in every pass."""
        if flips.size == 0:
            return
        cancel = np.zeros(self.s_pass.size, dtype=np.int64)
        for q in range(len(self.orders)):
            idx = self.inverse[q][flips]
            idx = idx[idx >= 0]
            if idx.size == 0:
                continue
            blocks = idx // self.block[q]
            np.bitwise_xor.at(self.err_parity[q], blocks, 1)
            in_q = np.flatnonzero(self.s_pass == q)
            if in_q.size:
                # A flip inside an active range toggles the range's known parity
                # (at most one search per block, and it lies inside its block).
                of_block = np.full(self.err_parity[q].size, -1, dtype=np.int64)
                of_block[self.s_lo[in_q] // self.block[q]] = in_q
                s = of_block[blocks]
                hit = s >= 0
                s, at = s[hit], idx[hit]
                inside = (at >= self.s_lo[s]) & (at < self.s_hi[s])
                np.add.at(cancel, s[inside], 1)
        drop = (cancel & 1).astype(bool)
        if drop.any():
            for q, lo in zip(self.s_pass[drop], self.s_lo[drop], strict=True):
                self.searching[int(q)][int(lo) // self.block[int(q)]] = False
            keep = ~drop
            self.s_pass, self.s_lo, self.s_hi = self.s_pass[keep], self.s_lo[keep], self.s_hi[keep]

    def _open_searches(self) -> Index:
        """Start a search on every odd block without one; one-bit blocks correct at once."""
        new_p, new_lo, new_hi, direct = [], [], [], []
        for q in range(len(self.orders)):
            odd = np.flatnonzero((self.err_parity[q] == 1) & ~self.searching[q])
            if odd.size == 0:
                continue
            lo = odd * self.block[q]
            hi = np.minimum(lo + self.block[q], self.orders[q].size)
            single = hi - lo == 1
            if single.any():
                direct.append(self.orders[q][lo[single]])
            many = ~single
            self.searching[q][odd[many]] = True
            new_p.append(np.full(int(many.sum()), q, dtype=np.int64))
            new_lo.append(lo[many])
            new_hi.append(hi[many])
        if new_p:
            self.s_pass = np.concatenate([self.s_pass, *new_p])
            self.s_lo = np.concatenate([self.s_lo, *new_lo])
            self.s_hi = np.concatenate([self.s_hi, *new_hi])
        return np.unique(np.concatenate(direct)) if direct else np.zeros(0, dtype=np.int64)

    def parities(self, key: Bits, passes: Index, lo: Index, hi: Index) -> Bits:
        """Parity of key over order[pass][lo:hi] for every requested range."""
        out = np.zeros(passes.size, dtype=np.uint8)
        for q in np.unique(passes):
            sel = np.flatnonzero(passes == q)
            order = self.orders[int(q)]
            lengths = hi[sel] - lo[sel]
            total = int(lengths.sum())
            starts = np.cumsum(lengths) - lengths
            idx = np.arange(total, dtype=np.int64) - np.repeat(starts - lo[sel], lengths)
            bits = key[order[idx]]
            out[sel] = np.bitwise_xor.reduceat(bits, starts) if total else 0
        return out


class _CascadeParty(Party):
    def __init__(self, role: Role, key: Bits) -> None:
        super().__init__(role)
        self._key = np.array(key, dtype=np.uint8, copy=True)
        self._state: _State | None = None
        self._request: tuple[str, Index, Index, Index] | None = None
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    def outcome(self) -> Outcome:
        if not self._done:
            raise ReconciliationError(f"{self.role.value} has not finished")
        return Outcome(
            role=self.role,
            key=self._key,
            success=True,
            leaked_bits=self.ledger.leaked_bits,
            round_trips=self.ledger.round_trips,
        )


class CascadeAlice(_CascadeParty):
    """Alice's end: discloses the parities the public state asks for."""

    def __init__(
        self,
        key: Bits,
        qber: float,
        *,
        params: CascadeParams = WITH_BICONF,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(Role.ALICE, key)
        # Alice's key never changes: prefix XORs per pass make any range's parity O(1).
        self._prefix: dict[int, Bits] = {}
        self._qber = float(qber)
        self._params = params
        self._random_bytes = random_bytes

    def _start(self) -> Message:
        seed = int.from_bytes(self._random_bytes(8), "little")
        self._state = _State(self._key.size, self._qber, self._params, seed)
        msg = self._ask()
        assert msg is not None
        return Message(
            sender=Role.ALICE,
            kind=msg.kind,
            disclosed=msg.disclosed,
            public={
                **msg.public,
                "seed": seed,
                "qber": self._qber,
                "passes": self._params.passes,
                "first_block_factor": self._params.first_block_factor,
                "biconf_streak": self._params.biconf_streak,
            },
        )

    def _ask(self) -> Message | None:
        assert self._state is not None
        self._request = self._state.next_request()
        kind, passes, lo, hi = self._request
        if kind == "done":
            self._done = True
            return None
        return Message(
            sender=Role.ALICE,
            kind=f"cascade.{kind}",
            disclosed={"parities": self._parities(passes, lo, hi)},
            public={"ranges": int(passes.size)},
        )

    def _parities(self, passes: Index, lo: Index, hi: Index) -> Bits:
        assert self._state is not None
        out = np.zeros(passes.size, dtype=np.uint8)
        for q in np.unique(passes):
            qi = int(q)
            if qi not in self._prefix:
                ordered = self._key[self._state.orders[qi]]
                self._prefix[qi] = np.concatenate(
                    [np.zeros(1, dtype=np.uint8), np.bitwise_xor.accumulate(ordered)]
                )
            sel = np.flatnonzero(passes == q)
            prefix = self._prefix[qi]
            out[sel] = prefix[hi[sel]] ^ prefix[lo[sel]]
        return out

    def _receive(self, message: Message) -> Message | None:
        if message.kind != "cascade.answer" or self._request is None or self._state is None:
            raise ReconciliationError(f"Alice did not expect {message.kind!r}")
        odd = message.disclosed["mismatch"]
        kind, passes, lo, hi = self._request
        if odd.size != passes.size:
            raise ReconciliationError("answer does not match the request")
        self._state.advance(kind, passes, lo, hi, odd)
        return self._ask()


class CascadeBob(_CascadeParty):
    """Bob's end: answers each parity with his own, corrects the bits the searches find."""

    def __init__(self, key: Bits) -> None:
        super().__init__(Role.BOB, key)

    def _receive(self, message: Message) -> Message:
        if self._state is None:
            pub = message.public
            params = CascadeParams(
                passes=int(pub["passes"]),
                first_block_factor=float(pub["first_block_factor"]),
                biconf_streak=int(pub["biconf_streak"]),
            )
            self._state = _State(
                self._key.size,
                float(pub["qber"]),
                params,
                int(pub["seed"]),
            )
        request = self._state.next_request()
        kind, passes, lo, hi = request
        if message.kind != f"cascade.{kind}":
            raise ReconciliationError(f"Bob expected cascade.{kind}, got {message.kind!r}")
        theirs = message.disclosed["parities"]
        if theirs.size != passes.size:
            raise ReconciliationError("parities do not match the request")
        odd = theirs ^ self._state.parities(self._key, passes, lo, hi)
        flips = self._state.advance(kind, passes, lo, hi, odd)
        np.bitwise_xor.at(self._key, flips, 1)
        # Bob knows he is done when the public state has nothing more to ask.
        self._done = not self._state.s_pass.size and (
            self._state.normal_passes_started >= self._state.params.passes
            and self._state.clean_biconf >= self._state.params.biconf_streak
        )
        return Message(sender=Role.BOB, kind="cascade.answer", disclosed={"mismatch": odd})
