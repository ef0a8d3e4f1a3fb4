"""LDPC code files: plain graphs, lifts of them, and the shipped megabit lift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdd.postprocessing.reconciliation import ReconciliationError
from qkdd.postprocessing.reconciliation.codebook import (
    CodeGraph,
    LdpcCode,
    lift_graph,
    load_code,
    shipped_codes,
)
from qkdd.postprocessing.reconciliation.decoder import syndrome


@st.composite
def _graphs(draw: st.DrawFn) -> tuple[CodeGraph, int, int]:
    """A small random parity-check graph (no repeated edge in a check), n and m."""
    n = draw(st.integers(4, 24))
    m = draw(st.integers(1, n - 1))
    rows = [
        sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=min(n, 6))))
        for _ in range(m)
    ]
    ptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int32)
    cols = np.array([v for r in rows for v in r], dtype=np.int32)
    order = np.array(draw(st.permutations(range(n)))[: draw(st.integers(0, n))], dtype=np.int32)
    return CodeGraph(ptr, cols, order), n, m


def _fold(x: npt.NDArray[np.uint8], z: int) -> npt.NDArray[np.uint8]:
    """XOR of the Z copies of each position (the projection onto the base)."""
    return np.bitwise_xor.reduce(x.reshape(-1, z), axis=1).astype(np.uint8)


@settings(max_examples=60, deadline=None)
@given(_graphs(), st.integers(1, 7), st.data())
def test_a_lift_is_a_cover_of_its_base(
    graph: tuple[CodeGraph, int, int], z: int, data: st.DataObject
) -> None:
    base, n, m = graph
    shifts = np.array(
        data.draw(
            st.lists(
                st.integers(0, z - 1), min_size=base.check_vars.size, max_size=base.check_vars.size
            )
        ),
        dtype=np.uint8,
    )
    lifted = lift_graph(base, shifts, z)
    assert lifted.check_ptr.size == m * z + 1
    # Each copy of a check sees exactly one copy of each of the base check's variables.
    for c in range(m):
        base_row = sorted(base.check_vars[base.check_ptr[c] : base.check_ptr[c + 1]].tolist())
        for i in range(z):
            r = c * z + i
            row = lifted.check_vars[lifted.check_ptr[r] : lifted.check_ptr[r + 1]]
            assert sorted((row // z).tolist()) == base_row
    # Hence the syndrome of any word, folded over the copies, is the base syndrome of
    # the folded word.
    x = np.array(
        data.draw(st.lists(st.integers(0, 1), min_size=n * z, max_size=n * z)), dtype=np.uint8
    )
    np.testing.assert_array_equal(
        _fold(syndrome(lifted.check_ptr, lifted.check_vars, x), z),
        syndrome(base.check_ptr, base.check_vars, _fold(x, z)),
    )
    # The puncturing order takes each base position's copies in turn.
    np.testing.assert_array_equal(lifted.puncture_order // z, np.repeat(base.puncture_order, z))


def test_a_lift_needs_one_shift_per_edge_below_z() -> None:
    base = CodeGraph(
        np.array([0, 2], dtype=np.int32), np.array([0, 1], dtype=np.int32), np.zeros(0, np.int32)
    )
    with pytest.raises(ReconciliationError, match="one shift"):
        lift_graph(base, np.array([0], dtype=np.uint8), 3)
    with pytest.raises(ReconciliationError, match="one shift"):
        lift_graph(base, np.array([0, 3], dtype=np.uint8), 3)


def test_a_lift_file_names_its_base(tmp_path: Path) -> None:
    path = tmp_path / "x_x2.npz"
    np.savez(path, base=np.array("no_such_code"), lift=np.array(2), shifts=np.zeros(4, np.uint8))
    with pytest.raises(ReconciliationError, match="no_such_code"):
        load_code(path)


def _megabit() -> LdpcCode:
    return next(c for c in shipped_codes() if c.name.endswith("_x5"))


def test_the_shipped_megabit_code_lifts_its_base_and_keeps_untainted_puncturing() -> None:
    codes = {c.name: c for c in shipped_codes()}
    big = _megabit()
    base = codes[big.name.removesuffix("_x5")]
    assert (big.n, big.m, big.puncturable) == (5 * base.n, 5 * base.m, 5 * base.puncturable)
    assert big.rate == base.rate and big.design_qber == base.design_qber
    # Same degrees as the base, copy by copy.
    np.testing.assert_array_equal(
        np.bincount(big.check_vars, minlength=big.n),
        np.repeat(np.bincount(base.check_vars, minlength=base.n), 5),
    )
    np.testing.assert_array_equal(np.diff(big.check_ptr), np.repeat(np.diff(base.check_ptr), 5))
    # No check sees two punctured positions (the m − p leakage argument).
    punct = np.zeros(big.n, dtype=bool)
    punct[big.puncture_order] = True
    per_check = np.bincount(big.edge_checks[punct[big.check_vars]], minlength=big.m)
    assert int(per_check.max()) <= 1


def test_graphs_are_built_on_first_use() -> None:
    calls = []
    graph = CodeGraph(
        np.array([0, 2], dtype=np.int32),
        np.array([0, 1], dtype=np.int32),
        np.array([0], dtype=np.int32),
    )

    def build() -> CodeGraph:
        calls.append(1)
        return graph

    code = LdpcCode(name="tiny", n=2, m=1, puncturable=1, design_qber=0.1, build=build)
    assert calls == [] and code.rate == 0.5
    assert code.check_vars is graph.check_vars and code.puncture_order is graph.puncture_order
    assert calls == [1]
    wrong = LdpcCode(name="wrong", n=2, m=2, puncturable=1, design_qber=0.1, build=build)
    with pytest.raises(ReconciliationError, match="wrong"):
        _ = wrong.check_ptr
