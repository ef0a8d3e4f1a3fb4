"""The closed-form expectation model against a per-slot reference simulation and the textbook."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qkdd.physics.expected import (
    LinkModel,
    exact_error_gain,
    exact_gain,
    expected_counts,
    fibre_transmittance,
    lim2014_error_gain,
    lim2014_gain,
    textbook_error_gain,
    textbook_gain,
)


def test_fibre_transmittance() -> None:
    assert fibre_transmittance(0.2, 100.0) == pytest.approx(1e-2)
    assert fibre_transmittance(0.2, 50.0, extra_loss_db=3.0) == pytest.approx(10 ** (-1.3))
    with pytest.raises(ValueError, match="non-negative"):
        fibre_transmittance(0.2, -1.0)


def _reference_clicks(
    rng: np.random.Generator, slots: int, *, mu: float, eta: float, p_dc: float, e_d: float
) -> tuple[float, float]:
    """Per-slot simulation: Poisson photons, loss, misalignment per photon, dark counts,
    double clicks squashed to a random bit. Returns (gain, error gain) frequencies."""
    photons = rng.poisson(mu, slots)
    arrived = rng.binomial(photons, eta)
    to_wrong = rng.binomial(arrived, e_d)
    to_right = arrived - to_wrong
    right = (to_right > 0) | (rng.random(slots) < p_dc)
    wrong = (to_wrong > 0) | (rng.random(slots) < p_dc)
    double = right & wrong
    error = (wrong & ~right) | (double & (rng.random(slots) < 0.5))
    return float(np.mean(right | wrong)), float(np.mean(error))


@pytest.mark.parametrize(
    ("mu", "eta", "p_dc", "e_d"),
    [
        (0.5, 0.4, 1e-3, 0.05),  # large ημ: misalignment double clicks matter
        (0.5, 0.05, 2e-2, 0.01),  # dark counts matter
        (0.0, 0.3, 5e-2, 0.02),  # vacuum: dark counts only
    ],
)
def test_exact_forms_match_a_per_slot_simulation(
    mu: float, eta: float, p_dc: float, e_d: float
) -> None:
    slots = 400_000
    gain, err = _reference_clicks(
        np.random.default_rng(5), slots, mu=mu, eta=eta, p_dc=p_dc, e_d=e_d
    )
    q = float(exact_gain(mu, eta, p_dc))
    eq = float(exact_error_gain(mu, eta, p_dc, e_d))
    assert abs(gain - q) < 5 * math.sqrt(q * (1 - q) / slots)
    assert abs(err - eq) < 5 * math.sqrt(eq * (1 - eq) / slots)


def test_misalignment_double_clicks_differ_from_the_textbook() -> None:
    # At ημ = 0.4 and e_d = 1 %, the exact E·Q is above e_d(1 − e^(−ημ)) (security review, A.1).
    eta, mu = 0.8, 0.5
    exact = float(exact_error_gain(mu, eta, 0.0, 0.01))
    textbook = float(textbook_error_gain(mu, eta, 0.0, 0.01))
    assert exact > textbook
    assert exact / textbook == pytest.approx(1.013, abs=0.003)


def test_textbook_is_the_low_noise_limit() -> None:
    eta, p_dc, e_d = 1e-3, 1e-7, 0.02
    mu = np.array([0.5, 0.1, 0.0])
    y0 = 2 * p_dc
    assert np.allclose(exact_gain(mu, eta, p_dc), textbook_gain(mu, eta, y0), rtol=1e-3)
    assert np.allclose(
        exact_error_gain(mu, eta, p_dc, e_d), textbook_error_gain(mu, eta, y0, e_d), rtol=1e-3
    )


def test_lim2014_forms() -> None:
    eta, p_dc, p_ap, e_mis = 0.01, 6e-7, 0.04, 5e-3
    d = 1 - (1 - 2 * p_dc) * math.exp(-eta * 0.5)
    assert float(lim2014_gain(0.5, eta, p_dc, p_ap)) == pytest.approx(d * 1.04)
    assert float(lim2014_error_gain(0.5, eta, p_dc, e_mis, p_ap)) == pytest.approx(
        p_dc + e_mis * (1 - math.exp(-eta * 0.5)) + p_ap * d / 2
    )


def test_link_model_selects_the_forms() -> None:
    mu = [0.5, 0.1, 0.0]
    textbook = expected_counts(LinkModel(y0=1.7e-6, model="textbook"), 50.0, mu)
    assert textbook.gain[2] == pytest.approx(1.7e-6)
    assert textbook.qber[2] == pytest.approx(0.5)
    exact = expected_counts(LinkModel(dark_count=1e-6), 50.0, mu)
    assert exact.gain[2] == pytest.approx(1 - (1 - 1e-6) ** 2)
    assert np.all(np.diff(exact.gain) < 0)
    with pytest.raises(ValueError, match="y0"):
        LinkModel(model="textbook")
    with pytest.raises(ValueError, match="unknown model"):
        LinkModel(model="magic")
    with pytest.raises(ValueError, match="misalignment"):
        LinkModel(misalignment=0.7)
