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

The first part holds the per-effect forms used by ``qkdd keyrate``: fibre
loss, per-detector dark counts with d detectors in play, misalignment
(including its double clicks, squashed to a random bit), and the afterpulse
forms of Lim et al. 2014.

The second part (:class:`LinkPhysics`, :func:`expected_statistics`) is the
exact model of the simulated link, per intensity class and basis: per-detector
efficiency and dark counts, misalignment double clicks, active or passive
basis choice, afterpulses as a background from earlier clicks (a Markov chain
over the detectors' trapped carriers), the common dead time, and each
eavesdropper of DESIGN §3. The fast simulator samples from the same per-slot
click-pattern tables; the slow reference simulator works photon by photon and
checks both.
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


# ---------------------------------------------------------------------------
# The exact model of the simulated link (DESIGN §3, "Test oracle").
#
# Per slot, Alice's choice σ_A = (basis a, bit x, class k) and, with an active
# receiver, Bob's basis b form the slot's setting σ. Given σ, the detectors
# that click form a bit pattern z (bit j set: detector j clicked). Photons of a
# phase-randomised pulse split into independent Poisson modes, so for a photon
# number with generating function Φ(s) = E[(1 − s)^m] the probability that no
# detector in a set A clicks is G(A) = Π_{j∈A}(1 − p_dc,j) · Φ(Σ_{j∈A} w_j),
# with w_j the chance that one photon at Bob's input is detected by j.
# Inclusion–exclusion over subsets turns G into exact pattern probabilities,
# double clicks included. Eavesdroppers change Φ or the state reaching Bob.
# ---------------------------------------------------------------------------

EVE_NONE = "none"
EVE_INTERCEPT_RESEND = "intercept-resend"
EVE_BIASED_INTERCEPT_RESEND = "biased-intercept-resend"
EVE_PNS = "pns"
EVE_BLINDING = "blinding"
EVE_MODELS = (EVE_NONE, EVE_INTERCEPT_RESEND, EVE_BIASED_INTERCEPT_RESEND, EVE_PNS, EVE_BLINDING)

N_CLASSES = 3


@dataclass(frozen=True, slots=True)
class LinkPhysics:
    """Every parameter of the simulated link's stochastic model, in per-slot units.

    ``efficiency`` is per detector and includes Bob's optics; ``dark_count`` and
    ``afterpulse`` are per detector per slot/avalanche. A pending afterpulse
    fires in each live slot with probability 1 − ``afterpulse_memory`` (a
    geometric delay of mean 1/(1 − r) slots); a trap holds at most one carrier,
    and every avalanche empties it and refills it with probability p_ap.
    ``dead_time_slots``: after every registered click all detectors are blind
    for that many slots, and afterpulses due then are lost. Detector order:
    active [bit 0, bit 1]; passive [K0, K1, T0, T1].
    """

    mu: tuple[float, float, float] = (0.5, 0.1, 0.0002)
    p_class: tuple[float, float, float] = (0.7, 0.2, 0.1)
    p_key: float = 0.9
    eta_channel: float = 1.0
    efficiency: tuple[float, ...] = (0.1, 0.1)
    dark_count: tuple[float, ...] = (6e-7, 6e-7)
    misalignment: float = 0.0
    afterpulse: tuple[float, ...] = (0.0, 0.0)
    afterpulse_memory: float = 0.0
    dead_time_slots: int = 0
    passive: bool = False
    p_key_bob: float | None = None
    eve: str = EVE_NONE
    eve_fraction: float = 1.0

    def __post_init__(self) -> None:
        d = self.detectors
        for name in ("efficiency", "dark_count", "afterpulse"):
            values = getattr(self, name)
            if len(values) != d:
                raise ValueError(f"{name}: {d} detectors need {d} values")
            if any(not 0.0 <= v <= 1.0 for v in values):
                raise ValueError(f"{name} values must lie in [0, 1]")
        if abs(sum(self.p_class) - 1.0) > 1e-9 or min(self.p_class) < 0:
            raise ValueError("class probabilities must be non-negative and sum to 1")
        if not 0.0 < self.p_key < 1.0 or not 0.0 < self.bob_key_probability < 1.0:
            raise ValueError("basis probabilities must lie in (0, 1)")
        if not 0.0 <= self.eta_channel <= 1.0 or not 0.0 <= self.misalignment <= 0.5:
            raise ValueError("eta_channel must lie in [0, 1] and misalignment in [0, 0.5]")
        if not 0.0 <= self.afterpulse_memory < 1.0 or self.dead_time_slots < 0:
            raise ValueError("afterpulse_memory must lie in [0, 1) and dead time be >= 0")
        if self.eve not in EVE_MODELS or not 0.0 <= self.eve_fraction <= 1.0:
            raise ValueError(f"eve must be one of {EVE_MODELS} with a fraction in [0, 1]")

    @property
    def detectors(self) -> int:
        return 4 if self.passive else 2

    @property
    def bob_key_probability(self) -> float:
        """Bob's probability of measuring in K (active choice or passive splitting ratio)."""
        return self.p_key if self.p_key_bob is None else self.p_key_bob

    @property
    def effective_afterpulse(self) -> tuple[float, ...]:
        """Blinded detectors run in linear mode: no avalanches, so no afterpulses."""
        if self.eve == EVE_BLINDING and self.eve_fraction > 0:
            return (0.0,) * self.detectors
        return self.afterpulse


@dataclass(frozen=True, slots=True)
class SettingTable:
    """All slot settings σ with their probabilities (the basis of every table below)."""

    alice_basis: npt.NDArray[np.int64]
    alice_bit: npt.NDArray[np.int64]
    intensity: npt.NDArray[np.int64]
    bob_basis: npt.NDArray[np.int64]  # -1 for a passive receiver (the clicks decide)
    prob: FloatArray

    def __len__(self) -> int:
        return len(self.prob)


def setting_index(a: int, x: int, k: int, b: int, passive: bool) -> int:
    """Index of σ = (a, x, k[, b]) in :func:`setting_table`."""
    base = (a * 2 + x) * N_CLASSES + k
    return base if passive else base * 2 + b


def setting_table(phys: LinkPhysics) -> SettingTable:
    """Every σ in index order, with p(σ) = p(a)·½·p_k[·p_B(b)]."""
    rows = []
    pa = (phys.p_key, 1.0 - phys.p_key)
    pb = (phys.bob_key_probability, 1.0 - phys.bob_key_probability)
    for a in (0, 1):
        for x in (0, 1):
            for k in range(N_CLASSES):
                base = pa[a] * 0.5 * phys.p_class[k]
                if phys.passive:
                    rows.append((a, x, k, -1, base))
                else:
                    rows.extend((a, x, k, b, base * pb[b]) for b in (0, 1))
    cols = list(zip(*rows, strict=True))
    ints = [np.array(c, dtype=np.int64) for c in cols[:4]]
    return SettingTable(ints[0], ints[1], ints[2], ints[3], np.array(cols[4], dtype=np.float64))


def _weights(phys: LinkPhysics, state_basis: int, state_bit: int, bob_basis: int) -> FloatArray:
    """w_j: probability that one photon in state (basis, bit) at Bob's input clicks detector j."""
    e_d = phys.misalignment
    eff = np.asarray(phys.efficiency)
    w = np.zeros(phys.detectors)
    arms: tuple[tuple[int, float], ...] = (
        ((0, phys.bob_key_probability), (1, 1.0 - phys.bob_key_probability))
        if phys.passive
        else ((bob_basis, 1.0),)
    )
    for beta, p_arm in arms:
        for y in (0, 1):
            frac = (1.0 - e_d if y == state_bit else e_d) if beta == state_basis else 0.5
            j = 2 * beta + y if phys.passive else y
            w[j] = p_arm * frac * eff[j]
    return w


def _patterns(weights: FloatArray, dark: FloatArray, pgf: PhotonPgf) -> FloatArray:
    """Exact probabilities of every click pattern z (index = bit mask of clicked detectors)."""
    d = len(weights)
    full = (1 << d) - 1
    g = np.empty(1 << d)
    for subset in range(1 << d):
        members = [j for j in range(d) if subset >> j & 1]
        no_dark = float(np.prod(1.0 - dark[members])) if members else 1.0
        g[subset] = no_dark * pgf(float(weights[members].sum()) if members else 0.0)
    out = np.zeros(1 << d)
    for z in range(1 << d):
        comp = full & ~z
        total = 0.0
        sub = z
        while True:  # every S ⊆ z, sign (−1)^|S|
            total += (-1.0) ** bin(sub).count("1") * g[comp | sub]
            if sub == 0:
                break
            sub = (sub - 1) & z
        out[z] = total
    out = np.clip(out, 0.0, 1.0)  # inclusion–exclusion can leave −1e-17
    result: FloatArray = out / out.sum()
    return result


class PhotonPgf:
    """Φ(s) = E[(1 − s)^m] of the photon number m reaching Bob's input."""

    def __call__(self, s: float) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class PoissonPgf(PhotonPgf):
    """A phase-randomised coherent pulse of mean ``mean``: Φ(s) = e^(−mean·s)."""

    mean: float

    def __call__(self, s: float) -> float:
        return math.exp(-self.mean * s)


@dataclass(frozen=True)
class PnsPgf(PhotonPgf):
    """Photon number after a PNS attack on Poisson(μ) at Alice's output.

    Vacuum stays vacuum; a single photon is blocked with probability
    ``block`` and otherwise forwarded; of a pulse with n ≥ 2 photons Eve keeps
    one and, with probability ``forward``, sends the other n − 1 to Bob
    losslessly (else she blocks the pulse).
    """

    mu: float
    block: float
    forward: float

    def __call__(self, s: float) -> float:
        mu, u = self.mu, 1.0 - s
        single = mu * (self.block + (1.0 - self.block) * u)
        # Σ_{n≥2} μ^n/n! · u^(n−1), which vanishes as u → 0
        forwarded = (math.expm1(mu * u) - mu * u) / u if u > 1e-12 else 0.0
        blocked = math.expm1(mu) - mu  # Σ_{n≥2} μ^n/n!
        multi = self.forward * forwarded + (1.0 - self.forward) * blocked
        return math.exp(-mu) * (1.0 + single + multi)


def _honest_patterns(phys: LinkPhysics, a: int, x: int, k: int, b: int) -> FloatArray:
    pgf = PoissonPgf(phys.eta_channel * phys.mu[k])
    return _patterns(_weights(phys, a, x, b), np.asarray(phys.dark_count), pgf)


def _intercept_patterns(  # noqa: PLR0917
    phys: LinkPhysics, a: int, x: int, k: int, b: int, p_eve_key: float
) -> FloatArray:
    """Eve before Bob measures the arriving photons in basis β (K with ``p_eve_key``) and
    resends as many photons as she took, all in the state she found: a perfect result in
    Alice's basis, a random bit in the other."""
    pgf = PoissonPgf(phys.eta_channel * phys.mu[k])
    dark = np.asarray(phys.dark_count)
    out = np.zeros(1 << phys.detectors)
    for beta, p_beta in ((0, p_eve_key), (1, 1.0 - p_eve_key)):
        bits = ((x, 1.0),) if beta == a else ((0, 0.5), (1, 0.5))
        for y, p_y in bits:
            out += p_beta * p_y * _patterns(_weights(phys, beta, y, b), dark, pgf)
    return out


def _blinding_patterns(  # noqa: PLR0917
    phys: LinkPhysics, a: int, x: int, k: int, b: int, g: float
) -> FloatArray:
    """Faked states: Eve at Alice's output detects every non-empty pulse in a random basis β
    and, with probability g, forces Bob's detector of (β, y) to click; an active Bob in the
    other basis sees the trigger split below threshold (no click). No dark counts."""
    out = np.zeros(1 << phys.detectors)
    p_fire = -math.expm1(-phys.mu[k]) * g
    for beta in (0, 1):
        if not phys.passive and beta != b:
            continue
        bits = ((x, 1.0),) if beta == a else ((0, 0.5), (1, 0.5))
        for y, p_y in bits:
            j = 2 * beta + y if phys.passive else y
            out[1 << j] += 0.5 * p_y * p_fire
    out[0] = 1.0 - out.sum()
    return out


def _signal_no_click(phys: LinkPhysics, pgf: PhotonPgf) -> float:
    """Mean P(no click) over the signal-class settings for photon statistics ``pgf``."""
    table = setting_table(phys)
    dark = np.asarray(phys.dark_count)
    total, weight = 0.0, 0.0
    for i in range(len(table)):
        if table.intensity[i] != 0:
            continue
        w = _weights(
            phys, int(table.alice_basis[i]), int(table.alice_bit[i]), int(table.bob_basis[i])
        )
        total += table.prob[i] * float(np.prod(1.0 - dark)) * pgf(float(w.sum()))
        weight += table.prob[i]
    return total / weight


def pns_parameters(phys: LinkPhysics) -> tuple[float, float]:
    """Eve's (block, forward) that make the PNS signal gain equal the honest one.

    Blocking single photons first (forward = 1); where even blocking all of them
    leaves too many clicks (beyond a few km), Eve also blocks a share of the
    multi-photon pulses, forwarding the others losslessly.
    """
    mu = phys.mu[0]
    target = _signal_no_click(phys, PoissonPgf(phys.eta_channel * mu))

    def no_click(block: float, forward: float) -> float:
        return _signal_no_click(phys, PnsPgf(mu, block, forward))

    if no_click(0.0, 1.0) >= target:
        return 0.0, 1.0
    lo, hi, use_block = 0.0, 1.0, no_click(1.0, 1.0) >= target
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        value = no_click(mid, 1.0) if use_block else no_click(1.0, mid)
        # no-click rises with blocking and falls with forwarding
        if (value < target) == use_block:
            lo = mid
        else:
            hi = mid
    mid = 0.5 * (lo + hi)
    return (mid, 1.0) if use_block else (1.0, mid)


def blinding_trigger_probability(phys: LinkPhysics) -> float:
    """g: Eve's trigger probability that matches the honest signal gain (capped at 1)."""
    honest = 1.0 - _signal_no_click(phys, PoissonPgf(phys.eta_channel * phys.mu[0]))
    seen = -math.expm1(-phys.mu[0]) * (1.0 if phys.passive else 0.5)
    return min(1.0, honest / seen) if seen > 0 else 0.0


def click_patterns(phys: LinkPhysics) -> FloatArray:
    """M[σ, z]: click-pattern probabilities per setting in a live slot, afterpulses aside."""
    table = setting_table(phys)
    f = phys.eve_fraction if phys.eve != EVE_NONE else 0.0
    pns = pns_parameters(phys) if phys.eve == EVE_PNS and f > 0 else (0.0, 1.0)
    g = blinding_trigger_probability(phys) if phys.eve == EVE_BLINDING and f > 0 else 0.0
    out = np.empty((len(table), 1 << phys.detectors))
    for i in range(len(table)):
        a, x, k, b = (
            int(table.alice_basis[i]),
            int(table.alice_bit[i]),
            int(table.intensity[i]),
            int(table.bob_basis[i]),
        )
        honest = _honest_patterns(phys, a, x, k, b)
        if f == 0.0:
            out[i] = honest
            continue
        if phys.eve == EVE_INTERCEPT_RESEND:
            attacked = _intercept_patterns(phys, a, x, k, b, 0.5)
        elif phys.eve == EVE_BIASED_INTERCEPT_RESEND:
            attacked = _intercept_patterns(phys, a, x, k, b, phys.p_key)
        elif phys.eve == EVE_PNS:
            pgf = PnsPgf(phys.mu[k], pns[0], pns[1])
            attacked = _patterns(_weights(phys, a, x, b), np.asarray(phys.dark_count), pgf)
        else:
            attacked = _blinding_patterns(phys, a, x, k, b, g)
        out[i] = (1.0 - f) * honest + f * attacked
    return out


def _afterpulse_masks(pending: int, memory: float, d: int) -> FloatArray:
    """Distribution of the afterpulses that fire in one live slot, given the pending set."""
    out = np.zeros(1 << d)
    sub = pending
    while True:
        fired = bin(sub).count("1")
        out[sub] = (1.0 - memory) ** fired * memory ** (bin(pending).count("1") - fired)
        if sub == 0:
            break
        sub = (sub - 1) & pending
    return out


def live_slot_patterns(phys: LinkPhysics, patterns: FloatArray | None = None) -> FloatArray:
    """Qt[σ, P, z]: pattern of clicks (light, dark and afterpulses) in a live slot, given the
    set P of detectors with a pending afterpulse. The afterpulses are independent of σ."""
    m = click_patterns(phys) if patterns is None else patterns
    d = phys.detectors
    states = 1 << d
    out = np.zeros((m.shape[0], states, states))
    for pending in range(states):
        fire = _afterpulse_masks(pending, phys.afterpulse_memory, d)
        for z_ap in np.flatnonzero(fire):
            for z in range(states):
                out[:, pending, z | int(z_ap)] += m[:, z] * fire[z_ap]
    return out


def _pending_transition(phys: LinkPhysics, pending: int, z: int) -> FloatArray:
    """Distribution of the next live slot's pending set after a slot with pattern z ≠ 0."""
    d = phys.detectors
    survive = phys.afterpulse_memory**phys.dead_time_slots
    p_ap = phys.effective_afterpulse
    out = np.zeros(1 << d)
    out[0] = 1.0
    for j in range(d):
        # an avalanche empties the trap and refills it; an untouched carrier stays
        p_one = p_ap[j] * survive if z >> j & 1 else (survive if pending >> j & 1 else 0.0)
        nxt = np.zeros_like(out)
        for s in np.flatnonzero(out):
            nxt[s] += out[s] * (1.0 - p_one)
            nxt[s | 1 << j] += out[s] * p_one
        out = nxt
    return out


def pending_distribution(phys: LinkPhysics, live: FloatArray | None = None) -> FloatArray:
    """π(P): stationary distribution of the pending-afterpulse set at live slots."""
    d = phys.detectors
    states = 1 << d
    pi = np.zeros(states)
    if not any(phys.effective_afterpulse):
        pi[0] = 1.0
        return pi
    qt = live_slot_patterns(phys) if live is None else live
    prob = setting_table(phys).prob
    mean = np.einsum("s,spz->pz", prob, qt)  # the slot's setting is independent of P
    trans = np.zeros((states, states))
    for p in range(states):
        trans[p, p] += mean[p, 0]
        for z in range(1, states):
            if mean[p, z] > 0:
                trans[p] += mean[p, z] * _pending_transition(phys, p, z)
    # π (T − I) = 0 with Σπ = 1
    lhs = np.vstack([trans.T - np.eye(states), np.ones(states)])
    rhs = np.zeros(states + 1)
    rhs[-1] = 1.0
    solution = np.clip(np.linalg.lstsq(lhs, rhs, rcond=None)[0], 0.0, None)
    out: FloatArray = solution / solution.sum()
    return out


def outcome_table(phys: LinkPhysics) -> FloatArray:
    """R[σ, z, b, y]: probability that pattern z in setting σ gives Bob basis b and bit y.

    Same-basis double clicks get a random bit (squashing); with a passive
    receiver, clicks in both bases get a random basis and a random bit.
    """
    table = setting_table(phys)
    states = 1 << phys.detectors
    out = np.zeros((len(table), states, 2, 2))
    for z in range(1, states):
        if phys.passive:
            arms = [(beta, (z >> (2 * beta)) & 3) for beta in (0, 1) if (z >> (2 * beta)) & 3]
            weight = 1.0 / len(arms)
            for beta, bits in arms:
                if len(arms) == 2:
                    out[:, z, beta, :] += weight * 0.5
                elif bits == 3:
                    out[:, z, beta, :] += 0.5
                else:
                    out[:, z, beta, bits >> 1] += 1.0
        else:
            for i in range(len(table)):
                b = int(table.bob_basis[i])
                if z == 3:
                    out[i, z, b, :] = 0.5
                else:
                    out[i, z, b, z >> 1] = 1.0
    return out


@dataclass(frozen=True, slots=True)
class ExpectedStatistics:
    """Exact expectation per intensity class k (and basis β = K, T) per sent pulse.

    ``gain[k]``: a registered detection (any basis). ``basis_gain[k, β]``: a
    detection in basis β of a pulse sent in β, divided by Bob's probability of
    measuring in β (the click probability of a matched measurement).
    ``basis_qber[k, β]`` and ``qber[k]`` (both bases): errors among matched
    detections. ``live_fraction``: share of slots outside the dead time.
    ``detector_clicks[j]``: registered clicks of detector j per slot.
    """

    gain: FloatArray
    sifted_gain: FloatArray
    basis_gain: FloatArray
    basis_qber: FloatArray
    qber: FloatArray
    live_fraction: float
    detector_clicks: FloatArray


def expected_statistics(phys: LinkPhysics) -> ExpectedStatistics:
    """The exact stationary expectation of the simulated link (long frames)."""
    table = setting_table(phys)
    qt = live_slot_patterns(phys)
    pi = pending_distribution(phys, qt)
    per_setting = np.einsum("p,spz->sz", pi, qt)  # P(z | σ, live)
    register = 1.0 - per_setting[:, 0]
    rho = float(table.prob @ register)
    live = 1.0 / (1.0 + phys.dead_time_slots * rho)
    outcome = outcome_table(phys)
    # P(b, y | σ) per live slot, detections only
    by = np.einsum("sz,szby->sby", per_setting, outcome)
    gain = np.zeros(N_CLASSES)
    sifted = np.zeros(N_CLASSES)
    matched = np.zeros((N_CLASSES, 2))
    errors = np.zeros((N_CLASSES, 2))
    sent = np.zeros((N_CLASSES, 2))
    for i in range(len(table)):
        a, x, k = int(table.alice_basis[i]), int(table.alice_bit[i]), int(table.intensity[i])
        p = table.prob[i]
        gain[k] += p * register[i]
        matched[k, a] += p * by[i, a].sum()
        errors[k, a] += p * by[i, a, 1 - x]
    for k in range(N_CLASSES):
        for a in (0, 1):
            sent[k, a] = phys.p_class[k] * (phys.p_key if a == 0 else 1.0 - phys.p_key)
    p_class = np.asarray(phys.p_class)
    p_bob = np.array([phys.bob_key_probability, 1.0 - phys.bob_key_probability])
    with np.errstate(invalid="ignore", divide="ignore"):
        gain_k = live * gain / p_class
        sifted = live * matched.sum(axis=1) / p_class
        basis_gain = live * matched / sent / p_bob
        basis_qber = errors / matched
        qber = errors.sum(axis=1) / matched.sum(axis=1)
    clicks = np.array(
        [
            live
            * float(
                table.prob
                @ per_setting[:, [z for z in range(per_setting.shape[1]) if z >> j & 1]].sum(axis=1)
            )
            for j in range(phys.detectors)
        ]
    )
    return ExpectedStatistics(
        gain=gain_k,
        sifted_gain=sifted,
        basis_gain=basis_gain,
        basis_qber=basis_qber,
        qber=qber,
        live_fraction=live,
        detector_clicks=clicks,
    )


def link_physics(
    link: LinkModel,
    distance_km: float,
    *,
    mu: tuple[float, float, float],
    p_class: tuple[float, float, float],
    p_key: float,
    afterpulse_memory: float = 0.0,
    dead_time_slots: int = 0,
) -> LinkPhysics:
    """The keyrate's :class:`LinkModel` as the simulated link's exact model (active receiver).

    ``link.afterpulse`` becomes the per-avalanche afterpulse probability with
    the given memory, a background from earlier clicks rather than Lim's
    same-class factor.
    """
    if link.model == "textbook":
        raise ValueError("the textbook model has no detectors: give dark counts instead of Y0")
    return LinkPhysics(
        mu=mu,
        p_class=p_class,
        p_key=p_key,
        eta_channel=fibre_transmittance(link.alpha_db_per_km, distance_km, link.extra_loss_db),
        efficiency=(link.eta_bob,) * ACTIVE_DETECTORS,
        dark_count=(link.dark_count,) * ACTIVE_DETECTORS,
        misalignment=link.misalignment,
        afterpulse=(link.afterpulse,) * ACTIVE_DETECTORS,
        afterpulse_memory=afterpulse_memory,
        dead_time_slots=dead_time_slots,
    )
