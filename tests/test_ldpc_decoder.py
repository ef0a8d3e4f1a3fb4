"""The compiled layered decoder (C) against a plain reference, and its argument checks."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdd.postprocessing.reconciliation.decoder import (
    PHI_OFFSET,
    PHI_SCALE,
    PHI_TABLE,
    SETTLED_LLR,
    decode,
    decode_from,
    syndrome,
)
from qkdd.postprocessing.reconciliation.ldpc import shipped_codes


def _phi(x: float) -> float:
    key = (int(np.float32(x).view(np.int32)) >> PHI_SCALE) - PHI_OFFSET
    return float(PHI_TABLE[min(max(key, 0), PHI_TABLE.size - 1)])


def reference_iteration(
    check_ptr: npt.NDArray[np.int32],
    check_vars: npt.NDArray[np.int32],
    llr: npt.NDArray[np.float32],
    target: npt.NDArray[np.uint8],
    messages: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """One layered sum-product iteration, check by check, as decoder.py describes it."""
    posterior = llr.astype(np.float64)
    np.add.at(posterior, check_vars, messages)
    for c in range(check_ptr.size - 1):
        edges = range(int(check_ptr[c]), int(check_ptr[c + 1]))
        incoming = {e: posterior[check_vars[e]] - messages[e] for e in edges}
        negative = (int(target[c]) + sum(t < 0 for t in incoming.values())) % 2
        held = (int(target[c]) + sum(posterior[check_vars[e]] < 0 for e in edges)) % 2
        least = min(abs(t) for t in incoming.values())
        if least > SETTLED_LLR and negative == 0 and held == 0:
            continue
        phis = {e: _phi(abs(t)) for e, t in incoming.items()}
        total = sum(phis.values())
        for e, t in incoming.items():
            sign = -1.0 if negative ^ (t < 0) else 1.0
            messages[e] = sign * _phi(max(total - phis[e], 0.0))
            posterior[check_vars[e]] = t + messages[e]
    return posterior


@st.composite
def small_codes(draw: st.DrawFn) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], int]:
    n = draw(st.integers(8, 40))
    m = draw(st.integers(2, n - 1))
    rows = []
    for _ in range(m):
        degree = draw(st.integers(1, min(n, 12)))
        rows.append(
            draw(st.lists(st.integers(0, n - 1), min_size=degree, max_size=degree, unique=True))
        )
    ptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int32)
    return ptr, np.array([v for r in rows for v in r], dtype=np.int32), n


@settings(max_examples=60, deadline=None)
@given(code=small_codes(), seed=st.integers(0, 2**32 - 1), warm=st.booleans())
def test_one_iteration_matches_the_reference(
    code: tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], int], seed: int, warm: bool
) -> None:
    ptr, cols, n = code
    rng = np.random.default_rng(seed)
    llr = rng.uniform(-9.0, 9.0, n).astype(np.float32)
    target = rng.integers(0, 2, ptr.size - 1, dtype=np.uint8)
    start = rng.uniform(-3.0, 3.0, cols.size) if warm else np.zeros(cols.size)
    messages = start.astype(np.float32)
    expected_messages = messages.astype(np.float64)
    posterior = reference_iteration(ptr, cols, llr, target, expected_messages)

    hard, _, iterations = decode_from(ptr, cols, llr, target, messages, max_iterations=1)

    assert iterations == 1
    # Same arithmetic up to float32 rounding and the order of the φ sums (a
    # sum landing on the other side of a table bin moves a message by ≤ 1 %).
    np.testing.assert_allclose(messages, expected_messages, rtol=1e-2, atol=2e-3)
    clear = np.abs(posterior) > 0.05
    np.testing.assert_array_equal(hard[clear], (posterior[clear] < 0).astype(np.uint8))


def test_decoding_a_real_frame_reaches_the_codeword() -> None:
    code = shipped_codes()[2]
    rng = np.random.default_rng(11)
    word = rng.integers(0, 2, code.n, dtype=np.uint8)
    q = 0.03
    noisy = word ^ (rng.random(code.n) < q).astype(np.uint8)
    llr = np.where(noisy == 0, 1.0, -1.0).astype(np.float32) * np.float32(math.log((1 - q) / q))
    out, ok, iterations = decode(code.check_ptr, code.check_vars, llr, code.syndrome(word))
    assert ok and 1 < iterations < 60
    np.testing.assert_array_equal(out, word)
    np.testing.assert_array_equal(
        syndrome(code.check_ptr, code.check_vars, out), code.syndrome(word)
    )


def _frame() -> tuple[
    npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.float32], npt.NDArray[np.uint8]
]:
    ptr = np.array([0, 2, 4], dtype=np.int32)
    cols = np.array([0, 1, 1, 2], dtype=np.int32)
    return ptr, cols, np.ones(3, dtype=np.float32), np.zeros(2, dtype=np.uint8)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(messages=np.zeros(4, dtype=np.float64)), "float32"),
        (lambda a: a.update(messages=np.zeros(8, dtype=np.float32)[::2]), "C-contiguous"),
        (lambda a: a.update(messages=np.zeros(3, dtype=np.float32)), "messages holds"),
        (lambda a: a.update(target=np.zeros(3, dtype=np.uint8)), "target holds"),
        (lambda a: a.update(check_vars=np.array([0, 1, 1, 3], dtype=np.int32)), "out of range"),
        (lambda a: a.update(check_ptr=np.array([0, 2, 3], dtype=np.int32)), "does not span"),
        (
            lambda a: a.update(
                check_ptr=np.array([0, 3, 2, 4], dtype=np.int32), target=np.zeros(3, dtype=np.uint8)
            ),
            "ascending",
        ),
        (lambda a: a.update(max_iterations=0), "at least 1"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_error(change: object, message: str) -> None:
    ptr, cols, llr, target = _frame()
    args: dict[str, object] = {
        "check_ptr": ptr,
        "check_vars": cols,
        "llr": llr,
        "target": target,
        "messages": np.zeros(4, dtype=np.float32),
        "max_iterations": 5,
    }
    change(args)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        decode_from(**args)  # type: ignore[arg-type]


def test_read_only_messages_are_refused() -> None:
    ptr, cols, llr, target = _frame()
    messages = np.zeros(4, dtype=np.float32)
    messages.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        decode_from(ptr, cols, llr, target, messages)
