"""Attack signatures through the whole chain: simulated block → sifting → finite-key bound.

The biased intercept-resend keeps the key-basis QBER near its baseline, so only
a phase-error estimate taken from the test basis catches it; PNS changes no
QBER and is caught by the decoy bounds at block end (DESIGN §3).
"""

from __future__ import annotations

import math

import pytest

from qkdd.physics.expected import LinkPhysics, expected_statistics, fibre_transmittance
from qkdd.physics.link import LinkParameters, draw_pattern, role_rng
from qkdd.physics.simulator import ClickSimulator
from qkdd.postprocessing.finite_key import (
    DecoySettings,
    PhaseErrorAboveToleranceError,
    key_length,
)
from qkdd.postprocessing.sifting import Detections, sift

SETTINGS = DecoySettings(mu=(0.45, 0.2, 2e-4), probabilities=(0.2, 0.55, 0.25))
P_KEY = 0.78
LINK = LinkParameters(p_key=P_KEY, mu=SETTINGS.mu, p_class=SETTINGS.probabilities)


def _h(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p) if 0 < p < 1 else 0.0


def _block(distance_km: float, eve: str, seed: int, pulses: int = 12_000_000):  # type: ignore[no-untyped-def]
    phys = LinkPhysics(
        mu=SETTINGS.mu, p_class=SETTINGS.probabilities, p_key=P_KEY,
        eta_channel=fibre_transmittance(0.2, distance_km), efficiency=(0.5, 0.5),
        dark_count=(6e-7, 6e-7), misalignment=0.01, eve=eve,
    )  # fmt: skip
    pattern = draw_pattern(role_rng(seed, "alice"), pulses, LINK)
    frame = ClickSimulator(phys, role_rng(seed, "bob")).run(pulses, pattern)
    sifted = sift(Detections(frame.slot, frame.bob_basis, frame.bob_bit), pattern)
    stats = sifted.statistics
    qber_k = sifted.key_errors() / max(stats.n_key, 1)
    return phys, stats, qber_k


def _secret_bits(stats, qber_k: float) -> int:  # type: ignore[no-untyped-def]
    try:
        result = key_length(
            stats,
            SETTINGS,
            lambda_ec=math.ceil(1.16 * stats.n_key * _h(qber_k)),
            verification_tag_bits=128,
        )
    except PhaseErrorAboveToleranceError:
        return 0  # abort: no key
    return result.secret_bits


def _decoy_ratio(stats) -> float:  # type: ignore[no-untyped-def]
    gain = stats.key_counts / stats.sent_per_class
    return float(gain[1] / gain[0])


def test_honest_block_gives_key() -> None:
    _phys, stats, qber_k = _block(25.0, "none", seed=1)
    assert qber_k < 0.02
    assert _secret_bits(stats, qber_k) > 0


def test_biased_intercept_resend_keeps_k_qber_low_and_gives_no_key() -> None:
    phys, stats, qber_k = _block(25.0, "biased-intercept-resend", seed=2)
    expected = expected_statistics(phys)
    assert qber_k < 0.15  # p_K·e_d + (1 − p_K)/2 ≈ 0.12: below any T-based alarm
    assert stats.test_qber > 0.3  # the test basis jumps to ≈ p_K/2
    weights = stats.test_counts[:2] / stats.test_counts[:2].sum()
    assert stats.test_qber == pytest.approx(float(expected.basis_qber[:2, 1] @ weights), abs=0.02)
    assert _secret_bits(stats, qber_k) <= 0


def test_pns_changes_no_qber_but_leaves_no_key_at_block_end() -> None:
    _, honest, _ = _block(50.0, "none", seed=3, pulses=30_000_000)
    _, stats, qber_k = _block(50.0, "pns", seed=3, pulses=30_000_000)
    assert stats.test_qber == pytest.approx(honest.test_qber, abs=0.004)
    assert _decoy_ratio(stats) < 0.6 * _decoy_ratio(honest)  # the decoy/signal ratio collapses
    assert _secret_bits(honest, 0.01) > 0
    assert _secret_bits(stats, qber_k) <= 0
