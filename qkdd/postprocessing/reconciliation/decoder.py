"""Syndrome decoding of LDPC codes: layered sum-product, its hot loop in C.

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

The decoding loop is the C extension :mod:`._layered` (built with the
package; see its source for why C and not numba); this module keeps the
interface, the argument checks and the small numba helpers around it.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from qkdd.postprocessing.reconciliation import _layered

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


#: A failed decode left with at most this many unsatisfied checks is caught
#: in a small trapping set, not short of information: :func:`rescue` tries
#: to free it before the frame costs a retry (or is dropped).
RESCUE_MAX_UNSATISFIED = 4
#: Least reliable variables of each unsatisfied check that :func:`rescue` flips
#: (in order, one per trial). 4 freed the trapping sets seen at checks of
#: degree 21; a megabit frame at QBER 1 % (checks of degree 76) stalled at
#: every attempt with one unsatisfied check whose wrong bits were not among
#: its 4 least reliable, and was dropped (ldpc_fer(0.01, 2000, 7), frame
#: 1472); 16 freed it at the first attempt. Trials only run for decodes left
#: with ≤ RESCUE_MAX_UNSATISFIED checks, which are rare.
RESCUE_FLIPS_PER_CHECK = 16
#: The first round of trials: this many of every unsatisfied check.
RESCUE_FIRST_FLIPS = 4
#: Iterations each of :func:`rescue`'s trials may continue the decoding.
RESCUE_ITERATIONS = 30


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


def decode(
    check_ptr: npt.NDArray[np.int32],
    check_vars: npt.NDArray[np.int32],
    llr: npt.NDArray[np.float32],
    target: npt.NDArray[np.uint8],
    *,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    stall: int = STALL_ITERATIONS,
) -> tuple[npt.NDArray[np.uint8], bool, int]:
    """:func:`decode_from` with all check-to-variable messages starting at 0."""
    messages = np.zeros(check_vars.size, dtype=np.float32)
    return decode_from(
        check_ptr, check_vars, llr, target, messages, max_iterations=max_iterations, stall=stall
    )


def decode_from(
    check_ptr: npt.NDArray[np.int32],
    check_vars: npt.NDArray[np.int32],
    llr: npt.NDArray[np.float32],
    target: npt.NDArray[np.uint8],
    messages: npt.NDArray[np.float32],
    *,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    stall: int = STALL_ITERATIONS,
) -> tuple[npt.NDArray[np.uint8], bool, int]:
    """Find x with H·x = target from channel LLRs (positive = bit 0).

    Layered sum-product: the check update in the φ domain (Gallager),
    out_k = (−1)^{s_c}·Π_{j≠k} sign(t_j) · φ(Σ_{j≠k} φ(|t_j|)), with φ from
    :data:`PHI_TABLE` indexed by a float's bits. A check whose inputs all
    exceed SETTLED_LLR and agree with its syndrome bit keeps its previous
    messages (forced convergence: its outputs would be large and of the same
    signs). Each check notes whether its variables' signs satisfy it right
    after its update; only an iteration in which every check did pays for the
    full syndrome test. It gives up after ``stall`` iterations without a new
    low in unsatisfied checks (:data:`STALL_ITERATIONS`,
    :data:`FINAL_STALL_ITERATIONS`).

    ``messages`` holds the check-to-variable messages, one float32 per edge,
    and is updated in place: zeros start afresh, the messages a failed
    attempt left continue it (a retry whose revealed bits enter through
    ``llr`` converges in a fraction of a fresh decode's iterations).
    Returns the hard decision, whether it satisfies every check, and the
    number of iterations used. Releases the GIL while it decodes.
    """
    if messages.dtype != np.float32 or not messages.flags.c_contiguous:
        raise ValueError("messages must be a C-contiguous float32 array (updated in place)")
    if not messages.flags.writeable:
        raise ValueError("messages must be writeable (updated in place)")
    hard = np.empty(llr.size, dtype=np.uint8)
    ok, iterations = _layered.decode(
        np.ascontiguousarray(check_ptr, dtype=np.int32),
        np.ascontiguousarray(check_vars, dtype=np.int32),
        np.ascontiguousarray(llr, dtype=np.float32),
        np.ascontiguousarray(target, dtype=np.uint8),
        PHI_TABLE,
        PHI_SCALE,
        PHI_OFFSET,
        float(SETTLED_LLR),
        int(max_iterations),
        int(stall),
        messages,
        hard,
    )
    return hard, ok, iterations


def rescue(
    check_ptr: npt.NDArray[np.int32],
    check_vars: npt.NDArray[np.int32],
    llr: npt.NDArray[np.float32],
    target: npt.NDArray[np.uint8],
    messages: npt.NDArray[np.float32],
    *,
    hard: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.uint8], bool, int]:
    """Free a decode stuck on a few unsatisfied checks: flip one unreliable bit, decode on.

    A frame at QBER 5 % stalled at every attempt with one unsatisfied check:
    four wrong bits whose messages cancelled, and revealed bits elsewhere did
    not reach them. Here each of the least reliable variables of the
    unsatisfied checks (at most :data:`RESCUE_MAX_UNSATISFIED` of them) is
    in turn pinned to the opposite of its hard decision and the decoding
    continued from ``messages`` for :data:`RESCUE_ITERATIONS`; the first
    trial whose word satisfies every check wins (verification still checks
    the key). Nothing crosses the channel, so nothing leaks. ``messages`` is
    left as it was unless a trial succeeds. Returns the word, whether it
    satisfies every check and the iterations spent.
    """
    unsatisfied = np.flatnonzero(syndrome(check_ptr, check_vars, hard) ^ target)
    if unsatisfied.size == 0 or unsatisfied.size > RESCUE_MAX_UNSATISFIED:
        return hard, unsatisfied.size == 0, 0
    posterior = llr + np.bincount(check_vars, weights=messages, minlength=llr.size).astype(
        np.float32
    )
    weakest: list[npt.NDArray[np.int32]] = []
    for c in unsatisfied:
        members = check_vars[check_ptr[c] : check_ptr[c + 1]]
        weakest.append(members[np.argsort(np.abs(posterior[members]), kind="stable")])
    # The RESCUE_FIRST_FLIPS weakest of every check first, then the rest (so a
    # rescue that the first ones achieve picks the same trial as it always has).
    flips: dict[int, None] = {}
    for lo, hi in ((0, RESCUE_FIRST_FLIPS), (RESCUE_FIRST_FLIPS, RESCUE_FLIPS_PER_CHECK)):
        for order in weakest:
            flips.update(dict.fromkeys(int(v) for v in order[lo:hi]))
    spent = 0
    for v in flips:
        pinned = llr.copy()
        pinned[v] = KNOWN_LLR if posterior[v] < 0 else -KNOWN_LLR
        trial = messages.copy()
        word, ok, iterations = decode_from(
            check_ptr,
            check_vars,
            pinned,
            target,
            trial,
            max_iterations=RESCUE_ITERATIONS,
            stall=STALL_ITERATIONS,
        )
        spent += iterations
        if ok:
            messages[:] = trial
            return word, True, spent
    return hard, False, spent
