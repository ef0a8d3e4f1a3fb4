"""Asymptotic GLLP decoy-state key rate, for comparison with the finite-key bound.

Ma, Qi, Zhao & Lo, "Practical decoy state for quantum key distribution",
PRA 72, 012326 (2005): the vacuum + weak decoy estimates of the single-photon
yield and error rate, and the GLLP rate

    R ≥ q { −Q_μ f h(E_μ) + Q_1 [1 − h(e_1)] },   Q_1 = Y_1 μ e^(−μ).

Equation numbers of that paper were not re-checked here; the forms are its
vacuum + weak decoy bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qkdd.postprocessing.entropy import binary_entropy


@dataclass(frozen=True, slots=True)
class ObservedGains:
    """Gains and QBERs per class: signal μ, weak decoy ν and vacuum (Y0, e0)."""

    mu: float
    nu: float
    gain_mu: float
    qber_mu: float
    gain_nu: float
    qber_nu: float
    y0: float
    e0: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.nu < self.mu:
            raise ValueError("the weak decoy must satisfy 0 < ν < μ")


def single_photon_yield_lower_bound(g: ObservedGains) -> float:
    """Y1 ≥ μ/(μν − ν²) [Q_ν e^ν − Q_μ e^μ ν²/μ² − (μ² − ν²)/μ² · Y0] (vacuum + weak decoy)."""
    mu, nu = g.mu, g.nu
    return (
        mu
        / (mu * nu - nu**2)
        * (
            g.gain_nu * math.exp(nu)
            - g.gain_mu * math.exp(mu) * nu**2 / mu**2
            - (mu**2 - nu**2) / mu**2 * g.y0
        )
    )


def single_photon_error_upper_bound(g: ObservedGains, y1: float) -> float:
    """e1 ≤ (E_ν Q_ν e^ν − e0 Y0) / (Y1 ν), capped at 1/2."""
    if y1 <= 0.0:
        return 0.5
    e1 = (g.qber_nu * g.gain_nu * math.exp(g.nu) - g.e0 * g.y0) / (y1 * g.nu)
    return min(max(e1, 0.0), 0.5)


def gllp_rate(g: ObservedGains, ec_efficiency: float, sifting_factor: float = 0.5) -> float:
    """GLLP key per pulse with the vacuum + weak decoy bounds; ≤ 0 means no key.

    ``sifting_factor`` is q: 1/2 for standard BB84 (the paper's choice), p_K²
    for our asymmetric protocol where only K-basis bits become key.
    """
    y1 = single_photon_yield_lower_bound(g)
    if y1 <= 0.0:
        return 0.0
    e1 = single_photon_error_upper_bound(g, y1)
    q1 = y1 * g.mu * math.exp(-g.mu)
    leak = g.gain_mu * ec_efficiency * binary_entropy(g.qber_mu)
    return sifting_factor * (q1 * (1.0 - binary_entropy(e1)) - leak)


def gllp_rate_infinite_decoys(
    *,
    mu: float,
    gain_mu: float,
    qber_mu: float,
    y1: float,
    e1: float,
    ec_efficiency: float,
    sifting_factor: float = 0.5,
) -> float:
    """GLLP rate with the true Y1, e1 (infinitely many decoys): the limit the bounds approach."""
    q1 = y1 * mu * math.exp(-mu)
    leak = gain_mu * ec_efficiency * binary_entropy(qber_mu)
    return sifting_factor * (q1 * (1.0 - binary_entropy(e1)) - leak)
