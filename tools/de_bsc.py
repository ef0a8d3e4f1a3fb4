"""Discretised density evolution of LDPC ensembles on the binary symmetric channel.

Diagnostic (and the basis for a future optimiser) for the degree
distributions of tools/make_ldpc_codes.py, whose EXIT-chart design uses a
Gaussian approximation of the messages. Never run in CI.

    python tools/de_bsc.py --check                 # (3,6)-regular: BP threshold ≈ 0.084
    python tools/de_bsc.py qkdd/postprocessing/reconciliation/codes/*.npz
    python tools/de_bsc.py --published --delta 0.04 --limit 25   # Elkouss et al. 2009

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
"""

from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt

Density = npt.NDArray[np.float64]


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
        self.box_index = self.quantise(out).ravel()

    def quantise(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        j = np.clip(np.rint(x / self.delta), -self.half, self.half).astype(np.int64)
        return j + self.half

    def boxplus(self, p: Density, q: Density) -> Density:
        return np.bincount(self.box_index, weights=np.outer(p, q).ravel(), minlength=self.size)

    def convolve(self, p: Density, q: Density) -> Density:
        """Density of the saturated sum of independent messages."""
        full = np.convolve(p, q)  # indices 0 … 2(size−1), centre at 2·half
        out = full[self.half : self.half + self.size].copy()
        out[0] += full[: self.half].sum()
        out[-1] += full[self.half + self.size :].sum()
        return out

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


def converges(
    grid: Grid,
    lam: dict[int, float],
    rho: dict[int, float],
    p: float,
    *,
    iterations: int = 400,
    target: float = 1e-7,
) -> bool:
    """Whether BP density evolution on BSC(p) drives the message error below ``target``."""
    ch = grid.channel(p)
    v = ch
    best = 1.0
    since = 0
    dv_max = max(lam)
    for _ in range(iterations):
        # check → variable: Σ ρ_d ⊞^{d−1}(v)
        c = sum(w * _box_power(grid, v, d - 1) for d, w in rho.items() if w > 0)
        assert isinstance(c, np.ndarray)
        # variable → check: Σ λ_d ch ⊛ c^{⊛(d−1)}
        acc = np.zeros(grid.size)
        power = ch
        for d in range(2, dv_max + 1):
            power = grid.convolve(power, c)
            if lam.get(d, 0.0) > 0:
                acc += lam[d] * power
        v = acc / acc.sum()
        err = grid.error(v)
        if err < target:
            return True
        if err < best * 0.999:
            best = err
            since = 0
        else:
            since += 1
            if since >= 25:
                return False
    return False


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
    for path in args.codes:
        lam, rho = ensemble_of(path)
        rate = design_rate(lam, rho)
        p = threshold(grid, lam, rho, lo=1e-3, hi=0.2)
        f_star = (1 - rate) / h2(p)
        print(f"{path.name}: rate {rate:.4f} p* = {p:.5f} f* = {f_star:.3f}", flush=True)


if __name__ == "__main__":
    main()
