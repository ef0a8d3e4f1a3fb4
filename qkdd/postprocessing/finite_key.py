"""Decoy-state parameter estimation and finite-key length (DESIGN §4).

Lim, Curty, Walenta, Xu & Zbinden, "Concise security bounds for practical
decoy-state quantum key distribution", PRA 89, 022307 (2014), main-text
Eqs. 1–5, with Lim's X = our K (key basis) and Lim's Z = our T (test basis):
s_K,0 and s_K,1 come from K counts; s_T,1 and v_T,1 from T counts and T errors;
φ_K from Eq. 5 with c = s_T,1, d = s_K,1. The K-basis error count never enters
the bound (an eavesdropper who measures only in K leaves it near e_d).

:func:`finite_key_bound` is the one place the bound lives; a tighter bound
(Chernoff / arXiv:2405.16578) replaces that function. :func:`key_length`
applies it to a block's integer statistics, enforces φ_tol and reports the
net key after the authentication cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qkdd.postprocessing.entropy import binary_entropy
from qkdd.postprocessing.sifting import N_CLASSES, BlockStatistics

#: Lim 2014, App. B: ε_sec = 2(2α1 + α2 + α3) + ν + 10ε1 + 2ε2 = 21ε with every term ε.
SECURITY_TERMS = 21.0


class IntensityOrderError(ValueError):
    """The decoy intensities violate μ1 > μ2 + μ3 and μ2 > μ3 ≥ 0 (or the probabilities are bad)."""


class PhaseErrorAboveToleranceError(Exception):
    """The phase-error bound φ_K exceeds φ_tol: the protocol aborts the block (Lim 2014, step 2)."""

    def __init__(self, phase_error: float, tolerance: float) -> None:
        super().__init__(f"phase-error bound {phase_error:.4f} exceeds tolerance {tolerance:.4f}")
        self.phase_error = phase_error
        self.tolerance = tolerance


@dataclass(frozen=True, slots=True)
class DecoySettings:
    """Intensities μ1 (signal), μ2 (decoy), μ3 (vacuum or weak) and their probabilities p_k."""

    mu: tuple[float, float, float]
    probabilities: tuple[float, float, float]

    def __post_init__(self) -> None:
        mu1, mu2, mu3 = self.mu
        if not (mu3 >= 0.0 and mu2 > mu3 and mu1 > mu2 + mu3):
            raise IntensityOrderError(
                f"intensities must satisfy μ1 > μ2 + μ3 and μ2 > μ3 ≥ 0, got {self.mu}"
            )
        if any(not p > 0.0 for p in self.probabilities) or not math.isclose(
            sum(self.probabilities), 1.0, rel_tol=0.0, abs_tol=1e-9
        ):
            raise IntensityOrderError(
                f"class probabilities must be positive and sum to 1, got {self.probabilities}"
            )

    def tau(self, n: int) -> float:
        """τ_n = Σ_k p_k e^(−μ_k) μ_k^n / n!: probability that Alice sends n photons."""
        return sum(
            p * math.exp(-m) * m**n / math.factorial(n)
            for m, p in zip(self.mu, self.probabilities, strict=True)
        )


@dataclass(frozen=True, slots=True)
class SecurityParameters:
    """ε_sec (fixed per block), ε_cor and the phase-error abort threshold φ_tol (DESIGN §4)."""

    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    phi_tol: float = 0.15

    def __post_init__(self) -> None:
        if not (0.0 < self.eps_sec < 1.0 and 0.0 < self.eps_cor < 1.0):
            raise ValueError("ε_sec and ε_cor must lie in (0, 1)")
        if not 0.0 < self.phi_tol <= 0.5:
            raise ValueError("φ_tol must lie in (0, 0.5]")


def hoeffding_deviation(total: float, eps_sec: float) -> float:
    """δ = sqrt(total/2 · ln(21/ε_sec)), one deviation for every class (Lim 2014, after Eq. 3)."""
    return math.sqrt(max(total, 0.0) / 2.0 * math.log(SECURITY_TERMS / eps_sec))


def class_bounds(
    counts: npt.ArrayLike, settings: DecoySettings, eps_sec: float
) -> tuple[list[float], list[float]]:
    """(n⁻_k, n⁺_k) = (e^μk / p_k)(n_k ∓ δ) with δ from the basis total (Lim 2014, after Eq. 3)."""
    c = [float(x) for x in np.asarray(counts, dtype=np.float64)]
    delta = hoeffding_deviation(sum(c), eps_sec)
    scale = [math.exp(m) / p for m, p in zip(settings.mu, settings.probabilities, strict=True)]
    minus = [s * (n - delta) for s, n in zip(scale, c, strict=True)]
    plus = [s * (n + delta) for s, n in zip(scale, c, strict=True)]
    return minus, plus


def vacuum_lower_bound(minus: list[float], plus: list[float], settings: DecoySettings) -> float:
    """Eq. 2: s_0 ≥ τ_0 (μ2 n⁻_μ3 − μ3 n⁺_μ2) / (μ2 − μ3)."""
    _, mu2, mu3 = settings.mu
    return settings.tau(0) * (mu2 * minus[2] - mu3 * plus[1]) / (mu2 - mu3)


def single_photon_lower_bound(
    minus: list[float], plus: list[float], s0: float, settings: DecoySettings
) -> float:
    """Eq. 3: s_1 ≥ τ_1 μ1 [n⁻_μ2 − n⁺_μ3 − (μ2² − μ3²)/μ1² (n⁺_μ1 − s_0/τ_0)] / D.

    D = μ1(μ2 − μ3) − μ2² + μ3² = (μ2 − μ3)(μ1 − μ2 − μ3) > 0 by the intensity ordering.
    """
    mu1, mu2, mu3 = settings.mu
    numerator = minus[1] - plus[2] - (mu2**2 - mu3**2) / mu1**2 * (plus[0] - s0 / settings.tau(0))
    return settings.tau(1) * mu1 * numerator / (mu1 * (mu2 - mu3) - mu2**2 + mu3**2)


def single_photon_error_upper_bound(
    minus: list[float], plus: list[float], settings: DecoySettings
) -> float:
    """Eq. 4: v_1 ≤ τ_1 (m⁺_μ2 − m⁻_μ3) / (μ2 − μ3), from the T-basis error counts."""
    _, mu2, mu3 = settings.mu
    return settings.tau(1) * (plus[1] - minus[2]) / (mu2 - mu3)


def gamma(a: float, b: float, c: float, d: float) -> float:
    """γ(a, b, c, d) of Eq. 5 (Fung, Ma & Chau's approximation to a hypergeometric tail).

    γ = sqrt( (c+d)(1−b)b / (c·d·ln 2) · log2( (c+d)/(c·d·(1−b)·b) · 21²/a² ) ),
    continued by its limit 0 at b = 0.
    """
    if b <= 0.0:
        return 0.0
    b = min(b, 0.5)
    var = (c + d) * (1.0 - b) * b / (c * d * math.log(2.0))
    arg = (c + d) / (c * d * (1.0 - b) * b) * SECURITY_TERMS**2 / a**2
    return math.sqrt(max(var * math.log2(arg), 0.0))


def phase_error_upper_bound(v_t1: float, s_t1: float, s_k1: float, eps_sec: float) -> float:
    """Eq. 5: φ_K ≤ v_T,1/s_T,1 + γ(ε_sec, v_T,1/s_T,1, s_T,1, s_K,1), capped at 1/2.

    Without positive single-photon bounds nothing is certified: φ_K = 1/2.
    """
    if s_t1 <= 0.0 or s_k1 <= 0.0:
        return 0.5
    b = max(v_t1, 0.0) / s_t1
    if b >= 0.5:
        return 0.5
    return min(b + gamma(eps_sec, b, s_t1, s_k1), 0.5)


@dataclass(frozen=True, slots=True)
class DecoyEstimate:
    """Bounds of Eqs. 2–5 for a block, in events (not rates).

    Negative lower bounds are replaced by the trivial bound 0.
    """

    s_key_0: float
    s_key_1: float
    s_test_0: float
    s_test_1: float
    v_test_1: float
    phase_error: float


@dataclass(frozen=True, slots=True)
class BoundResult:
    """What :func:`finite_key_bound` returns: ℓ before rounding and the estimate behind it."""

    length: float
    estimate: DecoyEstimate
    verification_cost: float


def verification_cost(eps_cor: float, verification_tag_bits: int = 0) -> float:
    """log2(2/ε_cor), or the real tag length + 1 when the tag is longer than log2(1/ε_cor)."""
    return max(math.log2(2.0 / eps_cor), float(verification_tag_bits) + 1.0)


def decoy_estimate(
    key_counts: npt.ArrayLike,
    test_counts: npt.ArrayLike,
    test_errors: npt.ArrayLike,
    settings: DecoySettings,
    eps_sec: float,
) -> DecoyEstimate:
    """Eqs. 2–5 from per-class K counts, T counts and T errors (integers or expectations)."""
    k_minus, k_plus = class_bounds(key_counts, settings, eps_sec)
    t_minus, t_plus = class_bounds(test_counts, settings, eps_sec)
    e_minus, e_plus = class_bounds(test_errors, settings, eps_sec)
    s_k0 = max(vacuum_lower_bound(k_minus, k_plus, settings), 0.0)
    s_k1 = max(single_photon_lower_bound(k_minus, k_plus, s_k0, settings), 0.0)
    s_t0 = max(vacuum_lower_bound(t_minus, t_plus, settings), 0.0)
    s_t1 = max(single_photon_lower_bound(t_minus, t_plus, s_t0, settings), 0.0)
    v_t1 = max(single_photon_error_upper_bound(e_minus, e_plus, settings), 0.0)
    phi = phase_error_upper_bound(v_t1, s_t1, s_k1, eps_sec)
    return DecoyEstimate(s_k0, s_k1, s_t0, s_t1, v_t1, phi)


def finite_key_bound(
    key_counts: npt.ArrayLike,
    test_counts: npt.ArrayLike,
    test_errors: npt.ArrayLike,
    settings: DecoySettings,
    security: SecurityParameters,
    *,
    lambda_ec: float,
    verification_tag_bits: int = 0,
) -> BoundResult:
    """The finite-key bound, Lim 2014 Eq. 1 (replace this one function for a tighter bound).

    ℓ = s_K,0 + s_K,1 − s_K,1·h(φ_K) − λ_EC − 6·log2(21/ε_sec) − log2(2/ε_cor),
    with log2(2/ε_cor) replaced by the verification tag length + 1 when the tag
    is longer. Returned unrounded; :func:`key_length` floors it and enforces φ_tol.
    """
    if lambda_ec < 0:
        raise ValueError("λ_EC must be non-negative")
    est = decoy_estimate(key_counts, test_counts, test_errors, settings, security.eps_sec)
    cost = verification_cost(security.eps_cor, verification_tag_bits)
    length = (
        est.s_key_0
        + est.s_key_1 * (1.0 - binary_entropy(est.phase_error))
        - lambda_ec
        - 6.0 * math.log2(SECURITY_TERMS / security.eps_sec)
        - cost
    )
    return BoundResult(length=length, estimate=est, verification_cost=cost)


@dataclass(frozen=True, slots=True)
class KeyLength:
    """Key length of a block: ℓ (secret bits), and the net key after authentication."""

    secret_bits: int
    net_bits: int
    estimate: DecoyEstimate
    lambda_ec: int
    verification_cost: float
    authentication_bits: int

    @property
    def produces_key(self) -> bool:
        """ℓ > 0; otherwise the block is discarded with alarm ``key_length_zero``."""
        return self.secret_bits > 0


def key_length(
    stats: BlockStatistics,
    settings: DecoySettings,
    *,
    lambda_ec: int,
    verification_tag_bits: int,
    authentication_bits: int = 0,
    security: SecurityParameters | None = None,
) -> KeyLength:
    """ℓ for a block from its statistics, after λ_EC bits disclosed in reconciliation.

    ``lambda_ec`` counts every key-dependent bit disclosed in either direction;
    ``verification_tag_bits`` is the real verification tag length;
    ``authentication_bits`` is the authentication key spent on the block, taken
    off ℓ to give the net key. Raises :class:`PhaseErrorAboveToleranceError` when
    φ_K > φ_tol (abort). ℓ ≤ 0 is returned, not raised: the caller raises
    ``key_length_zero``.
    """
    sec = security or SecurityParameters()
    if stats.key_counts.shape != (N_CLASSES,):
        raise ValueError("statistics must have one entry per intensity class")
    if lambda_ec < 0 or verification_tag_bits < 0 or authentication_bits < 0:
        raise ValueError("λ_EC, the tag length and the authentication cost must be non-negative")
    bound = finite_key_bound(
        stats.key_counts,
        stats.test_counts,
        stats.test_errors,
        settings,
        sec,
        lambda_ec=float(lambda_ec),
        verification_tag_bits=verification_tag_bits,
    )
    if bound.estimate.phase_error > sec.phi_tol:
        raise PhaseErrorAboveToleranceError(bound.estimate.phase_error, sec.phi_tol)
    secret = math.floor(bound.length)
    return KeyLength(
        secret_bits=secret,
        net_bits=secret - authentication_bits,
        estimate=bound.estimate,
        lambda_ec=lambda_ec,
        verification_cost=bound.verification_cost,
        authentication_bits=authentication_bits,
    )
