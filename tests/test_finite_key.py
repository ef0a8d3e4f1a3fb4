"""Decoy-state bounds and key length: Lim et al. PRA 89, 022307 (2014), Eqs. 1–5."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdd.physics.expected import exact_error_gain, exact_gain
from qkdd.postprocessing.finite_key import (
    DecoySettings,
    IntensityOrderError,
    PhaseErrorAboveToleranceError,
    SecurityParameters,
    class_bounds,
    decoy_estimate,
    finite_key_bound,
    gamma,
    hoeffding_deviation,
    key_length,
    vacuum_lower_bound,
    verification_cost,
)
from qkdd.postprocessing.sifting import BlockStatistics, Detections, FramePattern, sift

SETTINGS = DecoySettings(mu=(0.45, 0.2, 2e-4), probabilities=(0.2, 0.55, 0.25))
P_KEY = 0.78


# --- intensity ordering --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mu", "p"),
    [
        ((0.5, 0.3, 0.2), (0.5, 0.3, 0.2)),  # μ1 = μ2 + μ3
        ((0.5, 0.4, 0.2), (0.5, 0.3, 0.2)),  # μ1 < μ2 + μ3
        ((0.5, 0.1, 0.1), (0.5, 0.3, 0.2)),  # μ2 = μ3
        ((0.5, 0.05, 0.1), (0.5, 0.3, 0.2)),  # μ2 < μ3
        ((0.5, 0.1, -0.01), (0.5, 0.3, 0.2)),  # μ3 < 0
        ((0.1, 0.5, 0.0), (0.5, 0.3, 0.2)),  # decoy above signal
        ((0.5, 0.1, 0.0), (0.5, 0.3, 0.3)),  # probabilities do not sum to 1
        ((0.5, 0.1, 0.0), (0.7, 0.3, 0.0)),  # a class never sent
    ],
)
def test_intensity_ordering_violations_raise(
    mu: tuple[float, float, float], p: tuple[float, float, float]
) -> None:
    with pytest.raises(IntensityOrderError):
        DecoySettings(mu=mu, probabilities=p)


def test_vacuum_decoy_is_allowed() -> None:
    DecoySettings(mu=(0.5, 0.1, 0.0), probabilities=(0.5, 0.3, 0.2))


def test_security_parameters_are_validated() -> None:
    assert SecurityParameters() == SecurityParameters(1e-10, 1e-15, 0.15)
    with pytest.raises(ValueError, match="φ_tol"):
        SecurityParameters(phi_tol=0.6)
    with pytest.raises(ValueError, match="ε_sec"):
        SecurityParameters(eps_sec=0.0)


# --- exact values -------------------------------------------------------------------------


def test_tau_is_the_poisson_mixture() -> None:
    s = DecoySettings(mu=(0.5, 0.1, 0.0), probabilities=(0.5, 0.3, 0.2))
    assert s.tau(0) == pytest.approx(0.5 * math.exp(-0.5) + 0.3 * math.exp(-0.1) + 0.2)
    assert s.tau(1) == pytest.approx(0.5 * 0.5 * math.exp(-0.5) + 0.3 * 0.1 * math.exp(-0.1))
    assert sum(s.tau(n) for n in range(40)) == pytest.approx(1.0)


def test_hoeffding_deviation_exact() -> None:
    # ln(21/ε) = 2 when ε = 21 e^-2, so δ = sqrt(n).
    assert hoeffding_deviation(49.0, 21.0 * math.exp(-2.0)) == pytest.approx(7.0)
    minus, plus = class_bounds([10.0, 20.0, 19.0], SETTINGS, 21.0 * math.exp(-2.0))
    scale0 = math.exp(0.45) / 0.2
    assert minus[0] == pytest.approx(scale0 * (10.0 - 7.0))
    assert plus[0] == pytest.approx(scale0 * (10.0 + 7.0))


def test_gamma_exact_values() -> None:
    # (c+d)/(c d (1-b) b) · 21²/a² = 1 ⇒ log2 = 0 ⇒ γ = 0
    assert gamma(21.0, 0.5, 8.0, 8.0) == pytest.approx(0.0)
    # c = d = 2, b = 1/2, a = 21: log2(4) = 2, variance 0.25/ln 2 ⇒ γ = sqrt(0.5/ln 2)
    assert gamma(21.0, 0.5, 2.0, 2.0) == pytest.approx(math.sqrt(0.5 / math.log(2.0)))
    assert gamma(1e-10, 0.0, 1e4, 1e5) == 0.0


def test_vacuum_bound_with_a_true_vacuum_decoy() -> None:
    # μ3 = 0: Eq. 2 reduces to s_0 ≥ τ_0 n⁻_μ3.
    s = DecoySettings(mu=(0.5, 0.1, 0.0), probabilities=(0.5, 0.3, 0.2))
    minus, plus = class_bounds([5000.0, 900.0, 40.0], s, 1e-10)
    assert vacuum_lower_bound(minus, plus, s) == pytest.approx(s.tau(0) * minus[2])


def test_verification_cost() -> None:
    assert verification_cost(1e-15) == pytest.approx(math.log2(2e15))
    assert verification_cost(1e-15, 32) == pytest.approx(math.log2(2e15))
    assert verification_cost(1e-15, 128) == 129.0


# --- expected statistics and the key length ------------------------------------------------


def expected_statistics(
    pulses: float,
    *,
    eta: float,
    settings: DecoySettings = SETTINGS,
    p_key: float = P_KEY,
    p_dc: float = 6e-7,
    e_d: float = 0.01,
    t_error_extra: float = 0.0,
) -> BlockStatistics:
    """Rounded expected counts of an honest link (``t_error_extra`` adds T errors only)."""
    mu = np.array(settings.mu)
    p = np.array(settings.probabilities)
    gain = exact_gain(mu, eta, p_dc)
    err = exact_error_gain(mu, eta, p_dc, e_d) + t_error_extra * gain
    sent = pulses * p
    return BlockStatistics(
        pulses=int(pulses),
        sent_per_class=np.rint(sent).astype(np.int64),
        key_counts=np.rint(sent * p_key**2 * gain).astype(np.int64),
        test_counts=np.rint(sent * (1 - p_key) ** 2 * gain).astype(np.int64),
        test_errors=np.rint(sent * (1 - p_key) ** 2 * np.minimum(err, gain)).astype(np.int64),
    )


def test_honest_block_gives_key_and_the_pieces_add_up() -> None:
    stats = expected_statistics(1e8, eta=0.01)  # 50 km
    result = key_length(stats, SETTINGS, lambda_ec=0, verification_tag_bits=0)
    est = result.estimate
    expected = (
        est.s_key_0
        + est.s_key_1 * (1 - _h(est.phase_error))
        - 6 * math.log2(21 / 1e-10)
        - math.log2(2 / 1e-15)
    )
    assert result.secret_bits == math.floor(expected)
    assert result.produces_key
    assert 0.0 < est.phase_error < 0.15
    # Disclosed bits and authentication come straight off the key.
    leaky = key_length(
        stats, SETTINGS, lambda_ec=1000, verification_tag_bits=128, authentication_bits=300
    )
    assert leaky.secret_bits == math.floor(expected - 1000 - (129 - math.log2(2e15)))
    assert leaky.net_bits == leaky.secret_bits - 300


def _h(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p) if 0 < p < 1 else 0.0


def test_negative_costs_are_rejected() -> None:
    stats = expected_statistics(1e8, eta=0.01)
    for kwargs in (
        {"lambda_ec": -1, "verification_tag_bits": 0},
        {"lambda_ec": 0, "verification_tag_bits": -1},
        {"lambda_ec": 0, "verification_tag_bits": 0, "authentication_bits": -5},
    ):
        with pytest.raises(ValueError, match="non-negative"):
            key_length(stats, SETTINGS, **kwargs)


def test_key_length_falls_with_smaller_eps_and_more_leakage() -> None:
    stats = expected_statistics(1e10, eta=0.01)
    lengths = [
        key_length(
            stats,
            SETTINGS,
            lambda_ec=0,
            verification_tag_bits=0,
            security=SecurityParameters(eps_sec=eps),
        ).secret_bits
        for eps in (1e-6, 1e-10, 1e-14, 1e-20)
    ]
    assert lengths == sorted(lengths, reverse=True)
    assert len(set(lengths)) == 4
    base = key_length(stats, SETTINGS, lambda_ec=0, verification_tag_bits=0).secret_bits
    assert key_length(stats, SETTINGS, lambda_ec=777, verification_tag_bits=0).secret_bits == (
        base - 777
    )


def test_high_test_basis_error_aborts() -> None:
    stats = expected_statistics(1e8, eta=0.01, t_error_extra=0.2)
    with pytest.raises(PhaseErrorAboveToleranceError) as info:
        key_length(stats, SETTINGS, lambda_ec=0, verification_tag_bits=0)
    assert info.value.phase_error > 0.15
    assert info.value.tolerance == 0.15


def test_the_bound_never_reads_key_basis_errors() -> None:
    # The same T statistics give the same ℓ whatever the K errors were: they are not an input.
    stats = expected_statistics(1e8, eta=0.01)
    a = finite_key_bound(
        stats.key_counts,
        stats.test_counts,
        stats.test_errors,
        SETTINGS,
        SecurityParameters(),
        lambda_ec=0.0,
    )
    assert set(BlockStatistics.__dataclass_fields__) == {
        "pulses", "sent_per_class", "key_counts", "test_counts", "test_errors",
    }  # fmt: skip
    assert a.length > 0


# --- properties of the bounds --------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(
    log_pulses=st.floats(min_value=6.0, max_value=10.0),
    loss_db=st.floats(min_value=0.0, max_value=35.0),
    p_dc=st.floats(min_value=1e-8, max_value=1e-5),
    e_d=st.floats(min_value=0.0, max_value=0.06),
    mu1=st.floats(min_value=0.2, max_value=0.9),
    mu2_frac=st.floats(min_value=0.05, max_value=0.9),
    p1=st.floats(min_value=0.05, max_value=0.9),
    p2_frac=st.floats(min_value=0.05, max_value=0.95),
    p_key=st.floats(min_value=0.5, max_value=0.95),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_bounds_hold_on_sampled_blocks(  # noqa: PLR0917
    log_pulses: float,
    loss_db: float,
    p_dc: float,
    e_d: float,
    mu1: float,
    mu2_frac: float,
    p1: float,
    p2_frac: float,
    p_key: float,
    seed: int,
) -> None:
    """Counts drawn from the exact model: the lower bounds stay below the truth, φ ∈ [0, 1/2]."""
    mu3 = 1e-3 * mu2_frac
    mu2 = mu3 + mu2_frac * (mu1 - 2 * mu3)
    s = DecoySettings(
        mu=(mu1, mu2, mu3), probabilities=(p1, p2_frac * (1 - p1), (1 - p2_frac) * (1 - p1))
    )
    eta = 0.2 * 10 ** (-loss_db / 10)
    rng = np.random.default_rng(seed)
    pulses = 10**log_pulses
    mu = np.array(s.mu)
    p = np.array(s.probabilities)
    gain = exact_gain(mu, eta, p_dc)
    qber = exact_error_gain(mu, eta, p_dc, e_d) / gain
    n_k = rng.poisson(pulses * p * p_key**2 * gain)
    n_t = rng.poisson(pulses * p * (1 - p_key) ** 2 * gain)
    m_t = rng.binomial(n_t, qber)
    est = decoy_estimate(n_k, n_t, m_t, s, 1e-10)
    # True vacuum and single-photon detections in K (expectations; Poisson spread ≪ the bound gap).
    y0 = 1 - (1 - p_dc) ** 2
    y1 = 1 - (1 - p_dc) ** 2 * (1 - eta)
    true_k0 = pulses * p_key**2 * s.tau(0) * y0
    true_k1 = pulses * p_key**2 * s.tau(1) * y1
    assert est.s_key_0 <= true_k0 + 6 * math.sqrt(true_k0) + 1
    assert est.s_key_1 <= true_k1 + 6 * math.sqrt(true_k1) + 1
    assert est.s_key_1 <= n_k.sum()
    assert est.s_test_1 <= n_t.sum()
    assert 0.0 <= est.phase_error <= 0.5
    try:
        result = key_length(
            BlockStatistics(int(pulses), np.rint(pulses * p).astype(np.int64), n_k, n_t, m_t),
            s,
            lambda_ec=int(1.1 * n_k.sum() * _h(max(float(qber[0]), 1e-9))),
            verification_tag_bits=64,
        )
    except PhaseErrorAboveToleranceError as exc:
        assert exc.phase_error > 0.15
    else:
        if result.produces_key:
            assert 0.0 <= result.estimate.phase_error <= 0.15
            assert result.secret_bits <= n_k.sum()


# --- a key-basis-only intercept-resend record ----------------------------------------------


def simulate_block(
    pulses: int, *, eve_fraction: float, seed: int, eta: float = 0.1, e_d: float = 0.01
) -> tuple[BlockStatistics, float]:
    """Per-slot Monte Carlo of one frame; Eve measures a fraction of pulses in K and resends.

    Eve's resent pulses keep the honest gain (she adjusts her resend), so only
    the bases tell her apart: K bits keep their error rate, T bits on attacked
    pulses become random. Returns the block statistics and the K-basis QBER.
    """
    rng = np.random.default_rng(seed)
    s = SETTINGS
    a_basis = (rng.random(pulses) >= P_KEY).astype(np.uint8)  # 0 = K with probability p_K
    a_bit = rng.integers(0, 2, pulses, dtype=np.uint8)
    a_class = rng.choice(3, size=pulses, p=list(s.probabilities)).astype(np.uint8)
    mu = np.array(s.mu)
    gain = exact_gain(mu, eta, 6e-7)
    qber = exact_error_gain(mu, eta, 6e-7, e_d) / gain
    click = rng.random(pulses) < gain[a_class]
    slot = np.flatnonzero(click)
    n = len(slot)
    b_basis = (rng.random(n) >= P_KEY).astype(np.uint8)
    flip = rng.random(n) < qber[a_class[slot]]
    b_bit = a_bit[slot] ^ flip.astype(np.uint8)
    wrong_basis = a_basis[slot] != b_basis
    b_bit[wrong_basis] = rng.integers(0, 2, int(wrong_basis.sum()), dtype=np.uint8)
    attacked = rng.random(n) < eve_fraction
    # Eve resends in K: a T measurement of her state is a coin toss.
    randomised = attacked & (b_basis == 1)
    b_bit[randomised] = rng.integers(0, 2, int(randomised.sum()), dtype=np.uint8)
    frame = sift(Detections(slot, b_basis, b_bit), FramePattern(a_basis, a_bit, a_class))
    return frame.statistics, frame.key_errors() / max(frame.statistics.n_key, 1)


def _lambda_ec(stats: BlockStatistics, qber_k: float) -> int:
    return math.ceil(1.16 * stats.n_key * _h(qber_k))


def test_honest_record_gives_key() -> None:
    stats, qber_k = simulate_block(12_000_000, eve_fraction=0.0, seed=7)
    assert stats.n_key > 100_000
    result = key_length(
        stats, SETTINGS, lambda_ec=_lambda_ec(stats, qber_k), verification_tag_bits=64
    )
    assert result.produces_key
    assert result.secret_bits > 0.05 * stats.n_key


@pytest.mark.parametrize("fraction", [1.0, 0.35])
def test_key_basis_only_intercept_resend_gives_no_key(fraction: float) -> None:
    stats, qber_k = simulate_block(12_000_000, eve_fraction=fraction, seed=11)
    assert qber_k < 0.02  # the key basis looks normal
    assert stats.test_qber > 0.15
    with pytest.raises(PhaseErrorAboveToleranceError):
        key_length(stats, SETTINGS, lambda_ec=_lambda_ec(stats, qber_k), verification_tag_bits=64)
    # Even without the abort threshold the bound certifies nothing.
    result = key_length(
        stats,
        SETTINGS,
        lambda_ec=_lambda_ec(stats, qber_k),
        verification_tag_bits=64,
        security=SecurityParameters(phi_tol=0.5),
    )
    assert not result.produces_key


def test_small_key_basis_attack_shortens_the_key() -> None:
    honest, q_h = simulate_block(12_000_000, eve_fraction=0.0, seed=3)
    attacked, q_a = simulate_block(12_000_000, eve_fraction=0.01, seed=3)
    assert abs(q_a - q_h) < 0.003
    loose = SecurityParameters(phi_tol=0.5)
    ell_h = key_length(
        honest,
        SETTINGS,
        lambda_ec=_lambda_ec(honest, q_h),
        verification_tag_bits=64,
        security=loose,
    )
    ell_a = key_length(
        attacked,
        SETTINGS,
        lambda_ec=_lambda_ec(attacked, q_a),
        verification_tag_bits=64,
        security=loose,
    )
    assert ell_a.estimate.phase_error > ell_h.estimate.phase_error
    assert ell_a.secret_bits < 0.8 * ell_h.secret_bits
