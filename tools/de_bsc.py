"""Discretised density evolution of LDPC ensembles on the binary symmetric channel.

Diagnostic (and the basis for a future optimiser) for the degree
distributions of tools/make_ldpc_codes.py, whose EXIT-chart design uses a
Gaussian approximation of the messages. Never run in CI.

    python tools/de_bsc.py --check                 # (3,6)-regular: BP threshold ≈ 0.084
    python tools/de_bsc.py qkdd/postprocessing/reconciliation/codes/*.npz
    python tools/de_bsc.py --published --delta 0.04 --limit 25   # Elkouss et al. 2009
    python tools/de_bsc.py --optimise 0.0094 --start 0.85 --dc 69 --delta 0.04 --limit 25
    python tools/de_bsc.py --optimise 0.0108 --start 0.9051 --dc 62 --progress 0.01 \
        --steps 15 --delta 0.04 --limit 25 --max-degree2-per-check 1.3 \
        --degrees 2 3 4 5 6 7 8 9 10 12 15 18 21 25 30 40 50

Method: discretised density evolution (Chung, Forney, Richardson & Urbanke,
IEEE Commun. Lett. 5, 58 (2001)). Messages are LLRs quantised to a uniform
grid of step ``delta`` on [−L, L] (saturating at the ends), the all-zero word
is assumed (the channel is symmetric and BP is symmetric, so the error
probability does not depend on the word). The variable-node update is an
exact discrete convolution (saturated after each addition, as a clipping
decoder does); the check-node update applies the exact pairwise rule
a ⊞ b = 2·atanh(tanh(a/2)·tanh(b/2)), re-quantised, to the densities (a
table of all grid pairs), with powers by repeated squaring. An ensemble
converges at crossover p if the probability of a negative (or half of a
zero) variable-to-check message falls below ``target``. The threshold is the
largest such p (bisection); reported as the efficiency f* = (1 − R)/h(p*).

Findings (2026-11-23, default grid delta = 0.08, L = 20): the (3,6)-regular
threshold comes out at 0.0839 (literature 0.084), and the shipped mother
codes' ensembles at f* = 1.128 (R = 0.8), 1.207 (R = 0.9), 1.382 (R = 0.95)
— the same as their EXIT-chart design values and as their measured
finite-length behaviour, so the Gaussian approximation was not what limited
them: the ensemble class was (check-concentrated ρ, variable degrees ≤ 30,
fewer degree-2 nodes than checks). The EXIT LP with that last constraint
dropped and degrees up to 60 promises R = 0.903 at p = 0.0104, but density
evolution (finer grid delta = 0.04, L = 25: the default grid is too coarse
for check degrees near 70) puts that ensemble's threshold between 0.0095 and
0.0104, i.e. no better. Reaching f ≈ 1.1 at rate 0.9 needs another class
(e.g. structured degree-2 chains with more of them, multi-edge-type, or the
published BSC tables), to be checked here before a code is built.

Update (2026-11-23): the published ensembles of Elkouss et al. (ISIT 2009,
Table I; tools/make_ldpc_codes.py PUBLISHED), which have about twice as many
degree-2 nodes as checks, check out on the finer grid (delta = 0.04, L = 25):
p* = 0.01088 at rate 0.9 (published 0.0109, f* = 1.155) and 0.01998 at 0.85
(published 0.0199, f* = 1.061). On the default grid they do not converge even
at 0.97·p*: too coarse for check degrees 30–51. They are what the shipped
rate-0.75–0.9 codes realise.

Update (2026-11-23, later): the pairwise rules are now compiled (numba,
skipping grid points below 1e-18), about 50 ms per iteration at check
degree 50 on the fine grid. ``--optimise P`` raises the rate of a published
λ (with its ρ, or a concentrated ρ of mean degree ``--dc``) while density
evolution still converges at BSC(P), by successive linear programming
(:func:`optimise`). Near a threshold it moves slowly (≈ 0.0002 in rate per
step after the first); what helped more was keeping a good published λ and
making the checks denser: the rate-0.85 λ with checks of degree 66 has
R = 0.9051, p* = 0.0105, f* = 1.129 (degree 69: R = 0.9092, p* = 0.0099,
f* = 1.133), and the rate-0.75 λ with degree 21
R = 0.6984, p* = 0.0495, f* = 1.060 (tools/make_ldpc_codes.py DESIGNED).

Update (2026-12-07): what held the rate-0.9 ensembles near f* = 1.078 was
the check degree. Gallager's bound for checks of degree d_c,
R ≤ 1 − h(p)/h((1 − (1 − 2p)^d_c)/2), gives f ≥ 1.051 at d_c = 62 and
p = 0.0108 for any decoder, 1.024 at d_c = 76 and p = 0.0112. A λ that
converges with denser checks has to carry more high-degree nodes, and the
optimiser cannot walk there from the 0.9064 λ at fixed ρ (it stops after a
step or two). Mixing that λ with a share t of degree 40 until density
evolution converges at P (t = 0.25 at P = 0.0112, d_c = 76), then
optimising with degrees up to 80 and up to 2 degree-2 nodes per check, gave
R = 0.90783, p* = 0.01121, f* = 1.039 in three steps (DESIGNED[0.9078]; on
the finer grid delta = 0.03, L = 30: p* = 0.01122, f* = 1.038).

Update (2026-11-23, fourth session): with ``--progress 0.01`` the optimiser
gains far more (f* 1.129 → 1.071 at rate 0.9128 in five minutes), mostly by
adding degree-2 nodes, and those make short cycles of degree-2 nodes, i.e.
low-weight codewords that frames decoded to. ``--max-degree2-per-check 1.3``
caps them (λ2 ≤ 2.6/d̄c) for a small loss: the shipped 0.9064, 0.8482 and
0.694 ensembles (f* = 1.078, 1.045, 1.033) were optimised so. ``--start``
must list every degree of its λ in ``--degrees`` (a missing one is dropped,
and the start then does not converge).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numba
import numpy as np
import numpy.typing as npt
from scipy.optimize import linprog

Density = npt.NDArray[np.float64]

#: Probability below which a grid point is skipped in the pairwise rules
#: (densities concentrate on a few hundred points; the rest costs time only).
_TINY = 1e-18


@numba.njit(cache=True)
def _boxplus(p: Density, q: Density, index: npt.NDArray[np.int32]) -> Density:
    """Density of a ⊞ b by the quantised pair table ``index[i, j]``."""
    out = np.zeros(p.size)
    for i in range(p.size):
        if p[i] < _TINY:
            continue
        for j in range(q.size):
            if q[j] >= _TINY:
                out[index[i, j]] += p[i] * q[j]
    return out


@numba.njit(cache=True)
def _convolve(p: Density, q: Density, half: int) -> Density:
    """Density of the sum, saturated at the grid ends (as a clipping decoder)."""
    size = p.size
    out = np.zeros(size)
    for i in range(size):
        if p[i] < _TINY:
            continue
        for j in range(size):
            if q[j] >= _TINY:
                out[min(max(i + j - half, 0), size - 1)] += p[i] * q[j]
    return out


class Grid:
    """Uniform LLR grid j·delta, j = −J … J, with the quantised check-node rule."""

    def __init__(self, delta: float = 0.08, limit: float = 20.0) -> None:
        self.delta = delta
        self.half = round(limit / delta)
        self.size = 2 * self.half + 1
        x = (np.arange(self.size) - self.half) * delta
        a, b = np.meshgrid(x, x, indexing="ij")
        # a ⊞ b, numerically stable form
        out = (
            np.sign(a) * np.sign(b) * np.minimum(np.abs(a), np.abs(b))
            + np.log1p(np.exp(-np.abs(a + b)))
            - np.log1p(np.exp(-np.abs(a - b)))
        )
        self.box_index = self.quantise(out).astype(np.int32)

    def quantise(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        j = np.clip(np.rint(x / self.delta), -self.half, self.half).astype(np.int64)
        return j + self.half

    def boxplus(self, p: Density, q: Density) -> Density:
        return _boxplus(p, q, self.box_index)

    def convolve(self, p: Density, q: Density) -> Density:
        """Density of the saturated sum of independent messages."""
        return _convolve(p, q, self.half)

    def channel(self, p: float) -> Density:
        d = np.zeros(self.size)
        lc = math.log((1 - p) / p)
        d[self.quantise(np.array([lc]))[0]] += 1 - p
        d[self.quantise(np.array([-lc]))[0]] += p
        return d

    def error(self, d: Density) -> float:
        return float(d[: self.half].sum() + 0.5 * d[self.half])


def _box_power(grid: Grid, d: Density, k: int) -> Density:
    result: Density | None = None
    base = d
    while k:
        if k & 1:
            result = base if result is None else grid.boxplus(result, base)
        k >>= 1
        if k:
            base = grid.boxplus(base, base)
    assert result is not None
    return result


def _check_density(grid: Grid, v: Density, rho: dict[int, float]) -> Density:
    """Σ ρ_d ⊞^{d−1}(v), adjacent degrees sharing their powers."""
    degrees = sorted(d for d, w in rho.items() if w > 0)
    power = _box_power(grid, v, degrees[0] - 1)
    acc = rho[degrees[0]] * power
    for previous, d in itertools.pairwise(degrees):
        for _ in range(d - previous):
            power = grid.boxplus(power, v)
        acc = acc + rho[d] * power
    return acc


#: One iteration of density evolution as the optimiser sees it: the error
#: probability of the variable-to-check messages going in, and per variable
#: degree the error probability of that degree's outgoing message.
Step = tuple[float, dict[int, float]]


def evolve(
    grid: Grid,
    lam: dict[int, float],
    rho: dict[int, float],
    p: float,
    *,
    degrees: Sequence[int] = (),
    iterations: int = 600,
    target: float = 1e-7,
) -> tuple[bool, list[Step]]:
    """BP density evolution on BSC(p); whether the message error falls below ``target``.

    With ``degrees`` it also records, per iteration, the error probability of
    a degree-d variable node's outgoing message for each d (the rows of the
    optimiser's linear program).
    """
    ch = grid.channel(p)
    v = ch
    best = 1.0
    since = 0
    history: list[Step] = []
    top = max(*lam, *degrees) if degrees else max(lam)
    for _ in range(iterations):
        c = _check_density(grid, v, rho)
        before = grid.error(v)
        acc = np.zeros(grid.size)
        per_degree: dict[int, float] = {}
        power = ch
        for d in range(2, top + 1):
            power = grid.convolve(power, c)
            if d in degrees:
                per_degree[d] = grid.error(power)
            if lam.get(d, 0.0) > 0:
                acc += lam[d] * power
        v = acc / acc.sum()
        if degrees:
            history.append((before, per_degree))
        err = grid.error(v)
        if err < target:
            return True, history
        if err < best * 0.999:
            best = err
            since = 0
        else:
            since += 1
            if since >= 25:
                return False, history
    return False, history


def converges(
    grid: Grid,
    lam: dict[int, float],
    rho: dict[int, float],
    p: float,
    *,
    iterations: int = 600,
    target: float = 1e-7,
) -> bool:
    """Whether BP density evolution on BSC(p) drives the message error below ``target``."""
    return evolve(grid, lam, rho, p, iterations=iterations, target=target)[0]


def optimise(
    grid: Grid,
    lam: dict[int, float],
    rho: dict[int, float],
    p: float,
    degrees: Sequence[int],
    *,
    steps: int = 40,
    trust: float = 0.015,
    progress: float = 0.002,
    max_lambda2: float = 1.0,
) -> dict[int, float]:
    """Raise the design rate of λ (ρ fixed) while density evolution still converges at p.

    Successive linear programming on density evolution (Chung's method,
    Richardson & Urbanke, "Modern Coding Theory", §4.11): with the
    check-to-variable densities of the current λ fixed, a degree-d node's
    outgoing error e_d(ℓ) at iteration ℓ is known, and a new λ' makes
    progress at every iteration if Σ λ'_d e_d(ℓ) ≤ (1 − ``progress``)·P(ℓ−1)
    (P = the error of the messages going in). Maximise Σ λ'_d/d under those
    constraints, the BSC stability bound on λ'_2 and |λ' − λ| ≤ ``trust``;
    accept λ' if density evolution converges with it (the trust region then
    grows by half), else halve the trust region. ``max_lambda2`` caps λ'_2
    (a starting λ above it is scaled down to it first).
    """
    lam = {d: lam.get(d, 0.0) for d in degrees}
    if degrees[0] == 2 and lam[2] > max_lambda2:
        rest = 1.0 - lam[2]
        lam = {
            d: (max_lambda2 if d == 2 else w * (1.0 - max_lambda2) / rest) for d, w in lam.items()
        }
    ok, history = evolve(grid, lam, rho, p, degrees=degrees)
    if not ok:
        raise ValueError(f"the starting λ does not converge at p = {p}")
    weights = np.array([1.0 / d for d in degrees])
    slope = sum(w * (d - 1) for d, w in rho.items())
    stability = min(max_lambda2, 0.98 / (2 * math.sqrt(p * (1 - p)) * slope))
    for step in range(steps):
        rows = [(before, per) for before, per in history if before > 1e-7]
        a_ub = np.array([[per[d] for d in degrees] for _, per in rows])
        b_ub = np.array([(1 - progress) * before for before, _ in rows])
        current = np.array([lam[d] for d in degrees])
        bounds = [(max(0.0, c - trust), min(1.0, c + trust)) for c in current]
        if degrees[0] == 2:
            bounds[0] = (bounds[0][0], max(bounds[0][0], min(bounds[0][1], stability)))
        res = linprog(
            -weights, A_ub=a_ub, b_ub=b_ub, A_eq=np.ones((1, len(degrees))), b_eq=[1.0],
            bounds=bounds, method="highs",
        )  # fmt: skip
        if not res.success:
            trust /= 2
            continue
        new = {d: float(max(w, 0.0)) for d, w in zip(degrees, res.x, strict=True)}
        ok, new_history = evolve(grid, new, rho, p, degrees=degrees)
        if ok:
            gain = design_rate(new, rho) - design_rate(lam, rho)
            lam, history = new, new_history
            trust = min(0.03, 1.5 * trust)
            kept = {d: round(w, 6) for d, w in lam.items() if w > 1e-6}
            print(
                f"  step {step}: rate {design_rate(lam, rho):.5f} (+{gain:.5f}) λ {kept}",
                flush=True,
            )
            if gain < 2e-5:
                break
        else:
            trust /= 2
            if trust < 1e-4:
                break
    total = sum(w for w in lam.values() if w > 1e-6)
    return {d: w / total for d, w in lam.items() if w > 1e-6}


def threshold(
    grid: Grid, lam: dict[int, float], rho: dict[int, float], lo: float = 1e-3, hi: float = 0.2
) -> float:
    """Largest crossover (to about 0.3 %) at which density evolution converges."""
    while hi / lo > 1.003:
        mid = math.sqrt(lo * hi)
        if converges(grid, lam, rho, mid):
            lo = mid
        else:
            hi = mid
    return lo


def h2(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def concentrated_rho(dc: float) -> dict[int, float]:
    """Edge-perspective ρ on the two degrees around a mean (node-perspective) degree dc."""
    lo = math.floor(dc)
    w = (1 / dc - 1 / (lo + 1)) / (1 / lo - 1 / (lo + 1))
    return {lo: w, lo + 1: 1 - w} if w < 1 else {lo: 1.0}


def design_rate(lam: dict[int, float], rho: dict[int, float]) -> float:
    return 1.0 - sum(w / d for d, w in rho.items()) / sum(w / d for d, w in lam.items())


def ensemble_of(path: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Edge-perspective λ, ρ realised by a shipped code's graph (from its degrees)."""
    with np.load(path) as z:
        ptr = z["check_ptr"]
        cols = z["check_vars"]
        n = int(z["n"])
    var_deg = np.bincount(cols, minlength=n)
    chk_deg = np.diff(ptr)
    edges = float(cols.size)
    lam = {int(d): float(c * d / edges) for d, c in enumerate(np.bincount(var_deg)) if c}
    rho = {int(d): float(c * d / edges) for d, c in enumerate(np.bincount(chk_deg)) if c}
    return lam, rho


@functools.cache
def default_grid() -> Grid:
    return Grid()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("codes", type=Path, nargs="*")
    parser.add_argument("--check", action="store_true", help="(3,6)-regular sanity check")
    parser.add_argument(
        "--published", action="store_true", help="thresholds of make_ldpc_codes.PUBLISHED"
    )
    parser.add_argument(
        "--optimise",
        type=float,
        metavar="P",
        help="raise the rate of --start's λ (with ρ of mean check degree --dc) at BSC(P)",
    )
    parser.add_argument(
        "--start", type=float, default=0.9, help="PUBLISHED or DESIGNED rate to start from"
    )
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps (at most)")
    parser.add_argument(
        "--progress",
        type=float,
        default=0.002,
        help="relative decrease of the message error the optimiser asks of every iteration",
    )
    parser.add_argument("--dc", type=float, help="mean check degree (default: --start's ρ)")
    parser.add_argument(
        "--max-degree2-per-check",
        type=float,
        default=math.inf,
        metavar="R",
        help="cap the degree-2 variables at R per check (λ2 ≤ 2R/d̄c): a cycle of them is a "
        "codeword, and more of them per check make the cycles shorter",
    )
    parser.add_argument(
        "--degrees",
        type=int,
        nargs="+",
        default=[2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 21, 25, 30],
        help="variable degrees the optimiser may use",
    )
    parser.add_argument("--delta", type=float, default=0.08, help="LLR grid step")
    parser.add_argument("--limit", type=float, default=20.0, help="LLR grid range ±limit")
    args = parser.parse_args()
    grid = Grid(args.delta, args.limit)
    if args.check:
        p = threshold(grid, {3: 1.0}, {6: 1.0})
        print(f"(3,6)-regular on the BSC: p* = {p:.4f} (literature: 0.084)")
    if args.published:
        from make_ldpc_codes import PUBLISHED  # noqa: PLC0415  (sibling script, numba import)

        for rate, (lam, rho, stated) in sorted(PUBLISHED.items()):
            p = threshold(grid, lam, rho, lo=0.8 * stated, hi=1.05 * stated)
            f_star = (1 - rate) / h2(p)
            print(f"rate {rate}: p* = {p:.5f} (published {stated}), f* = {f_star:.3f}", flush=True)
    if args.optimise:
        from make_ldpc_codes import DESIGNED, PUBLISHED  # noqa: PLC0415  (sibling script)

        lam, rho, _ = {**PUBLISHED, **DESIGNED}[args.start]
        if args.dc:
            rho = concentrated_rho(args.dc)
        print(f"start: rate {design_rate(lam, rho):.5f}, ρ {rho}", flush=True)
        mean_dc = 1.0 / sum(w / d for d, w in rho.items())
        best = optimise(
            grid,
            lam,
            rho,
            args.optimise,
            args.degrees,
            steps=args.steps,
            progress=args.progress,
            max_lambda2=min(1.0, 2.0 * args.max_degree2_per_check / mean_dc),
        )
        rate = design_rate(best, rho)
        p = threshold(grid, best, rho, lo=0.97 * args.optimise, hi=1.1 * args.optimise)
        print(
            f"optimised: rate {rate:.5f} p* = {p:.5f} f* = {(1 - rate) / h2(p):.3f}\n"
            f"λ = {json.dumps(best)}\nρ = {json.dumps(rho)}",
            flush=True,
        )
    for path in args.codes:
        lam, rho = ensemble_of(path)
        rate = design_rate(lam, rho)
        p = threshold(grid, lam, rho, lo=1e-3, hi=0.2)
        f_star = (1 - rate) / h2(p)
        print(f"{path.name}: rate {rate:.4f} p* = {p:.5f} f* = {f_star:.3f}", flush=True)


if __name__ == "__main__":
    main()
