"""Secret key per pulse versus distance, finite-key or asymptotic, with a parameter optimiser.

The expected counts come from :mod:`qkdd.physics.expected` (the model shared
with the simulator's test oracle); the finite-key rate is the same
:func:`~qkdd.postprocessing.finite_key.finite_key_bound` that the link applies
to real blocks, evaluated on expectations as in Lim et al. 2014, Sec. IV:
for a post-processing block of n_K key-basis bits,

    N = n_K / (p_K² Σ_k p_k R_k),  n_K,k = N p_K² p_k R_k,
    n_T,k = N p_T² p_k R_k,  m_T,k = N p_T² p_k e_k,
    λ_EC = f · n_K · h(E_K),  rate = ℓ / N.

The optimiser draws random starts over the whole feasible region, then runs
bounded Nelder–Mead from the best few (starting only from signal-heavy guesses
returns 0 at small blocks, where the optimum has large decoy probabilities).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize

from qkdd.physics.expected import LinkModel, expected_counts
from qkdd.postprocessing.asymptotic import ObservedGains, gllp_rate
from qkdd.postprocessing.entropy import binary_entropy
from qkdd.postprocessing.finite_key import (
    DecoySettings,
    IntensityOrderError,
    SecurityParameters,
    finite_key_bound,
)


@dataclass(frozen=True, slots=True)
class ProtocolParameters:
    """The parameters the optimiser tunes: intensities, class probabilities and p_K."""

    # Defaults near Lim 2014's optimum for n_K = 10^6 (performance.md §1.4).
    mu1: float = 0.45
    mu2: float = 0.2
    mu3: float = 2e-4
    p_mu1: float = 0.2
    p_mu2: float = 0.55
    p_key: float = 0.78

    @property
    def p_mu3(self) -> float:
        """p_μ3 = 1 − p_μ1 − p_μ2."""
        return 1.0 - self.p_mu1 - self.p_mu2

    def decoy_settings(self) -> DecoySettings:
        """The validated decoy settings (raises :class:`IntensityOrderError`)."""
        return DecoySettings(
            mu=(self.mu1, self.mu2, self.mu3),
            probabilities=(self.p_mu1, self.p_mu2, self.p_mu3),
        )


@dataclass(frozen=True, slots=True)
class KeyRatePoint:
    """One point of the curve: key per pulse and the parameters that gave it."""

    distance_km: float
    rate_per_pulse: float
    mu: float
    mu2: float
    mu3: float
    p_mu1: float | None
    p_mu2: float | None
    p_mu3: float | None
    p_key: float | None
    qber: float
    phase_error: float | None

    def as_dict(self) -> dict[str, float | None]:
        """JSON-ready mapping."""
        return asdict(self)


def _finite_length_per_pulse(
    link: LinkModel,
    distance_km: float,
    params: ProtocolParameters,
    *,
    block_size: float,
    ec_efficiency: float,
    security: SecurityParameters,
) -> tuple[float, float, float]:
    """(ℓ/N unclamped, E_K, φ_K) for a block of ``block_size`` K bits."""
    settings = params.decoy_settings()
    counts = expected_counts(link, distance_km, settings.mu)
    p = np.asarray(settings.probabilities)
    p_t = 1.0 - params.p_key
    detect = float(np.dot(p, counts.gain))
    if detect <= 0.0:
        return -math.inf, 0.5, 0.5
    pulses = block_size / (params.p_key**2 * detect)
    qber_k = float(np.dot(p, counts.error_gain)) / detect
    n_k = pulses * params.p_key**2 * p * counts.gain
    n_t = pulses * p_t**2 * p * counts.gain
    m_t = pulses * p_t**2 * p * counts.error_gain
    leak = ec_efficiency * block_size * binary_entropy(qber_k)
    bound = finite_key_bound(n_k, n_t, m_t, settings, security, lambda_ec=leak)
    return float(bound.length / pulses), qber_k, float(bound.estimate.phase_error)


def finite_key_rate(
    link: LinkModel,
    distance_km: float,
    params: ProtocolParameters,
    *,
    block_size: float,
    ec_efficiency: float = 1.16,
    security: SecurityParameters | None = None,
) -> float:
    """Secret key per sent pulse at ``block_size`` K bits (0 when ℓ ≤ 0 or φ_K > φ_tol)."""
    sec = security or SecurityParameters()
    rate, _, phi = _finite_length_per_pulse(
        link, distance_km, params, block_size=block_size, ec_efficiency=ec_efficiency, security=sec
    )
    if phi > sec.phi_tol or rate <= 0.0:
        return 0.0
    return rate


def asymptotic_key_rate(
    link: LinkModel,
    distance_km: float,
    params: ProtocolParameters,
    *,
    ec_efficiency: float = 1.16,
    sifting_factor: float = 0.5,
) -> float:
    """GLLP rate (vacuum + weak decoy, Ma et al. 2005): μ = μ1, ν = μ2, vacuum yield at μ = 0."""
    counts = expected_counts(link, distance_km, [params.mu1, params.mu2, 0.0])
    gain = counts.gain
    err = counts.error_gain
    observed = ObservedGains(
        mu=params.mu1,
        nu=params.mu2,
        gain_mu=float(gain[0]),
        qber_mu=float(err[0] / gain[0]),
        gain_nu=float(gain[1]),
        qber_nu=float(err[1] / gain[1]),
        y0=float(gain[2]),
        e0=float(err[2] / gain[2]) if gain[2] > 0 else 0.5,
    )
    return max(gllp_rate(observed, ec_efficiency, sifting_factor), 0.0)


# --- optimiser ---------------------------------------------------------------------------

_UNIT = 1e-4  # keep fractions off the edges of (0, 1)
_MU1_RANGE = (0.02, 1.2)


def _decode(x: npt.NDArray[np.float64], mu3: float, asymptotic: bool) -> ProtocolParameters:
    """Map the unit box to feasible parameters: every point satisfies the intensity ordering."""
    mu1 = _MU1_RANGE[0] + float(x[0]) * (_MU1_RANGE[1] - _MU1_RANGE[0])
    mu2 = mu3 + float(x[1]) * (mu1 - 2.0 * mu3)  # μ3 < μ2 < μ1 − μ3
    if asymptotic:
        return ProtocolParameters(mu1=mu1, mu2=mu2, mu3=0.0, p_mu1=0.5, p_mu2=0.25, p_key=0.5)
    p1 = float(x[2])
    p2 = float(x[3]) * (1.0 - p1)
    return ProtocolParameters(mu1=mu1, mu2=mu2, mu3=mu3, p_mu1=p1, p_mu2=p2, p_key=float(x[4]))


def _encode(params: ProtocolParameters, asymptotic: bool) -> npt.NDArray[np.float64]:
    x0 = (params.mu1 - _MU1_RANGE[0]) / (_MU1_RANGE[1] - _MU1_RANGE[0])
    x1 = (params.mu2 - params.mu3) / (params.mu1 - 2.0 * params.mu3)
    raw = (
        [x0, x1]
        if asymptotic
        else [x0, x1, params.p_mu1, params.p_mu2 / (1.0 - params.p_mu1), params.p_key]
    )
    out: npt.NDArray[np.float64] = np.clip(np.array(raw, dtype=np.float64), _UNIT, 1 - _UNIT)
    return out


@dataclass(frozen=True, slots=True)
class OptimiserSettings:
    """Random starts, how many of the best are refined locally, and the seed."""

    random_starts: int = 64
    local_searches: int = 3
    seed: int = 1
    max_evaluations: int = 600


def optimise_parameters(
    objective: Callable[[ProtocolParameters], float],
    mu3: float,
    *,
    asymptotic: bool = False,
    warm_start: ProtocolParameters | None = None,
    settings: OptimiserSettings | None = None,
) -> tuple[ProtocolParameters, float]:
    """Maximise ``objective`` (larger is better): random starts, then bounded Nelder–Mead."""
    opts = settings or OptimiserSettings()
    dim = 2 if asymptotic else 5
    rng = np.random.default_rng(opts.seed)

    def cost(x: npt.NDArray[np.float64]) -> float:
        x = np.clip(x, _UNIT, 1 - _UNIT)
        try:
            value = objective(_decode(x, mu3, asymptotic))
        except (IntensityOrderError, ValueError, ZeroDivisionError, OverflowError):
            return math.inf
        return -value if math.isfinite(value) else math.inf

    starts = list(rng.uniform(_UNIT, 1 - _UNIT, size=(opts.random_starts, dim)))
    if warm_start is not None:
        starts.append(_encode(warm_start, asymptotic))
    scored = sorted(((cost(x), i) for i, x in enumerate(starts)), key=lambda t: t[0])
    best_x = starts[scored[0][1]]
    best_cost = scored[0][0]
    for _, i in scored[: opts.local_searches]:
        res = minimize(
            cost,
            starts[i],
            method="Nelder-Mead",
            bounds=[(_UNIT, 1 - _UNIT)] * dim,
            options={"maxfev": opts.max_evaluations, "xatol": 1e-5, "fatol": 0.0},
        )
        if float(res.fun) < best_cost:
            best_cost = float(res.fun)
            best_x = np.asarray(res.x, dtype=np.float64)
    return _decode(np.clip(best_x, _UNIT, 1 - _UNIT), mu3, asymptotic), -best_cost


@dataclass(frozen=True, slots=True)
class _Scenario:
    """Everything but the distance and the tuned parameters, for one curve."""

    link: LinkModel
    block_size: float | None
    ec_efficiency: float
    security: SecurityParameters
    sifting_factor: float

    def rate(self, distance_km: float, params: ProtocolParameters) -> float:
        if self.block_size is None:
            return asymptotic_key_rate(
                self.link,
                distance_km,
                params,
                ec_efficiency=self.ec_efficiency,
                sifting_factor=self.sifting_factor,
            )
        return finite_key_rate(
            self.link,
            distance_km,
            params,
            block_size=self.block_size,
            ec_efficiency=self.ec_efficiency,
            security=self.security,
        )

    def guide(self, distance_km: float, params: ProtocolParameters) -> float:
        """The optimiser's objective: the rate, continued below zero so the search can climb."""
        if self.block_size is None:
            return self.rate(distance_km, params)
        raw, _, phi = _finite_length_per_pulse(
            self.link,
            distance_km,
            params,
            block_size=self.block_size,
            ec_efficiency=self.ec_efficiency,
            security=self.security,
        )
        tol = self.security.phi_tol
        return raw if phi <= tol else min(raw, 0.0) - (phi - tol)

    def point(self, distance_km: float, params: ProtocolParameters, rate: float) -> KeyRatePoint:
        if self.block_size is None:
            qber = float(expected_counts(self.link, distance_km, [params.mu1]).qber[0])
            return KeyRatePoint(
                distance_km=distance_km,
                rate_per_pulse=rate,
                mu=params.mu1,
                mu2=params.mu2,
                mu3=0.0,
                p_mu1=None,
                p_mu2=None,
                p_mu3=None,
                p_key=None,
                qber=qber,
                phase_error=None,
            )
        _, qber, phi = _finite_length_per_pulse(
            self.link,
            distance_km,
            params,
            block_size=self.block_size,
            ec_efficiency=self.ec_efficiency,
            security=self.security,
        )
        return KeyRatePoint(
            distance_km=distance_km,
            rate_per_pulse=rate,
            mu=params.mu1,
            mu2=params.mu2,
            mu3=params.mu3,
            p_mu1=params.p_mu1,
            p_mu2=params.p_mu2,
            p_mu3=params.p_mu3,
            p_key=params.p_key,
            qber=qber,
            phase_error=phi,
        )


def key_rate_curve(
    link: LinkModel,
    distances_km: Sequence[float],
    params: ProtocolParameters,
    *,
    block_size: float | None,
    ec_efficiency: float = 1.16,
    security: SecurityParameters | None = None,
    optimise: bool = False,
    sifting_factor: float = 0.5,
    optimiser: OptimiserSettings | None = None,
) -> list[KeyRatePoint]:
    """Key per pulse at each distance; finite at ``block_size`` K bits, asymptotic if it is None.

    With ``optimise`` the intensities and probabilities are optimised per
    distance (μ3 stays as given), warm-started from the previous distance.
    """
    scenario = _Scenario(
        link=link,
        block_size=block_size,
        ec_efficiency=ec_efficiency,
        security=security or SecurityParameters(),
        sifting_factor=sifting_factor,
    )
    points: list[KeyRatePoint] = []
    warm = params
    for distance in distances_km:
        chosen = params
        if optimise:
            chosen, _ = optimise_parameters(
                partial(scenario.guide, distance),
                params.mu3,
                asymptotic=block_size is None,
                warm_start=warm,
                settings=optimiser,
            )
        rate = scenario.rate(distance, chosen)
        if rate > 0.0:
            warm = chosen
        elif optimise:
            chosen = warm  # nothing positive found: report the last working parameters
            rate = max(scenario.rate(distance, chosen), 0.0)
        points.append(scenario.point(distance, chosen, rate))
    return points


def optimal_rate(
    link: LinkModel,
    distance_km: float,
    *,
    block_size: float | None,
    ec_efficiency: float = 1.16,
    security: SecurityParameters | None = None,
    mu3: float = 2e-4,
    optimiser: OptimiserSettings | None = None,
) -> KeyRatePoint:
    """The optimised point at one distance."""
    return key_rate_curve(
        link,
        [distance_km],
        ProtocolParameters(mu3=mu3),
        block_size=block_size,
        ec_efficiency=ec_efficiency,
        security=security,
        optimise=True,
        optimiser=optimiser,
    )[0]


def max_distance(
    rate_at: Callable[[float], float],
    low_km: float = 0.0,
    high_km: float = 400.0,
    tol_km: float = 0.5,
) -> float:
    """Largest distance with positive rate, by bisection (0 if none at ``low_km``)."""
    if rate_at(low_km) <= 0.0:
        return low_km
    if rate_at(high_km) > 0.0:
        return high_km
    lo, hi = low_km, high_km
    while hi - lo > tol_km:
        mid = 0.5 * (lo + hi)
        if rate_at(mid) > 0.0:
            lo = mid
        else:
            hi = mid
    return lo
