"""The production post-processing behind the engine's seam: LDPC (or Cascade)
reconciliation, Poly1305 verification with a fresh public seed, Toeplitz
amplification — the modules of ``qkdd.postprocessing``.

Those modules are looked up by name at start, so a node without them says so
clearly (:class:`PostProcessingUnavailable`) instead of failing at import.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from qkdd.link.postprocess import Bits, ReconMessage, ReconResult

_RECONCILIATION = "qkdd.postprocessing.reconciliation"


class PostProcessingUnavailable(RuntimeError):
    """A post-processing module this node needs is not installed."""


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise PostProcessingUnavailable(f"{name} is not available: {exc}") from None


class _PartyAdapter:
    """A ``qkdd.postprocessing.reconciliation`` party speaking :class:`ReconMessage`."""

    def __init__(self, party: Any, base: Any) -> None:
        self._party = party
        self._base = base

    def _out(self, message: Any) -> ReconMessage | None:
        if message is None:
            return None
        return ReconMessage(
            sender=str(message.sender.value),
            step=str(message.kind),
            disclosed={k: np.asarray(v, np.uint8) for k, v in message.disclosed.items()},
            public=dict(message.public),
            credit=int(message.credit),
        )

    def start(self) -> ReconMessage | None:
        return self._out(self._party.start())

    def receive(self, message: ReconMessage) -> ReconMessage | None:
        incoming = self._base.Message(
            sender=self._base.Role(message.sender),
            kind=message.step,
            disclosed=message.disclosed,
            public=message.public,
            credit=message.credit,
        )
        return self._out(self._party.receive(incoming))

    @property
    def finished(self) -> bool:
        return bool(self._party.finished)

    def result(self) -> ReconResult:
        outcome = self._party.outcome()
        return ReconResult(
            key=np.asarray(outcome.key, np.uint8),
            success=bool(outcome.success),
            leaked_bits=int(outcome.leaked_bits),
        )


class StandardPostProcessing:
    """LDPC reconciliation by default (``method = "cascade"`` for the interactive one)."""

    verification_seed_bytes = 16

    def __init__(self, method: str = "ldpc") -> None:
        self.method = method

    def check(self) -> str | None:
        """None when every module is present, else what is missing (said at start; a
        block that gets as far as reconciliation then faults)."""
        try:
            self._recon, self._verification, self._amplification  # noqa: B018
        except PostProcessingUnavailable as exc:
            return str(exc)
        return None

    @property
    def _base(self) -> Any:
        return _module(f"{_RECONCILIATION}.base")

    @property
    def _recon(self) -> Any:
        return _module(f"{_RECONCILIATION}.{self.method}")

    @property
    def _verification(self) -> Any:
        module = _module("qkdd.postprocessing.verification")
        self.verification_seed_bytes = int(module.SEED_BYTES)
        return module

    @property
    def _amplification(self) -> Any:
        return _module("qkdd.postprocessing.amplification")

    def reconciler(self, role: str, key: Bits, qber: float) -> _PartyAdapter:
        if self.method == "ldpc":
            party = (
                self._recon.LdpcAlice(key, qber) if role == "alice" else self._recon.LdpcBob(key)
            )
        else:
            party = (
                self._recon.CascadeAlice(key, qber)
                if role == "alice"
                else self._recon.CascadeBob(key)
            )
        return _PartyAdapter(party, self._base)

    def verification_tag_bits(self, key_bits: int, eps_cor: float) -> int:
        return int(self._verification.tag_bits_for(key_bits, eps_cor))

    def verification_tag(self, key: Bits, seed: bytes, tag_bits: int) -> bytes:
        return bytes(self._verification.verification_tag(key, seed, tag_bits))

    def amplification_seed_bits(self, key_bits: int, secret_bits: int) -> int:
        return int(self._amplification.toeplitz_seed_bits(key_bits, secret_bits))

    def amplify(self, key: Bits, seed: Bits, secret_bits: int) -> Bits:
        return np.asarray(self._amplification.toeplitz_hash(key, seed, secret_bits), np.uint8)
