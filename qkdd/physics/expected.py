"""Closed-form expected gains and error gains per intensity class (DESIGN §3, "Test oracle").

Pure functions: the simulated link is tested against the *exact* expectation
of its own stochastic model, and ``qkdd keyrate`` evaluates the same forms.
Each physical effect has its own function so that tests can switch effects
on one at a time; :func:`expected_counts` combines them.

Conventions: ``mu`` is the mean photon number of a pulse at Alice's output,
``eta`` the total transmittance (fibre × Bob's optics × detector efficiency),
``p_dc`` the dark-count probability per detector per slot. Gains are click
probabilities per sent pulse in the measured basis; an *error gain* is the
probability per pulse that the click gives the wrong bit (Lim 2014's e_k is
such a probability per pulse, not a rate).

Effects covered here: fibre loss, per-detector dark counts with d detectors
in play, misalignment (including its double clicks, squashed to a random
bit), and the afterpulse forms of Lim et al. 2014. Dead-time scaling and
afterpulses as a class-independent background from earlier clicks are for
the physics twin to add beside these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Detectors in play for one basis measurement with an active basis choice.
ACTIVE_DETECTORS = 2


def fibre_transmittance(
    alpha_db_per_km: float, distance_km: float, extra_loss_db: float = 0.0
) -> float:
    """η_ch = 10^(−(α·L + extra)/10)."""
    if alpha_db_per_km < 0 or distance_km < 0 or extra_loss_db < 0:
        raise ValueError("attenuation, distance and extra loss must be non-negative")
    return float(10.0 ** (-(alpha_db_per_km * distance_km + extra_loss_db) / 10.0))


def exact_gain(
    mu: npt.ArrayLike, eta: float, p_dc: float, detectors: int = ACTIVE_DETECTORS
) -> FloatArray:
    """Q = 1 − (1 − p_dc)^d · e^(−ημ): at least one of d detectors clicks.

    Exact for a phase-randomised coherent pulse: the d output modes are
    independent coherent states whose mean photon numbers sum to ημ.
    """
    m = np.asarray(mu, dtype=np.float64)
    return -np.expm1(detectors * math.log1p(-p_dc) - eta * m)


def exact_error_gain(mu: npt.ArrayLike, eta: float, p_dc: float, misalignment: float) -> FloatArray:
    """E·Q for two detectors with misalignment e_d, double clicks squashed to a random bit.

    The pulse reaches the right detector with mean ημ(1 − e_d) and the wrong one
    with ημ·e_d, independently (coherent states). With P_r, P_w their click
    probabilities (each including its own dark count), an error is a lone wrong
    click or half of the double clicks: E·Q = P_w (1 − P_r/2).
    """
    m = np.asarray(mu, dtype=np.float64)
    no_dark = math.log1p(-p_dc)
    p_right = -np.expm1(no_dark - eta * (1.0 - misalignment) * m)
    p_wrong = -np.expm1(no_dark - eta * misalignment * m)
    return p_wrong * (1.0 - 0.5 * p_right)


def textbook_gain(mu: npt.ArrayLike, eta: float, y0: float) -> FloatArray:
    """Q ≈ Y0 + 1 − e^(−ημ) (Ma, Qi, Zhao & Lo 2005, Eq. 4), Y0 a parameter of its own."""
    m = np.asarray(mu, dtype=np.float64)
    return y0 - np.expm1(-eta * m)


def textbook_error_gain(
    mu: npt.ArrayLike, eta: float, y0: float, misalignment: float, e0: float = 0.5
) -> FloatArray:
    """E·Q ≈ e0·Y0 + e_d(1 − e^(−ημ)) (Ma, Qi, Zhao & Lo 2005, Eq. 5)."""
    m = np.asarray(mu, dtype=np.float64)
    return e0 * y0 - misalignment * np.expm1(-eta * m)


def lim2014_detection(mu: npt.ArrayLike, eta: float, p_dc: float) -> FloatArray:
    """D_k = 1 − (1 − 2p_dc)·e^(−ημ_k), Lim et al. PRA 89, 022307 (2014), Sec. IV."""
    m = np.asarray(mu, dtype=np.float64)
    return 1.0 - (1.0 - 2.0 * p_dc) * np.exp(-eta * m)


def lim2014_gain(mu: npt.ArrayLike, eta: float, p_dc: float, p_ap: float) -> FloatArray:
    """R_k = D_k (1 + p_ap) (Lim 2014, Sec. IV: afterpulses tied to the same class)."""
    return lim2014_detection(mu, eta, p_dc) * (1.0 + p_ap)


def lim2014_error_gain(
    mu: npt.ArrayLike, eta: float, p_dc: float, misalignment: float, p_ap: float
) -> FloatArray:
    """e_k = p_dc + e_mis(1 − e^(−ημ_k)) + p_ap·D_k/2 (Lim 2014, Sec. IV, with η the system η)."""
    m = np.asarray(mu, dtype=np.float64)
    return p_dc - misalignment * np.expm1(-eta * m) + 0.5 * p_ap * lim2014_detection(m, eta, p_dc)


@dataclass(frozen=True, slots=True)
class LinkModel:
    """Channel and receiver of a link, enough to evaluate the expected counts.

    ``model`` picks the closed forms: ``"exact"`` (dark counts per detector,
    exact misalignment double clicks; afterpulses, if any, in Lim's form),
    ``"textbook"`` (Y0 given directly, Ma et al. 2005) or ``"lim2014"``
    (Lim et al. 2014's evaluation model, for reproducing the paper).
    """

    alpha_db_per_km: float = 0.2
    eta_bob: float = 0.1
    dark_count: float = 6e-7
    misalignment: float = 5e-3
    afterpulse: float = 0.0
    y0: float | None = None
    extra_loss_db: float = 0.0
    model: str = "exact"

    def __post_init__(self) -> None:
        if self.model not in {"exact", "textbook", "lim2014"}:
            raise ValueError(f"unknown model {self.model!r}: exact, textbook or lim2014")
        if self.model == "textbook" and self.y0 is None:
            raise ValueError("the textbook model needs y0 (background yield)")
        for name in ("eta_bob", "dark_count", "misalignment", "afterpulse"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if not 0.0 <= self.misalignment <= 0.5:
            raise ValueError("misalignment must lie in [0, 0.5]")

    def transmittance(self, distance_km: float) -> float:
        """η = η_ch·η_Bob at the given fibre length."""
        ch = fibre_transmittance(self.alpha_db_per_km, distance_km, self.extra_loss_db)
        return ch * self.eta_bob


@dataclass(frozen=True, slots=True)
class ExpectedCounts:
    """Per-class expectation: ``gain[k]`` and ``error_gain[k]`` per sent pulse in one basis."""

    gain: FloatArray
    error_gain: FloatArray

    @property
    def qber(self) -> FloatArray:
        """E_k = error gain / gain per class."""
        out: FloatArray = self.error_gain / self.gain
        return out


def expected_counts(link: LinkModel, distance_km: float, mu: npt.ArrayLike) -> ExpectedCounts:
    """Gain and error gain for each intensity in ``mu`` at ``distance_km`` under ``link``."""
    eta = link.transmittance(distance_km)
    m = np.asarray(mu, dtype=np.float64)
    if link.model == "textbook":
        assert link.y0 is not None
        gain = textbook_gain(m, eta, link.y0)
        err = textbook_error_gain(m, eta, link.y0, link.misalignment)
    elif link.model == "lim2014":
        gain = lim2014_gain(m, eta, link.dark_count, link.afterpulse)
        err = lim2014_error_gain(m, eta, link.dark_count, link.misalignment, link.afterpulse)
    else:
        clicks = exact_gain(m, eta, link.dark_count)
        gain = clicks * (1.0 + link.afterpulse)
        err = exact_error_gain(m, eta, link.dark_count, link.misalignment)
        err = err + 0.5 * link.afterpulse * clicks
    return ExpectedCounts(gain=np.asarray(gain, np.float64), error_gain=np.asarray(err, np.float64))
