"""Syndrome decoding of LDPC codes: layered sum-product, compiled with numba.

Bob knows his bits y and Alice's syndrome s = H·x; he looks for the x with
H·x = s nearest to y. Channel LLRs are ±ln((1−q)/q) from his bits and the QBER
estimate q, 0 for punctured positions (unknown to him) and a large magnitude
for shortened ones (known). Check c enforces Σ x_v = s_c, so its outgoing
sign carries an extra (−1)^{s_c}.

Schedule: layered (row-serial) — each check updates the posteriors at once,
which converges in about half the iterations of flooding. Check update: exact
sum-product in Gallager's φ domain with a branch-free table lookup for φ
(indexed by the float's exponent and top mantissa bits); normalised
min-sum was tried and lost far too much at the check degrees (20–60) of
high-rate codes. The decoder stops as soon as the hard decision satisfies
every check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

#: LLR magnitude standing for "known" (shortened) bits.
KNOWN_LLR = np.float32(1.0e4)
DEFAULT_MAX_ITERATIONS = 60
#: A check whose every input LLR exceeds this (and is satisfied) is settled.
#: 5 rather than 6: ~8 % faster, the same outcome on every frame tried (62
#: frames at 1–5 %; 0/400 frame errors per QBER); 3.5 lost a frame.
SETTLED_LLR = np.float32(5.0)
#: Give up after this many iterations without a new low in unsatisfied checks
#: (the ``stall`` argument of :func:`decode`): when a failure only means a
#: retry with more revealed bits, a quick give-up saves time.
STALL_ITERATIONS = 12
#: Patience of a last attempt, whose failure drops the frame: 12 gave up on a
#: frame at QBER 2 % (1 of 300) that 40 decodes.
FINAL_STALL_ITERATIONS = 40


@numba.njit(cache=True, nogil=True)
def syndrome(
    check_ptr: npt.NDArray[np.int32], check_vars: npt.NDArray[np.int32], bits: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """H·bits over GF(2), H in CSR form (rows are checks)."""
    m = check_ptr.size - 1
    out = np.empty(m, dtype=np.uint8)
    for c in range(m):
        acc = 0
        for e in range(check_ptr[c], check_ptr[c + 1]):
            acc ^= bits[check_vars[e]]
        out[c] = acc
    return out


#: φ lookup indexed by the float32 bit pattern of x: its exponent and top
#: PHI_MANTISSA_BITS mantissa bits, i.e. bins of relative width 2^-8 on
#: [2^PHI_LOW_EXP, 2^PHI_HIGH_EXP), one integer shift and one clamp per lookup
#: (no branches). Below 2^-16 φ saturates at ≈ 11.8 (a harmless cap on a
#: message's reliability); from 32 on φ(x) < 1e-13 counts as 0. Error at most
#: 2^-9·x/sinh(x) ≤ 0.002 in absolute terms (relative: 0.4 % for small x,
#: growing as x/512 where φ itself is tiny); 21 kB, L1-resident.
PHI_MANTISSA_BITS = 8
PHI_LOW_EXP = -16
PHI_HIGH_EXP = 5
#: Right shift from the float32 bits to the table key (the decoder's ``shift``).
PHI_SCALE = 23 - PHI_MANTISSA_BITS
PHI_OFFSET = (127 + PHI_LOW_EXP) << PHI_MANTISSA_BITS


def _float_bits_typer(typingctx: object, x: types.Type) -> object:
    if x != types.float32:
        return None

    def codegen(
        context: object, builder: ir.IRBuilder, signature: object, args: list[ir.Value]
    ) -> ir.Value:
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


#: The bit pattern of a float32 as int32, for the φ key: a register bitcast
#: (a store and reload through a one-element view cost ~10 % of decoding).
_float_bits = cast("Callable[..., int]", intrinsic(_float_bits_typer))


@numba.njit(cache=True, nogil=True)
def fold_known(
    check_ptr: npt.NDArray[np.int32],
    check_vars: npt.NDArray[np.int32],
    known: npt.NDArray[np.bool_],
    values: npt.NDArray[np.uint8],
    target: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.uint8]]:
    """The graph without the known columns, their values folded into the target (one pass)."""
    m = check_ptr.size - 1
    ptr = np.empty(m + 1, dtype=np.int32)
    cols = np.empty(check_vars.size, dtype=np.int32)
    folded = np.empty(m, dtype=np.uint8)
    at = 0
    ptr[0] = 0
    for c in range(m):
        acc = target[c]
        for e in range(check_ptr[c], check_ptr[c + 1]):
            v = check_vars[e]
            if known[v]:
                acc ^= values[v]
            else:
                cols[at] = v
                at += 1
        ptr[c + 1] = at
        folded[c] = acc
    return ptr, cols[:at].copy(), folded


def _phi_table() -> npt.NDArray[np.float32]:
    """φ(x) = −ln tanh(x/2) at the geometric centre of every bin (last bin: 0)."""
    i = np.arange((PHI_HIGH_EXP - PHI_LOW_EXP) << PHI_MANTISSA_BITS)
    octave = 2.0 ** ((i >> PHI_MANTISSA_BITS) + PHI_LOW_EXP)
    frac = (i & ((1 << PHI_MANTISSA_BITS) - 1)) / float(1 << PHI_MANTISSA_BITS)
    step = 1.0 / float(1 << PHI_MANTISSA_BITS)
    x = octave * np.sqrt((1.0 + frac) * (1.0 + frac + step))
    table: npt.NDArray[np.float32] = (-np.log(np.tanh(x / 2.0))).astype(np.float32)
    table[-1] = 0.0
    return table


PHI_TABLE = _phi_table()


@numba.njit(cache=True, nogil=True, fastmath=True)
def decode(  # noqa: PLR0917  (numba: no keyword-only arguments)
    check_ptr: npt.NDArray[np.int32],
    check_vars: npt.NDArray[np.int32],
    llr: npt.NDArray[np.float32],
    target: npt.NDArray[np.uint8],
    max_iterations: int,
    table: npt.NDArray[np.float32],
    shift: int,
    stall: int,
) -> tuple[npt.NDArray[np.uint8], bool, int]:
    """:func:`decode_from` with all check-to-variable messages starting at 0."""
    messages = np.zeros(check_vars.size, dtype=np.float32)
    return decode_from(
        check_ptr, check_vars, llr, target, max_iterations, table, shift, stall, messages
    )


@numba.njit(cache=True, nogil=True, fastmath=True)
def decode_from(  # noqa: PLR0917  (numba: no keyword-only arguments)
    check_ptr: npt.NDArray[np.int32],
    check_vars: npt.NDArray[np.int32],
    llr: npt.NDArray[np.float32],
    target: npt.NDArray[np.uint8],
    max_iterations: int,
    table: npt.NDArray[np.float32],
    shift: int,
    stall: int,
    messages: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.uint8], bool, int]:
    """Find x with H·x = target from channel LLRs (positive = bit 0).

    Layered sum-product: the check update in the φ domain (Gallager),
    out_k = (−1)^{s_c}·Π_{j≠k} sign(t_j) · φ(Σ_{j≠k} φ(|t_j|)), with φ from
    ``table`` indexed by a float's bits shifted right by ``shift``
    (:data:`PHI_TABLE`, :data:`PHI_SCALE`). Signs and parities are kept as
    integers and combined with XOR, never branched on: the signs of a
    syndrome decoder's messages are random, so branches on them mispredict
    half the time. A check whose inputs all exceed SETTLED_LLR and agree
    with its syndrome bit keeps its previous messages (forced convergence:
    its outputs would be large and of the same signs). Each check also notes
    whether its variables' signs satisfy it right after its update; only an
    iteration in which every check did pays for the full syndrome test.
    It gives up after ``stall`` iterations without a new low in unsatisfied
    checks (:data:`STALL_ITERATIONS`, :data:`FINAL_STALL_ITERATIONS`).
    ``messages`` holds the check-to-variable messages, one per edge, and is
    updated in place: zeros start afresh, the messages a failed attempt left
    continue it (a retry whose revealed bits enter through ``llr`` converges
    in a fraction of a fresh decode's iterations).
    Returns the hard decision, whether it satisfies every check, and the
    number of iterations used.
    """
    m = check_ptr.size - 1
    posterior = llr.astype(np.float32).copy()
    for e in range(check_vars.size):
        posterior[check_vars[e]] += messages[e]
    max_deg = 0
    for c in range(m):
        max_deg = max(max_deg, check_ptr[c + 1] - check_ptr[c])
    incoming = np.empty(max_deg, dtype=np.float32)
    phis = np.empty(max_deg, dtype=np.float32)
    last = table.size - 1
    hard = np.empty(posterior.size, dtype=np.uint8)
    fewest = m + 1
    stalled = 0
    for it in range(1, max_iterations + 1):
        unsatisfied = 0
        for c in range(m):
            start = check_ptr[c]
            deg = check_ptr[c + 1] - start
            negative = np.int32(target[c])
            held = np.int32(target[c])
            least = np.float32(np.inf)
            total = np.float32(0.0)
            for k in range(deg):
                e = start + k
                before = posterior[check_vars[e]]
                held ^= np.int32(before < 0)
                t = before - messages[e]
                incoming[k] = t
                negative ^= np.int32(t < 0)
                a = abs(t)
                least = min(least, a)
                i = min(max((_float_bits(a) >> shift) - PHI_OFFSET, 0), last)
                ph = table[i]
                phis[k] = ph
                total += ph
            if least > SETTLED_LLR and negative == 0 and held == 0:
                continue  # settled: keep its messages (forced convergence)
            parity = np.int32(target[c])
            for k in range(deg):
                e = start + k
                t = incoming[k]
                rest = max(total - phis[k], np.float32(0.0))
                i = min(max((_float_bits(rest) >> shift) - PHI_OFFSET, 0), last)
                flip = negative ^ np.int32(t < 0)
                mag = np.float32(1 - 2 * flip) * table[i]
                messages[e] = mag
                post = t + mag
                posterior[check_vars[e]] = post
                parity ^= np.int32(post < 0)
            unsatisfied += int(parity)
        if unsatisfied:
            if unsatisfied < fewest:
                fewest = unsatisfied
                stalled = 0
            else:
                stalled += 1
                if stalled >= stall:
                    break  # no progress for a while: report failure early
            continue
        for v in range(posterior.size):
            hard[v] = 1 if posterior[v] < 0 else 0
        ok = True
        for c in range(m):
            acc = target[c]
            for e in range(check_ptr[c], check_ptr[c + 1]):
                acc ^= hard[check_vars[e]]
            if acc:
                ok = False
                break
        if ok:
            return hard, True, it
    for v in range(posterior.size):
        hard[v] = 1 if posterior[v] < 0 else 0
    return hard, False, it
