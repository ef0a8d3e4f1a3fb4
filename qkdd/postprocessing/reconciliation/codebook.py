"""LDPC mother codes: the shipped parity-check graphs, and lifts of them.

A code file (package data, made by tools/make_ldpc_codes.py) is an .npz
holding either a graph — the parity-check matrix in CSR form (rows = checks)
and the puncturing order — or a *lift* of another shipped code: the base
code's name, the lift factor Z and one cyclic shift per base edge. The lift
replaces every variable and check of the base by Z copies and every base
edge (c, v) with shift s by the Z edges (c·Z + i, v·Z + (i + s) mod Z): a
graph Z times longer with the base's degrees, whose cycles are at least as
long as the base's (a Z-cover). Its puncturing order takes each base
position's Z copies in turn, so every check still has at most one punctured
neighbour (untainted puncturing). The shifts are stored, not drawn at load
time, so both ends build the same graph whatever their numpy version.

Graphs are built on first use: a lifted megabit code costs ~30 MB, and a node
that never reconciles keys that long never pays it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from qkdd.postprocessing.reconciliation.base import Bits, ReconciliationError
from qkdd.postprocessing.reconciliation.decoder import fold_known, syndrome


@dataclass(frozen=True, eq=False)
class CodeGraph:
    """Parity-check matrix in CSR form (rows = checks) and the puncturing order."""

    check_ptr: npt.NDArray[np.int32]
    check_vars: npt.NDArray[np.int32]
    puncture_order: npt.NDArray[np.int32]


@dataclass(frozen=True, eq=False)
class LdpcCode:
    """A mother code: its sizes up front, its graph when first needed."""

    name: str
    n: int
    m: int
    #: Length of the puncturing order (how far the code can puncture).
    puncturable: int
    design_qber: float
    build: Callable[[], CodeGraph] = field(repr=False)

    @property
    def rate(self) -> float:
        return 1.0 - self.m / self.n

    @functools.cached_property
    def graph(self) -> CodeGraph:
        graph = self.build()
        if graph.check_ptr.size != self.m + 1 or graph.puncture_order.size != self.puncturable:
            raise ReconciliationError(f"LDPC code {self.name}: graph does not match its sizes")
        return graph

    @property
    def check_ptr(self) -> npt.NDArray[np.int32]:
        return self.graph.check_ptr

    @property
    def check_vars(self) -> npt.NDArray[np.int32]:
        return self.graph.check_vars

    @property
    def puncture_order(self) -> npt.NDArray[np.int32]:
        return self.graph.puncture_order

    def syndrome(self, word: Bits) -> Bits:
        return syndrome(self.check_ptr, self.check_vars, word)

    @functools.cached_property
    def edge_checks(self) -> npt.NDArray[np.int64]:
        """Check index of every edge (row of each CSR entry)."""
        return np.repeat(np.arange(self.m, dtype=np.int64), np.diff(self.check_ptr))

    def without_known(
        self, known: npt.NDArray[np.bool_], values: Bits, target: Bits
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], Bits]:
        """The graph with known (shortened or revealed) columns folded into the syndrome.

        A known bit only shifts its checks' parity, so decoding the smaller
        graph against target ⊕ H_known·values is the same problem with fewer
        edges to update.
        """
        return fold_known(
            self.check_ptr,
            self.check_vars,
            np.ascontiguousarray(known, dtype=np.bool_),
            np.ascontiguousarray(values, dtype=np.uint8),
            np.ascontiguousarray(target, dtype=np.uint8),
        )

    def __repr__(self) -> str:
        return f"LdpcCode({self.name}, n={self.n}, m={self.m}, rate={self.rate:.3f})"


def lift_graph(base: CodeGraph, shifts: npt.NDArray[np.integer], z: int) -> CodeGraph:
    """The Z-cover of ``base`` with one cyclic shift per base edge (see the module doc)."""
    m = base.check_ptr.size - 1
    degree = np.diff(base.check_ptr).astype(np.int64)
    edges = base.check_vars.size
    if shifts.size != edges or z < 1 or (edges and int(shifts.max()) >= z):
        raise ReconciliationError("a lift needs one shift in [0, Z) per base edge")
    check_ptr = np.zeros(m * z + 1, dtype=np.int64)
    check_ptr[1:] = np.cumsum(np.repeat(degree, z))
    if check_ptr[-1] > np.iinfo(np.int32).max:
        raise ReconciliationError("lifted graph too large")
    edge_check = np.repeat(np.arange(m, dtype=np.int64), degree)
    within = np.arange(edges, dtype=np.int64) - base.check_ptr[:-1].astype(np.int64)[edge_check]
    base_vars = base.check_vars.astype(np.int64) * z
    shift = shifts.astype(np.int64)
    check_vars = np.empty(edges * z, dtype=np.int32)
    for i in range(z):
        # Copy i of base check c is row c·Z + i; its edges keep the base's order.
        at = check_ptr[edge_check * z + i] + within
        check_vars[at] = base_vars + (i + shift) % z
    order = base.puncture_order.astype(np.int64)
    puncture_order = (order[:, None] * z + np.arange(z, dtype=np.int64)[None, :]).ravel()
    return CodeGraph(
        check_ptr=check_ptr.astype(np.int32),
        check_vars=check_vars,
        puncture_order=puncture_order.astype(np.int32),
    )


def load_code(path: Path, bases: dict[str, LdpcCode] | None = None) -> LdpcCode:
    """A code file: a graph, or a lift of one of ``bases`` (by name)."""
    with np.load(path) as z:
        if "lift" in z:
            base_name = str(z["base"])
            base = (bases or {}).get(base_name)
            if base is None:
                raise ReconciliationError(f"{path.name}: lifts {base_name}, which is not loaded")
            factor = int(z["lift"])
            shifts = np.ascontiguousarray(z["shifts"])
            return LdpcCode(
                name=path.stem,
                n=base.n * factor,
                m=base.m * factor,
                puncturable=base.puncturable * factor,
                design_qber=base.design_qber,
                build=lambda: lift_graph(base.graph, shifts, factor),
            )
        graph = CodeGraph(
            check_ptr=np.ascontiguousarray(z["check_ptr"], dtype=np.int32),
            check_vars=np.ascontiguousarray(z["check_vars"], dtype=np.int32),
            puncture_order=np.ascontiguousarray(z["puncture_order"], dtype=np.int32),
        )
        return LdpcCode(
            name=path.stem,
            n=int(z["n"]),
            m=int(z["m"]),
            puncturable=graph.puncture_order.size,
            design_qber=float(z["design_qber"]),
            build=lambda: graph,
        )


@functools.cache
def shipped_codes() -> tuple[LdpcCode, ...]:
    """The mother codes shipped as package data, by increasing rate, then length."""
    root = resources.files("qkdd.postprocessing.reconciliation") / "codes"
    graphs: dict[str, LdpcCode] = {}
    lifts: list[Path] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".npz"):
            continue
        with resources.as_file(entry) as path:
            with np.load(path) as z:
                is_lift = "lift" in z
            if is_lift:
                lifts.append(Path(path))
            else:
                code = load_code(Path(path))
                graphs[code.name] = code
    codes = list(graphs.values()) + [load_code(p, graphs) for p in lifts]
    if not codes:
        raise ReconciliationError("no LDPC codes shipped (run tools/make_ldpc_codes.py)")
    return tuple(sorted(codes, key=lambda c: (c.rate, c.n, c.name)))
