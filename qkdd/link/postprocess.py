"""The post-processing the link engine needs, behind one small seam.

The engine carries reconciliation messages over the authenticated channel
without knowing the reconciler: a :class:`ReconMessage` declares its
key-dependent bits (``disclosed``) apart from public values, so each end
counts λ_EC over both directions itself. An implementation adapts the
reconcilers, verification hash and Toeplitz amplification of
``qkdd.postprocessing``; all of it is pure and runs in the engine's executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

Bits = npt.NDArray[np.uint8]
PublicValue = int | float | str | npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class ReconMessage:
    """One reconciliation message, transport-neutral. Never shows bits in its repr."""

    sender: str  # "alice" | "bob"
    step: str
    disclosed: dict[str, Bits] = field(default_factory=dict)
    public: dict[str, PublicValue] = field(default_factory=dict)
    credit: int = 0

    @property
    def leaked_bits(self) -> int:
        return sum(int(v.size) for v in self.disclosed.values()) - self.credit

    def __repr__(self) -> str:
        return f"ReconMessage({self.sender}, {self.step!r}, leaked={self.leaked_bits})"


@dataclass(frozen=True)
class ReconResult:
    """A party's reconciled key (bits), whether it believes it succeeded, and λ_EC as it
    counted it over both directions."""

    key: Bits = field(repr=False)
    success: bool
    leaked_bits: int


class Reconciler(Protocol):
    def start(self) -> ReconMessage | None: ...

    def receive(self, message: ReconMessage) -> ReconMessage | None: ...

    @property
    def finished(self) -> bool: ...

    def result(self) -> ReconResult: ...


class PostProcessing(Protocol):
    """Reconciliation, verification and privacy amplification for the engine."""

    verification_seed_bytes: int

    def reconciler(self, role: str, key: Bits, qber: float) -> Reconciler: ...

    def verification_tag_bits(self, key_bits: int, eps_cor: float) -> int: ...

    def verification_tag(self, key: Bits, seed: bytes, tag_bits: int) -> bytes: ...

    def amplification_seed_bits(self, key_bits: int, secret_bits: int) -> int: ...

    def amplify(self, key: Bits, seed: Bits, secret_bits: int) -> Bits: ...
