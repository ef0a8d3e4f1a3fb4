"""Rate-adaptive one-way LDPC reconciliation (the production reconciler).

Protocol (Slepian–Wolf syndrome coding with rate adaptation, Elkouss,
Martinez-Mateo, Lancho & Martin, arXiv:1006.2660; blind retries as in
Martinez-Mateo et al., QIC 12, 791 (2012)):

1. Alice splits her key into frames. Each frame is one codeword of a shipped
   mother code (n bits, m checks): k key bits, p punctured positions filled
   with fresh secret random bits, s shortened positions fixed to 0 and known
   to both. From the public QBER estimate q she picks, per frame, the code and
   (p, s) such that the leakage m − p equals ⌈f₀·k·h(q)⌉. She sends the
   syndromes. Leakage: m bits, of which p are masked by the punctured random
   bits — the punctured columns have full rank by construction (untainted
   puncturing, see tools/make_ldpc_codes.py), so the syndrome is a function
   of m − p key-dependent bits plus independent uniform noise: λ += m − p.
2. Bob decodes every frame (layered sum-product, :mod:`.decoder`; a decode
   caught in a trapping set is freed locally by :func:`.decoder.rescue`) and
   answers one success bit per frame (λ += 1 per frame and attempt: the
   outcome depends on the error pattern).
3. For failed frames Alice reveals more bits — first the values of punctured
   positions (each one removes one bit of credit: λ += 1), then key bits —
   and Bob decodes again, continuing from the messages where his last
   attempt stopped (12–17 % less decoding time, f unchanged or lower; the
   revealed bits enter as known LLRs; a last attempt that fails so is
   decoded afresh before its frame is dropped). At most ``MAX_ATTEMPTS`` = 3
   attempts, so ≤ 3 round trips; frames still failing are dropped at both
   ends (their leakage still counts).

λ_EC = Σ (m − p) + revealed bits + one status bit per frame and attempt.
Verification (:mod:`qkdd.postprocessing.verification`) then decides.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qkdd.postprocessing.entropy import binary_entropy
from qkdd.postprocessing.reconciliation.base import (
    Bits,
    Message,
    Outcome,
    Party,
    ReconciliationError,
    Role,
)
from qkdd.postprocessing.reconciliation.codebook import LdpcCode, shipped_codes
from qkdd.postprocessing.reconciliation.decoder import (
    DEFAULT_MAX_ITERATIONS,
    FINAL_STALL_ITERATIONS,
    KNOWN_LLR,
    STALL_ITERATIONS,
    decode_from,
    rescue,
)

MAX_ATTEMPTS = 3
#: Extra leakage of the second attempt, as a fraction of k·h(q) of the frame,
#: by QBER (linear interpolation); the third attempt reveals twice as much
#: again. A frame's need (the f₀ at which it would decode at once) spreads by
#: sd σ ≈ 0.026 / 0.020 / 0.029 / 0.014 / 0.022 of k·h(q) at 1 / 2 / 3 / 5 /
#: 8 % (its own error count fluctuates; tools/ldpc_needs.py, see _F0_TABLE),
#: but its tail is heavier than a normal one: on the earlier codes, steps of
#: about 1.5σ, whose last attempt reaches 4σ above the mean, dropped 1 of
#: 1000, 2 of 3000 and 14 of 3000 frames at 1 / 2 / 5 %. The steps below,
#: with the codes shipped since the fourth session, dropped 1 of 4000 frames
#: at 1 %, none of 4000 at 2 % and none of 2000 at 5 % (f 1.158 / 1.104 /
#: 1.078 over 2000 of them; bench_reconciliation.ldpc_fer). 8 % and 11 %,
#: not measured so, keep 0.06.
_RETRY_TABLE = (
    (0.01, 0.035),
    (0.02, 0.035),
    (0.03, 0.045),
    (0.05, 0.04),
    (0.08, 0.06),
    (0.11, 0.06),
)
#: Key bits of the frames the retry table was measured on.
_RETRY_FRAME_BITS = 90_910
#: Frames are not split below this many key bits.
MIN_FRAME_KEY_BITS = 1024
#: Smallest QBER used to size a frame (an estimate of 0 still needs some syndrome).
MIN_QBER = 0.002
#: Starting efficiency f₀ by QBER, measured on the shipped codes with
#: tools/ldpc_needs.py (40 frames of 90 910 key bits at 1 / 2 / 5 %, 32 frames
#: at 3 % and 8 %): the need — the smallest f₀ at which a frame decodes at its
#: first attempt — has mean 1.139 / 1.083 / 1.097 / 1.061 / 1.084 at
#: 1 / 2 / 3 / 5 / 8 % (the density-evolution-optimised codes at 1, 2 and 5 %;
#: 1.169 / 1.094 / 1.081 with the codes before them). With the retry steps of
#: _RETRY_TABLE, the f₀ minimising the expected leakage while the last
#: attempt reaches ≥ 4 sd above the mean need is about the mean itself.
#: 3 % and 8 % (65 536-bit codes) keep the earlier calibration, 11 % too (need
#: max 1.097). At 5 % f₀ sits above the mean need, for speed: on 3 keys of
#: 10^6 bits 1.065 gave f 1.079 at 0.78 Mbit/s per core, 1.085 gave 1.086 at
#: 1.25 (first attempts near the mean need run up to 60 iterations, and half
#: of them fail); 1 of 3000 frames failed so, a trapping set that
#: :func:`~.decoder.rescue` now frees. Linear interpolation in between.
_F0_TABLE = ((0.01, 1.135), (0.02, 1.08), (0.03, 1.085), (0.05, 1.085), (0.08, 1.08), (0.11, 1.08))
#: Mother codes at least this long are calibrated by :data:`_F0_LONG_TABLE`.
LONG_CODE_BITS = 200_000
#: f₀ for frames on the 204 800-bit codes (200 000 key bits as a 10^6-bit key
#: at 2 % is laid out; rates 0.9078 and 0.8405, the only ones shipped at that
#: length, serve QBER ≲ 2.2 %). Their need has mean 1.083 / 1.081 and sd
#: 0.020 / 0.012 at 1 / 2 % (20 and 40 frames). Chosen on 6 keys of 10^6 bits
#: laid out on them for f and speed together (benchmarks/bench_reconciliation.py):
#: at 2 % f₀ = 1.085 gave f 1.090 at 1.01 Mbit/s per core and 1.09 gave 1.095
#: at 1.11 (0 of 6000 frames failed, bench_reconciliation.ldpc_fer, seeds 99
#: and 7); at 1 % 1.085 gave 1.097 at 0.94 and 1.095 gave 1.103 at 1.20
#: (10^6-bit keys at 1 % run on the megabit code instead).
_F0_LONG_TABLE = ((0.01, 1.095), (0.02, 1.09))
#: Mother codes at least this long are calibrated by :data:`_F0_MEGABIT_TABLE`.
MEGABIT_CODE_BITS = 1_000_000
#: f₀ for frames on the megabit code (the 204 800-bit rate-0.9078 graph
#: lifted by 5, n = 1 024 000; a key of 10^6 bits at QBER ≲ 1.2 % is one
#: frame). Its need (at most 60 iterations) has mean 1.081, sd 0.006, max
#: 1.095 at 1 % (8 frames, tools/ldpc_needs.py; the rate-0.9064 graph lifted
#: so needed 1.112, sd 0.007). Chosen on 6 keys of 10^6 bits: f₀ = 1.09 gave
#: f 1.092 at 1.02 Mbit/s per core, 1.095 gave 1.097 at 1.14 (the first
#: attempt decodes in ~36 iterations instead of ~41).
_F0_MEGABIT_TABLE = ((0.01, 1.095),)
#: Calibration tables by the shortest mother code they hold for (longest first).
_F0_BY_CODE_BITS = (
    (MEGABIT_CODE_BITS, _F0_MEGABIT_TABLE),
    (LONG_CODE_BITS, _F0_LONG_TABLE),
    (0, _F0_TABLE),
)


#: Keys shorter than this start with a margin on the table's f₀.
_F0_FRAME_BITS = 62_500
#: Extra f₀ per unit of √(62 500/k) − 1 for a key of k < 62 500 bits (one
#: short, heavily shortened frame): its error count fluctuates more and a
#: mother code shortened to a small fraction of its length decodes worse. At
#: 20 000 bits and QBER 2 % the table alone dropped 15 of 30 keys; the margin
#: (+0.10 there) none. Capped at SMALL_KEY_MARGIN_MAX.
SMALL_KEY_MARGIN = 0.13
SMALL_KEY_MARGIN_MAX = 0.3


def default_efficiency(
    qber: float, key_bits: int | None = None, *, code_bits: int | None = None
) -> float:
    """Starting f₀ for a QBER estimate (and key size), measured on the shipped codes.

    ``code_bits``, the length of the mother code the frames use, picks the
    calibration (:data:`_F0_BY_CODE_BITS`): frames on longer codes need less
    (their error counts fluctuate less, and their graphs are closer to the
    ensemble); without it, the table of the 98 304-bit codes.
    """
    table = next(t for bits, t in _F0_BY_CODE_BITS if (code_bits or 0) >= bits)
    qs = [q for q, _ in table]
    fs = [f for _, f in table]
    f0 = float(np.interp(qber, qs, fs))
    if key_bits is not None and 0 < key_bits < _F0_FRAME_BITS:
        f0 += min(
            SMALL_KEY_MARGIN_MAX, SMALL_KEY_MARGIN * (math.sqrt(_F0_FRAME_BITS / key_bits) - 1)
        )
    return f0


@dataclass(frozen=True)
class FramePlan:
    """Public layout of one frame: which code, how many key, punctured, shortened bits."""

    code: int
    key_bits: int
    punctured: int
    shortened: int


#: Without a modest layout, the planner looks this many times the fewest
#: feasible frame count far for one (at QBER 5 % a 10^7-bit key fits 33 frames
#: on the megabit code shortened by 70 %, and 107 on a 98 304-bit code near its
#: own rate).
_SEARCH_WITHOUT_MODEST = 20


def plan_frames(
    total_bits: int, qber: float, codes: Sequence[LdpcCode], efficiency: float | None = None
) -> list[FramePlan]:
    """Frames whose leakage m − p is ⌈f₀·k·h(q)⌉ each, on the code needing the least modulation.

    ``efficiency`` fixes f₀ for every code; without it each code starts at
    the f₀ measured for its length (:func:`default_efficiency`).

    A revealed punctured bit tells Bob one full bit he did not have, a revealed
    key bit only about h(q) of one, so each frame should keep its first
    retry's worth of punctured positions (:func:`_reserve`; with almost none
    left, 3 of 20 frames at QBER 2 % were dropped after three attempts).
    Beyond that both
    puncturing and shortening move a mother code away from the ensemble it
    was optimised as, and heavy shortening of a high-rate code decodes far
    worse than a lower-rate code near its own rate (measured: a rate-0.9 code
    shortened by 40 % failed 19 of 20 frames at QBER 2 % and f₀ = 1.12, the
    rate-0.85 code barely modulated 4 of 20 at f₀ = 1.08). Among frame counts
    from the fewest feasible up to three times as many (more frames: smaller
    k; at QBER 3 % the fewest put 10^6 bits on a 204 800-bit code shortened
    by 29 %, while twice as many frames fit a 65 536-bit code near its own
    rate), the plan leaking least beyond what f₀ asks wins, then the one on
    the longest codes modulated by at most LONG_CODE_MODULATION (:func:`_fit`),
    then the least cost (:func:`_modulation`: shortening, extra puncturing and a
    missing reserve), then the fewest frames. A retry's punctured positions
    matter beyond the reserve too: with too few left for the second retry
    (rate 0.9092 at 1 %, the published 0.85 at n = 98 304 at 2 %), 1–5 of
    300 frames were dropped; the shipped rates 0.9064 and 0.8482 keep enough.
    """
    if total_bits <= 0:
        raise ReconciliationError("nothing to reconcile")
    best: tuple[int, int, float, int, list[tuple[FramePlan, int]]] | None = None
    # The search runs to three times the fewest frames with a modest layout
    # (see _long_code_key) — or, while none is modest, with any layout: a long
    # code shortened to a fraction of itself is feasible with few frames, and
    # must not end the search before the well-fitting codes' frame counts.
    first_feasible: int | None = None
    first_modest: int | None = None
    for frames in range(1, total_bits + 1):
        if first_modest is not None and frames > 3 * first_modest + 1:
            break
        if first_feasible is not None and frames > _SEARCH_WITHOUT_MODEST * first_feasible:
            break
        base, extra = divmod(total_bits, frames)
        if base < MIN_FRAME_KEY_BITS and frames > 1:
            break
        # Frames come in at most two sizes, base + 1 and base: fit each once.
        sizes = [(k, count) for k, count in ((base + 1, extra), (base, frames - extra)) if count]
        fits = [_fit(k, qber, codes, efficiency, total_bits) for k, _ in sizes]
        fitted = [fit for fit in fits if fit is not None]
        if len(fitted) < len(sizes):
            continue
        if first_feasible is None:
            first_feasible = frames
        kinds = [(plan, count) for (plan, _), (_, count) in zip(fitted, sizes, strict=True)]
        cost = sum(_modulation(codes[p.code], p, qber) * c for p, c in kinds) / frames
        # Leak beyond what f₀ asks first (short frames leak m − p_max), then
        # the code length (see _fit), then the modulation.
        excess = sum(over * count for (_, over), (_, count) in zip(fitted, sizes, strict=True))
        longest = max(_long_code_key(codes[p.code], p) for p, _ in kinds)
        if first_modest is None and longest < 0:
            first_modest = frames
        score = (excess, longest, round(cost, 4), frames, kinds)
        if best is None or score[:4] < best[:4]:
            best = score
    if best is None:
        raise ReconciliationError(f"no shipped code reaches QBER {qber}")
    return [plan for plan, count in best[4] for _ in range(count)]


def retry_fraction(qber: float, k: int) -> float:
    """First retry's share of k·h(q): from the QBER's table, scaled by the frame's length.

    The table holds steps for frames of 90 910 key bits; a shorter frame of k
    bits steps 90 910/k times further, a longer one √(90 910/k) times. Its
    error count alone would spread its need ∝ 1/√k, but a short frame is a
    heavily shortened mother code, whose own threshold spreads too: measured
    at QBER 1 %, the need's sd was 0.023 at 90 910 bits, 0.043 at 50 000 and
    0.080 at 20 000 (at 2 %: 0.020, 0.035), close to ∝ 1/k; with steps
    ∝ 1/√k, 2 of 40 frames of 50 000 bits were dropped at 1 %.
    """
    qs = [q for q, _ in _RETRY_TABLE]
    steps = [s for _, s in _RETRY_TABLE]
    step = float(np.interp(qber, qs, steps))
    if k > _RETRY_FRAME_BITS:
        # Longer frames' needs spread less: sd 0.017 / 0.012 at 200 000 bits
        # against 0.026 / 0.020 at 90 910 (QBER 1 / 2 %), about as 1/√k or
        # faster; 0 of 3000 frames failed at each with these steps.
        return step * math.sqrt(_RETRY_FRAME_BITS / k)
    return step * _RETRY_FRAME_BITS / max(k, 1)


def _reserve(k: int, qber: float) -> int:
    """Punctured positions a frame keeps for its first retry.

    Only the first: reserving the second retry's too (0.18·k·h(q) in all)
    forced heavier shortening and raised f at QBER 5 % from 1.112 to 1.131
    (20 frames each), while the second retry is rare.
    """
    return math.ceil(retry_fraction(qber, k) * k * binary_entropy(max(qber, MIN_QBER)))


#: Cost of a punctured position beyond the retry reserve relative to a
#: shortened one: puncturing removes channel information from the decoder,
#: shortening only removes degrees of freedom.
PUNCTURE_COST = 2.0

#: Cost of a reserve position the frame lacks: a retry must reveal a key bit
#: instead, worth about h(q) of what a punctured one is worth to Bob (at 4
#: the planner chose a layout with 105 punctured positions at QBER 2 %, and 3
#: of 20 frames were dropped after three attempts).
SHORTFALL_COST = 8.0


def _modulation(code: LdpcCode, plan: FramePlan, qber: float) -> float:
    """Cost of a layout: how far it moves the code from its native rate, per bit of n."""
    reserve = _reserve(plan.key_bits, qber)
    extra = max(0, plan.punctured - reserve)
    short = max(0, reserve - plan.punctured)
    return (PUNCTURE_COST * extra + plan.shortened + SHORTFALL_COST * short) / code.n


#: A longer mother code is preferred when it needs at most this fraction of
#: its length punctured and shortened (see :func:`_fit`).
LONG_CODE_MODULATION = 0.1


def _long_code_key(code: LdpcCode, plan: FramePlan) -> int:
    """−n for a layout modulating at most LONG_CODE_MODULATION of n, else 0 (sorts first)."""
    modest = plan.punctured + plan.shortened <= LONG_CODE_MODULATION * code.n
    return -code.n if modest else 0


def _start(code: LdpcCode, qber: float, efficiency: float | None, total_bits: int) -> float:
    """f₀ of a frame on ``code``: the one asked for, else the one measured for its length."""
    if efficiency is not None:
        return efficiency
    return default_efficiency(qber, total_bits, code_bits=code.n)


def _fit(
    k: int,
    qber: float,
    codes: Sequence[LdpcCode],
    efficiency: float | None,
    total_bits: int,
) -> tuple[FramePlan, int] | None:
    """The frame layout leaking ⌈f₀·k·h(q)⌉ bits on the least-modulated code, and its excess.

    The excess is what the frame leaks beyond what its f₀ asks (0 unless the
    code cannot puncture that far).

    A frame too short for any code to puncture that far leaks m − p_max
    instead (more than asked, never less): small blocks pay a higher f, on
    the code leaking least (a short code: the 65 536-bit rate-0.9 one stays
    shipped for keys of about 20 000 bits at QBER 2 %, where the 98 304-bit
    codes' larger m would leak f ≈ 1.8). Among codes leaking what is asked,
    one of the longest whose modulation stays within LONG_CODE_MODULATION
    comes first: longer frames decode closer to their threshold (the 98 304-bit
    codes needed 0.02–0.05 less f per frame than the 65 536-bit ones at
    1–5 %).
    """
    hq = binary_entropy(max(qber, MIN_QBER))
    best: tuple[int, int, float, FramePlan] | None = None
    for i, code in enumerate(codes):
        leak = math.ceil(_start(code, qber, efficiency, total_bits) * k * hq)
        p = min(code.m - leak, code.puncturable)
        s = code.n - k - p
        if p < 0 or s < 0:
            continue
        plan = FramePlan(code=i, key_bits=k, punctured=p, shortened=s)
        rank = (code.m - p - leak, _long_code_key(code, plan), _modulation(code, plan, qber))
        if best is None or rank < best[:3]:
            best = (*rank, plan)
    return None if best is None else (best[3], best[0])


@dataclass(frozen=True, eq=False)
class _Layout:
    punctured: npt.NDArray[np.int64]
    shortened: npt.NDArray[np.int64]
    key: npt.NDArray[np.int64]
    public_seed: int
    frame: int

    @functools.cached_property
    def reveal_order(self) -> npt.NDArray[np.int64]:
        """Punctured positions (last first), then key positions in a public random order.

        Drawn only for a frame that needs a retry (most never do).
        """
        rng = np.random.default_rng([self.public_seed, self.frame, 1])
        return np.concatenate([self.punctured[::-1], rng.permutation(self.key)])


def _layout(code: LdpcCode, plan: FramePlan, public_seed: int, frame: int) -> _Layout:
    """Positions of a frame, a public function of the plan and the public seed."""
    punctured = code.puncture_order[: plan.punctured].astype(np.int64)
    free = np.ones(code.n, dtype=bool)
    free[punctured] = False
    rest = np.flatnonzero(free)
    rng = np.random.default_rng([public_seed, frame])
    # A mask keeps both parts in ascending order without sorting (two sorts of
    # ~60 000 positions per frame and end were ~8 % of a reconciliation), and
    # only the shortened positions are drawn, not a permutation of them all.
    chosen = np.zeros(rest.size, dtype=bool)
    chosen[rng.choice(rest.size, size=plan.shortened, replace=False)] = True
    shortened = rest[chosen]
    key = rest[~chosen]
    return _Layout(
        punctured=punctured, shortened=shortened, key=key, public_seed=public_seed, frame=frame
    )


def _retry_reveal(plan: FramePlan, qber: float, attempt: int) -> int:
    """Bits revealed before attempt 2, 3, …: a fraction of k·h(q), doubling."""
    scale = retry_fraction(qber, plan.key_bits) * (1 << (attempt - 2))
    return max(1, math.ceil(scale * plan.key_bits * binary_entropy(max(qber, MIN_QBER))))


#: A failed frame's decoder state for its retry: folded graph, target, messages.
_DecoderState = tuple[
    npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.uint8], npt.NDArray[np.float32]
]
#: Retries continue the previous attempt's decoding instead of starting afresh.
WARM_RETRIES = True


class _LdpcParty(Party):
    """What Alice and Bob share: per-frame words, layouts and outcomes."""

    _plans: list[FramePlan]
    _layouts: list[_Layout]
    _words: list[Bits]
    _ok: npt.NDArray[np.bool_]
    _done: bool

    @property
    def finished(self) -> bool:
        return self._done

    def outcome(self) -> Outcome:
        """The key of the frames that decoded (failed frames are dropped at both ends)."""
        if not self._done:
            raise ReconciliationError(f"{self.role.value} has not finished")
        parts = [
            w[lay.key]
            for w, lay, ok in zip(self._words, self._layouts, self._ok, strict=True)
            if ok
        ]
        key = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
        return Outcome(
            role=self.role,
            key=key,
            success=bool(self._ok.all()),
            leaked_bits=self.ledger.leaked_bits,
            round_trips=self.ledger.round_trips,
            frames=len(self._plans),
            failed_frames=int((~self._ok).sum()),
        )


class LdpcAlice(_LdpcParty):
    """Alice's end: sends syndromes, reveals bits for frames Bob could not decode."""

    def __init__(
        self,
        key: Bits,
        qber: float,
        *,
        efficiency: float | None = None,
        codes: Sequence[LdpcCode] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(Role.ALICE)
        self._key = np.ascontiguousarray(key, dtype=np.uint8)
        self._qber = float(qber)
        # None: each frame starts at the f₀ measured for its code's length.
        self._eff = None if efficiency is None else float(efficiency)
        self._codes = tuple(codes) if codes is not None else shipped_codes()
        self._random_bytes = random_bytes
        self._plans: list[FramePlan] = []
        self._layouts: list[_Layout] = []
        self._words: list[Bits] = []
        self._revealed: list[int] = []
        self._ok: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._attempts = 0
        self._done = False

    def _start(self) -> Message:
        self._plans = plan_frames(self._key.size, self._qber, self._codes, self._eff)
        seed = int.from_bytes(self._random_bytes(8), "little")
        syndromes = []
        offset = 0
        for f, plan in enumerate(self._plans):
            code = self._codes[plan.code]
            lay = _layout(code, plan, seed, f)
            word = np.zeros(code.n, dtype=np.uint8)
            word[lay.key] = self._key[offset : offset + plan.key_bits]
            offset += plan.key_bits
            # Punctured positions carry fresh secret random bits: they are what
            # masks p of the m syndrome bits.
            word[lay.punctured] = np.unpackbits(
                np.frombuffer(self._random_bytes(-(-plan.punctured // 8)), dtype=np.uint8),
                count=plan.punctured,
            )
            self._layouts.append(lay)
            self._words.append(word)
            syndromes.append(code.syndrome(word))
        self._revealed = [0] * len(self._plans)
        self._ok = np.zeros(len(self._plans), dtype=bool)
        self._attempts = 1
        return Message(
            sender=Role.ALICE,
            kind="ldpc.syndromes",
            disclosed={"syndromes": np.concatenate(syndromes)},
            public={
                "qber": self._qber,
                "seed": seed,
                "codes": ",".join(self._codes[p.code].name for p in self._plans),
                "key_bits": np.array([p.key_bits for p in self._plans], dtype=np.int64),
                "punctured": np.array([p.punctured for p in self._plans], dtype=np.int64),
                "shortened": np.array([p.shortened for p in self._plans], dtype=np.int64),
            },
            credit=sum(p.punctured for p in self._plans),
        )

    def _receive(self, message: Message) -> Message | None:
        if message.kind != "ldpc.status" or self._done:
            raise ReconciliationError(f"Alice did not expect {message.kind!r}")
        pending = np.flatnonzero(~self._ok)
        status = message.disclosed["decoded"]
        if status.size != pending.size:
            raise ReconciliationError("status does not match the pending frames")
        self._ok[pending[status == 1]] = True
        failed = np.flatnonzero(~self._ok)
        if failed.size == 0 or self._attempts >= MAX_ATTEMPTS:
            self._done = True
            return None
        self._attempts += 1
        values = []
        counts = []
        for f in failed:
            lay = self._layouts[f]
            count = min(
                _retry_reveal(self._plans[f], self._qber, self._attempts),
                lay.reveal_order.size - self._revealed[f],
            )
            positions = lay.reveal_order[self._revealed[f] : self._revealed[f] + count]
            self._revealed[f] += count
            values.append(self._words[f][positions])
            counts.append(count)
        return Message(
            sender=Role.ALICE,
            kind="ldpc.reveal",
            disclosed={"values": np.concatenate(values).astype(np.uint8)},
            public={"frames": failed.astype(np.int64), "counts": np.array(counts, dtype=np.int64)},
        )


class LdpcBob(_LdpcParty):
    """Bob's end: decodes each frame from Alice's syndrome and his own bits."""

    def __init__(
        self,
        key: Bits,
        *,
        codes: Sequence[LdpcCode] | None = None,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        workers: int = 1,
    ) -> None:
        """``workers`` > 1 decodes frames on that many threads (the decoder releases the GIL)."""
        super().__init__(Role.BOB)
        if workers < 1:
            raise ReconciliationError("workers must be at least 1")
        self._workers = workers
        self._key = np.ascontiguousarray(key, dtype=np.uint8)
        self._codes = tuple(codes) if codes is not None else shipped_codes()
        self._by_name = {c.name: i for i, c in enumerate(self._codes)}
        self._max_iterations = max_iterations
        self._plans: list[FramePlan] = []
        self._layouts: list[_Layout] = []
        self._llrs: list[npt.NDArray[np.float32]] = []
        self._states: list[_DecoderState | None] = []
        self._targets: list[Bits] = []
        self._words: list[Bits] = []
        self._revealed: list[int] = []
        self._ok: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._attempts = 0
        self._done = False

    def _receive(self, message: Message) -> Message:
        if message.kind == "ldpc.syndromes" and self._attempts == 0:
            self._setup(message)
        elif message.kind == "ldpc.reveal" and 0 < self._attempts < MAX_ATTEMPTS:
            self._apply_reveal(message)
        else:
            raise ReconciliationError(f"Bob did not expect {message.kind!r} now")
        self._attempts += 1
        pending = [int(f) for f in np.flatnonzero(~self._ok)]
        if self._workers > 1 and len(pending) > 1:
            with ThreadPoolExecutor(max_workers=self._workers) as pool:
                results = list(pool.map(self._decode, pending))
        else:
            results = [self._decode(f) for f in pending]
        status = np.array(results, dtype=np.uint8)
        if bool(self._ok.all()) or self._attempts >= MAX_ATTEMPTS:
            self._done = True
        return Message(sender=Role.BOB, kind="ldpc.status", disclosed={"decoded": status})

    def _setup(self, message: Message) -> None:
        pub = message.public
        names = str(pub["codes"]).split(",")
        key_bits = np.asarray(pub["key_bits"], dtype=np.int64)
        punct = np.asarray(pub["punctured"], dtype=np.int64)
        short = np.asarray(pub["shortened"], dtype=np.int64)
        if int(key_bits.sum()) != self._key.size:
            raise ReconciliationError("Alice's frames do not cover Bob's key")
        seed = int(pub["seed"])
        qber = max(float(pub["qber"]), MIN_QBER)
        channel_llr = np.float32(math.log((1 - qber) / qber))
        syndromes = message.disclosed["syndromes"]
        offset = 0
        s_offset = 0
        expected_credit = 0
        for f, name in enumerate(names):
            if name not in self._by_name:
                raise ReconciliationError(f"Bob does not have LDPC code {name}")
            plan = FramePlan(self._by_name[name], int(key_bits[f]), int(punct[f]), int(short[f]))
            code = self._codes[plan.code]
            if plan.key_bits + plan.punctured + plan.shortened != code.n:
                raise ReconciliationError("frame layout does not fill the codeword")
            lay = _layout(code, plan, seed, f)
            llr = np.zeros(code.n, dtype=np.float32)
            llr[lay.shortened] = KNOWN_LLR
            mine = self._key[offset : offset + plan.key_bits]
            offset += plan.key_bits
            llr[lay.key] = np.where(mine == 0, channel_llr, -channel_llr)
            self._plans.append(plan)
            self._layouts.append(lay)
            self._llrs.append(llr)
            self._targets.append(syndromes[s_offset : s_offset + code.m])
            s_offset += code.m
            expected_credit += plan.punctured
        if s_offset != syndromes.size or message.credit != expected_credit:
            raise ReconciliationError("syndrome length or leakage credit does not match the plan")
        self._words = [np.zeros(0, dtype=np.uint8)] * len(self._plans)
        self._states = [None] * len(self._plans)
        self._revealed = [0] * len(self._plans)
        self._ok = np.zeros(len(self._plans), dtype=bool)

    def _apply_reveal(self, message: Message) -> None:
        frames = np.asarray(message.public["frames"], dtype=np.int64)
        counts = np.asarray(message.public["counts"], dtype=np.int64)
        values = message.disclosed["values"]
        if (
            not np.array_equal(frames, np.flatnonzero(~self._ok))
            or int(counts.sum()) != values.size
        ):
            raise ReconciliationError("revealed bits do not match the failed frames")
        at = 0
        for f, count in zip(frames, counts, strict=True):
            lay = self._layouts[f]
            positions = lay.reveal_order[self._revealed[f] : self._revealed[f] + count]
            self._revealed[f] += int(count)
            vals = values[at : at + count]
            at += int(count)
            self._llrs[f][positions] = np.where(vals == 0, KNOWN_LLR, -KNOWN_LLR)

    def _decode(self, f: int) -> int:
        llr = self._llrs[f]
        state = self._states[f]
        # A last attempt's failure drops the frame: give it more patience.
        last = self._attempts >= MAX_ATTEMPTS
        warm = state is not None and WARM_RETRIES
        if warm:
            # A retry continues from where the last attempt stopped, on its
            # graph: the revealed bits enter as known LLRs.
            assert state is not None
            ptr, cols, target, messages = state
        else:
            ptr, cols, target, messages = self._fresh(f)
        word, ok = self._run(ptr, cols, target, messages, llr, last=last)
        if not ok and last and warm:
            # Before dropping the frame, decode it afresh: a continued decoder
            # can stay caught where the failed attempt left it (at QBER 1 %, 5
            # of 300 single frames were dropped with warm last attempts).
            ptr, cols, target, messages = self._fresh(f)
            word, ok = self._run(ptr, cols, target, messages, llr, last=last)
        self._states[f] = None if ok or last else (ptr, cols, target, messages)
        self._words[f] = word
        self._ok[f] = ok
        return 1 if ok else 0

    def _fresh(self, f: int) -> _DecoderState:
        """The frame's graph with every known bit folded in, and zero messages."""
        code = self._codes[self._plans[f].code]
        llr = self._llrs[f]
        known = np.abs(llr) >= KNOWN_LLR
        ptr, cols, target = code.without_known(known, (llr < 0).astype(np.uint8), self._targets[f])
        return ptr, cols, target, np.zeros(cols.size, dtype=np.float32)

    def _run(
        self,
        ptr: npt.NDArray[np.int32],
        cols: npt.NDArray[np.int32],
        target: Bits,
        messages: npt.NDArray[np.float32],
        llr: npt.NDArray[np.float32],
        *,
        last: bool,
    ) -> tuple[Bits, bool]:
        word, ok, _ = decode_from(
            ptr,
            cols,
            llr,
            target,
            messages,
            max_iterations=2 * self._max_iterations if last else self._max_iterations,
            stall=FINAL_STALL_ITERATIONS if last else STALL_ITERATIONS,
        )
        if not ok:
            word, ok, _ = rescue(ptr, cols, llr, target, messages, hard=word)
        return word, bool(ok)
