"""Build the LDPC mother codes shipped in qkdd/postprocessing/reconciliation/codes/.

Never run in CI; run by hand when the code set changes (seconds per code):

    python tools/make_ldpc_codes.py [--rates 0.75 0.8 0.85 0.9] [--frame 65536]
        [--out qkdd/postprocessing/reconciliation/codes]

The shipped set is rates 0.5, 0.6, 0.75, 0.8, 0.9 and 0.95 at
n = 65 536 (``--rates 0.75 0.8 0.9``; 0.5, 0.6 and 0.95 as described below;
0.9, rebuilt 2026-11-23 with the deeper tree search below, for keys too
short for the longer codes' m) and rates 0.694, 0.8482 and 0.9064 at
n = 98 304 (2026-11-23, fourth session):

    python tools/make_ldpc_codes.py --rates 0.694 0.8482 0.9064 --frame 98304

(1–1.5 min each). Longer frames help the finite-length gap: per-frame needs
(tools/ldpc_needs.py, 16 frames each) had median 1.096 against 1.109 for
the published rate 0.85 at n = 98 304 against 65 536 (QBER 2 %).

And rates 0.9078 and 0.8405 at n = 204 800 (2026-12-07), for keys of
10^6 bits and more at QBER ≲ 2 % (frames of 200 000 key bits):

    python tools/make_ldpc_codes.py --rates 0.9078 0.8405 --frame 204800

(6–10 min each). On frames of 200 000 bits the need (by bisection on f₀ on
the one code) has mean 1.083, sd 0.020 at QBER 1 % (20 frames) and 1.081,
sd 0.012 at 2 % (40 frames), against 1.139, sd 0.026 and 1.083, sd 0.020 on
the 98 304-bit codes' frames of 90 910: half the spread is the frame's own
error count, which fluctuates less in a longer frame. The rate-0.9078
ensemble (checks of degree 76, f* = 1.039) replaced the 0.9064 one (degree
62, f* = 1.078) at this length: its frames at 1 % needed 1.116.

And the megabit code: the rate-0.9078 graph of n = 204 800 lifted by 5
(n = 1 024 000), so a key of 10^6 bits at QBER 1 % is one frame:

    python tools/make_ldpc_codes.py --lift peg_n204800_r091 5

(a second; PEG at that length would take hours). The file holds only the
base's name, Z and one random cyclic shift per base edge (0.5 MB); the
reconciler builds the graph on first use
(qkdd.postprocessing.reconciliation.codebook). Its need at 1 % has mean
1.081, sd 0.006 (8 frames).

For each mother rate R0:

1. Degree distribution. Rates in :data:`DESIGNED` (0.694, 0.8482, 0.9064) take
   an ensemble optimised by density evolution (tools/de_bsc.py, below). Rates 0.75–0.9 (the
   default set) take the published
   BSC-optimised ensembles of Elkouss, Leverrier, Alléaume & Boutros (ISIT
   2009, Table I; :data:`PUBLISHED`), whose density-evolution thresholds are
   f* = 1.03–1.15 against 1.13–1.21 for the ensembles designed here before.
   Other rates fall back to a check-concentrated ρ(x) and an irregular λ(x)
   over variable degrees {2, 3, …, 30}, optimised for the binary symmetric
   channel with an EXIT-chart linear program (ten Brink, Kramer & Ashikhmin,
   IEEE TCOM 52, 670 (2004); the LP form of Richardson & Urbanke, "Modern
   Coding Theory", §4.11): maximise the design rate Σλ_i/i subject to the
   variable-node curve (BSC channel LLR ±ln((1−p)/p) plus Gaussian a-priori
   messages, integrated exactly by Gauss–Hermite quadrature) lying above the
   inverse check-node curve, λ2 below the BSC stability bound
   1/(2√(p(1−p)) ρ′(1)) and fewer degree-2 nodes than checks. The shipped
   rates 0.5, 0.6, 0.7 and 0.95 are still those LP codes, built by the
   previous version of this tool (`--rates 0.5 0.6 0.95` rebuilds those by
   the same LP, with the PEG below; 0.7 would take the published table,
   which is kept for the record but not shipped): the published rate-0.7 ensemble
   decoded no better than the LP one at QBER 5 % (same first-attempt
   failures at f₀ = 1.08 and 1.12, 20 frames each) and 3× slower (variable
   degrees up to 73).
2. Graph. Progressive edge growth (Hu, Eleftheriou & Arnold, IEEE TIT 51, 386
   (2005)) with its tree search truncated at depth 2: each new edge of a
   variable node goes to the lowest-degree check outside the node's
   depth-2 neighbourhood, so the graph has girth ≥ 6 and concentrated check
   degrees. (Full-depth PEG took far too long on the dense high-rate graphs.)
   Degree-2 nodes keep cycles among themselves long (see :func:`_peg_depth2`),
   and degree-3 nodes, placed while the graph is still sparse, get the full
   PEG tree search (:func:`_peg_ball`): with depth 2 only, a rate-0.85 code
   had a codeword of weight 4 (two degree-2 and two degree-3 nodes), which a
   frame at QBER 2 % decoded to.
3. Puncturing order. Variable nodes none of whose checks touches an earlier
   punctured node (untainted puncturing, Elkouss et al., arXiv:1006.2660), low
   degrees first. Every check then has at most one punctured neighbour, so
   every prefix of the order has full column rank and is one-step recoverable;
   the rank is what lets the syndrome leak m − p bits instead of m.

Each code is an .npz with the parity-check matrix in CSR form (rows = checks)
plus the metadata the reconciler needs and, for the record, the variable
degrees and edge-perspective λ the graph realises and where the ensemble
came from. The PEG seed is --seed plus the rate in hundredths.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numba
import numpy as np
import numpy.typing as npt
from scipy.optimize import linprog

# Brännström's fit of the J-function (mutual information of a consistent
# Gaussian LLR of standard deviation σ) and its inverse.
_H1, _H2, _H3 = 0.3073, 0.8935, 1.1064
VAR_DEGREES = (2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30)
#: Rates built by default: the published ensembles that beat the LP ones here.
DEFAULT_RATES = (0.75, 0.8, 0.85, 0.9)

#: Published BSC-optimised ensembles: rate → (λ by variable degree (edge
#: perspective), ρ by check degree, density-evolution threshold p*). From
#: D. Elkouss, A. Leverrier, R. Alléaume, J. J. Boutros, "Efficient
#: reconciliation protocol for discrete-variable quantum key distribution",
#: Proc. IEEE ISIT 2009, 1879–1883 (arXiv:0901.2140), Table I, optimised by
#: differential evolution with discretised density evolution; only the rates
#: whose ρ is concentrated on two adjacent degrees (what the PEG below
#: realises). The paper writes λ(x) = Σ λ_i x^{i−1}, so its x^{i−1} is degree
#: i here. At rate 0.85 its λ_5 reads 0.094274, which makes Σλ = 1.05; 0.04274
#: gives Σλ = 1 and the stated rate 0.849, so that is taken as the intended
#: value. Thresholds as published; tools/de_bsc.py --published re-checks them.
PUBLISHED: dict[float, tuple[dict[int, float], dict[int, float], float]] = {
    0.7: (
        {2: 0.05343, 3: 0.29406, 6: 0.00896, 9: 0.15571, 12: 0.12189, 25: 0.19872,
         46: 0.09572, 62: 0.02741, 65: 0.04056, 73: 0.00354},
        {20: 0.76922, 21: 0.23077},
        0.0504,
    ),
    0.75: (
        {2: 0.10805, 3: 0.09511, 4: 0.01449, 5: 0.13764, 6: 0.10667, 7: 0.05288,
         28: 0.01107, 31: 0.47408},
        {25: 0.74161, 26: 0.25839},
        0.0392,
    ),
    0.8: (
        {2: 0.09420, 3: 0.18088, 6: 0.11972, 7: 0.08550, 8: 0.09816, 17: 0.07194,
         26: 0.34960},
        {29: 0.58807, 30: 0.41193},
        0.0298,
    ),
    0.85: (
        {2: 0.04528, 3: 0.20537, 4: 0.05878, 5: 0.04274, 6: 0.08454, 7: 0.01176,
         9: 0.05137, 21: 0.50015},
        {41: 0.54204, 42: 0.45795},
        0.0199,
    ),
    0.9: (
        {2: 0.07689, 3: 0.28096, 5: 0.08933, 9: 0.19620, 12: 0.30631, 21: 0.05031},
        {50: 0.95025, 51: 0.04975},
        0.0109,
    ),
}  # fmt: skip

#: Ensembles checked here with tools/de_bsc.py (discretised density
#: evolution, delta = 0.04, L = 25): rate → (λ, ρ, threshold p*).
#:
#: Shipped at n = 98 304 (2026-11-23, fourth session): 0.694, 0.8482 and
#: 0.9064, optimised by density evolution (``de_bsc.py --optimise P --start R
#: --dc D --max-degree2-per-check 1.3``; see each entry). Against the codes
#: they replace (0.6984, 0.8434, 0.9051: published λ with denser checks),
#: the mean per-frame need (tools/ldpc_needs.py, 40 frames of 90 910 bits)
#: fell from 1.081 to 1.061 at QBER 5 %, 1.094 to 1.083 at 2 % and 1.169 to
#: 1.139 at 1 %.
#:
#: Degree-2 nodes per check are capped at 1.3. Uncapped, the optimiser
#: raises λ2 (2.4 degree-2 nodes per check at rate 0.9074, f* = 1.069; 1.8
#: at 0.8487, f* = 1.042), and the cycles among them get short: frames at
#: QBER 1 % then decoded to a wrong codeword 4 times in 700 (6–16 bits off,
#: all on degree-2 nodes closed by punctured ones) and at 2 % once in 1000
#: (4 bits: two degree-2 and two degree-3 nodes on five checks). Capped,
#: f* = 1.078 and 1.045, needs within 0.005 of the uncapped ones, and with
#: the deeper tree search for degree-3 nodes (:data:`DEEP_PEG_MAX_DEGREE`)
#: no such codeword and no wrong decoding in 2000 frames at 1 % and 2 %.
#: Puncturing degree-3 nodes instead of degree-2 ones did not help (needs
#: rose, failures 8 of 1000).
#:
#: Kept for the record, no longer shipped: 0.9051, 0.8434 and 0.6984 (the
#: published rate-0.85 and 0.75 λ with checks of degree 66, 40 and 21: f* =
#: 1.129, 1.069, 1.060), 0.9128 and 0.9041 (uncapped optimisations at degree
#: 66 and 60: f* 1.071 at 0.9128, but too few punctured positions left for
#: retries, and dropped frames).
DESIGNED: dict[float, tuple[dict[int, float], dict[int, float], float]] = {
    # Denser checks (degree 76; Gallager's bound for checks of degree 62 is f ≥
    # 1.051 at p = 0.0108 even under ML decoding) and variable degrees up to 40,
    # up to 2 degree-2 nodes per check: the 0.9064 λ mixed with 25 % of degree
    # 40 converges at p = 0.0112, then `optimise` at 0.0112 (3 steps, delta 0.04,
    # L 25): p* = 0.01121, f* = 1.039 (0.9064: f* = 1.078).
    0.9078: (
        {2: 0.052632, 3: 0.177712, 6: 0.012477, 7: 0.0675, 8: 0.165851, 9: 0.079575,
         21: 0.19304, 30: 0.0525, 40: 0.198714},
        {76: 1.0},
        0.01121,
    ),
    # The same route at 2 %: checks of degree 46 (Gallager: f ≥ 1.010 at
    # p = 0.0225; degree 38 gave f ≥ 1.025), the 0.8405 λ mixed with 40 % of
    # degree 40 converges at p = 0.0225, then `optimise` there (14 steps,
    # degrees up to 80, up to 2 degree-2 nodes per check): p* = 0.0225 (0.02249
    # by de_bsc.threshold, to its 0.3 %), f* = 1.022 (0.8405: 1.047). Built at
    # n = 204 800 (8.5 min) but not shipped: its frames at 2 % need 1.065
    # (0.8405: 1.083), and 10^6-bit keys gave f 1.087 at 1.25 Mbit/s per core
    # at f₀ = 1.085, but 1 of 3000 frames failed (ldpc_fer, seed 99; 0 of 6000
    # on 0.8405), not yet understood.
    0.8414: (
        {2: 0.073423, 3: 0.141643, 6: 0.072011, 7: 0.1, 8: 0.054812, 12: 0.010488,
         15: 0.108741, 18: 0.081219, 21: 0.002918, 40: 0.222021, 80: 0.132725},
        {46: 1.0},
        0.0225,
    ),
    # --optimise 0.0108 --start 0.9051 --dc 62 (15 steps): p* = 0.01092, f* = 1.078.
    0.9064: (
        {2: 0.041935, 3: 0.272510, 8: 0.192404, 9: 0.196100, 18: 0.066980, 21: 0.230071},
        {62: 1.0},
        0.01092,
    ),
    # --optimise 0.0205 --start 0.8434 --dc 40 (15 steps): p* = 0.02068, f* = 1.045.
    0.8482: (
        {2: 0.065, 3: 0.232256, 8: 0.185193, 9: 0.162483, 21: 0.078098, 25: 0.08925,
         30: 0.18772},
        {40: 1.0},
        0.02068,
    ),
    # The 0.8482 λ with checks of degree 38 (m = 0.1595·n): p* = 0.02203,
    # f* = 1.047 (de_bsc.threshold, delta 0.04, L 25). Built at n = 204 800,
    # where a frame of 200 000 key bits at QBER 2 % keeps about 1800
    # punctured positions at the shipped f₀ = 1.09, room for both retries
    # (the 0.8482 graph at that length kept 540 at f₀ = 1.08, and retries
    # ran out of them).
    0.8405: (
        {2: 0.065, 3: 0.232256, 8: 0.185193, 9: 0.162483, 21: 0.078098, 25: 0.08925,
         30: 0.18772},
        {38: 1.0},
        0.02203,
    ),
    # --optimise 0.049 --start 0.6984 --dc 21 (5 steps, rate 0.7086), then
    # checks of degree 20 (rate 0.694), which keeps punctured positions for
    # the retries at QBER 5 %: p* = 0.05236, f* = 1.033 (de_bsc.py on the code).
    0.694: (
        {2: 0.113494, 3: 0.164425, 5: 0.01014, 6: 0.015488, 7: 0.129062, 8: 0.115552,
         9: 0.006194, 31: 0.348889, 40: 0.096755},
        {20: 1.0},
        0.05236,
    ),
    0.9128: (
        {2: 0.075764, 3: 0.187685, 6: 0.096900, 7: 0.234971, 8: 0.006184, 15: 0.155707,
         18: 0.111076, 21: 0.131713},
        {66: 1.0},
        0.01009,
    ),
    0.9041: (
        {2: 0.075764, 3: 0.187685, 6: 0.096900, 7: 0.234971, 8: 0.006184, 15: 0.155707,
         18: 0.111076, 21: 0.131713},
        {60: 1.0},
        0.0105,
    ),
    0.9051: (PUBLISHED[0.85][0], {66: 1.0}, 0.0105),
    0.8434: (PUBLISHED[0.85][0], {40: 1.0}, 0.02091),
    0.6984: (PUBLISHED[0.75][0], {21: 1.0}, 0.04954),
}  # fmt: skip


def _j_function(sigma: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    s = np.abs(sigma)
    return np.where(s <= 0, 0.0, (1.0 - 2.0 ** (-_H1 * s ** (2 * _H2))) ** _H3)


def _j_inverse(info: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    i = np.clip(info, 0.0, 1.0 - 1e-12)
    return np.where(i <= 0, 0.0, (-np.log2(1.0 - i ** (1.0 / _H3)) / _H1) ** (1.0 / (2 * _H2)))


_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(60)
_GH_W = _GH_W / _GH_W.sum()


def _var_exit(degree: int, info_a: npt.NDArray[np.float64], p: float) -> npt.NDArray[np.float64]:
    """Extrinsic information of a degree-d variable node on a BSC(p)."""
    lc = math.log((1 - p) / p)
    sigma_a = _j_inverse(info_a)
    mu = (degree - 1) * sigma_a**2 / 2
    sd = np.sqrt(2 * mu)
    loss = np.zeros_like(info_a)
    for sign, weight in ((1.0, 1 - p), (-1.0, p)):
        llr = sign * lc + mu[:, None] + sd[:, None] * _GH_X[None, :]
        loss += weight * (np.logaddexp(0.0, -llr) / math.log(2)) @ _GH_W
    return 1.0 - loss


def _check_exit(
    rho: list[tuple[int, float]], info_a: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    return np.asarray(
        sum(w * (1.0 - _j_function(math.sqrt(d - 1) * _j_inverse(1.0 - info_a))) for d, w in rho),
        dtype=np.float64,
    )


def _concentrated_rho(dc_avg: float) -> list[tuple[int, float]]:
    lo = math.floor(dc_avg)
    hi = lo + 1
    w_lo = (1 / dc_avg - 1 / hi) / (1 / lo - 1 / hi)
    return [(lo, w_lo), (hi, 1 - w_lo)]


def optimise(
    p: float, dc_avg: float
) -> tuple[float, npt.NDArray[np.float64], list[tuple[int, float]]] | None:
    """Best design rate and λ for BSC(p) with check-concentrated ρ of mean degree dc_avg."""
    rho = _concentrated_rho(dc_avg)
    grid = np.linspace(0.0, 0.999, 300)
    to_var = _check_exit(rho, grid)
    curves = np.stack([_var_exit(d, to_var, p) for d in VAR_DEGREES], axis=1)
    stability = 1.0 / (2 * math.sqrt(p * (1 - p)) * sum(w * (d - 1) for d, w in rho))
    # Fewer degree-2 variables than checks (Λ2·n < m ⇔ λ2 < 2/d̄c), so they can
    # form a cycle-free chain: a cycle of degree-2 nodes is a low-weight codeword,
    # i.e. undetected decoding errors and an error floor.
    chain = 0.98 * 2.0 / dc_avg
    k = len(VAR_DEGREES)
    res = linprog(
        -np.array([1.0 / d for d in VAR_DEGREES]),
        A_ub=np.vstack([-curves, np.eye(k)[0]]),
        b_ub=np.concatenate([-(grid + 2e-4), [min(stability, chain)]]),
        A_eq=np.ones((1, k)),
        b_eq=[1.0],
        bounds=[(0.0, 1.0)] * k,
    )
    if not res.success:
        return None
    lam = np.asarray(res.x, dtype=np.float64)
    rate = 1.0 - sum(w / d for d, w in rho) / float(np.sum(lam / np.array(VAR_DEGREES)))
    return rate, lam, rho


def design_for_rate(rate: float) -> tuple[float, npt.NDArray[np.float64], list[tuple[int, float]]]:
    """Largest BSC crossover (and its ensemble) whose optimised rate reaches ``rate``."""

    def best_at(p: float) -> tuple[float, npt.NDArray[np.float64], list[tuple[int, float]]]:
        # Coarse scan of the mean check degree, then refine around the best.
        coarse = [(r, dc) for dc in np.arange(5.0, 90.0, 3.0) if (r := optimise(p, float(dc)))]
        centre = max(coarse, key=lambda t: t[0][0])[1]
        fine = [
            r
            for dc in np.arange(max(3.0, centre - 3.0), centre + 3.0, 0.5)
            if (r := optimise(p, float(dc)))
        ]
        return max(fine + [c[0] for c in coarse], key=lambda t: t[0])

    lo, hi = 2e-3, 0.15
    for _ in range(11):
        mid = 0.5 * (lo + hi)
        if best_at(mid)[0] >= rate:
            lo = mid
        else:
            hi = mid
    _, lam, rho = best_at(lo)
    return lo, lam, rho


def node_degrees(
    n: int, degrees: npt.NDArray[np.int64], lam: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """Variable degrees of n nodes realising edge-perspective λ, ascending."""
    frac = lam / degrees
    frac = frac / frac.sum()
    counts = np.floor(frac * n).astype(np.int64)
    order = np.argsort(-(frac * n - counts))
    counts[order[: n - int(counts.sum())]] += 1
    return np.repeat(degrees.astype(np.int64), counts)


@numba.njit(cache=False)
def _find(parent: npt.NDArray[np.int64], c: int) -> int:
    while parent[c] != c:
        parent[c] = parent[parent[c]]
        c = parent[c]
    return c


#: Nodes of degree 3 up to this get a full PEG tree search, not depth 2: with
#: only girth 6, degree-2 and degree-3 nodes formed codewords of weight 4
#: (2 + 2 nodes on five checks), which the decoder landed on at QBER 2 %.
DEEP_PEG_MAX_DEGREE = 3


@numba.njit(cache=False)
def _peg_ball(  # noqa: PLR0917 (a numba kernel takes plain arrays)
    v: int,
    k: int,
    v_adj: npt.NDArray[np.int64],
    c_adj: npt.NDArray[np.int64],
    c_deg: npt.NDArray[np.int64],
    deep: npt.NDArray[np.int64],
    var_seen: npt.NDArray[np.int64],
    queue: npt.NDArray[np.int64],
    stamp: int,
    m: int,
    dv_max: int,
) -> None:
    """Mark (``deep`` = stamp) the checks of v's PEG tree short of its last layer.

    Breadth-first from v's first k checks; the layer that would reach every
    check, or adds none, is left unmarked, so the new edge goes as far from v
    as the graph allows (Hu, Eleftheriou & Arnold).
    """
    tail = 0
    var_seen[v] = stamp
    for e in range(k):
        c0 = v_adj[v, e]
        if deep[c0] != stamp:
            deep[c0] = stamp
            queue[tail] = c0
            tail += 1
    start = 0
    while True:
        end = tail
        for i in range(start, end):
            c1 = queue[i]
            for b in range(c_deg[c1]):
                u = c_adj[c1, b]
                if var_seen[u] == stamp:
                    continue
                var_seen[u] = stamp
                for e in range(dv_max):
                    c2 = v_adj[u, e]
                    if c2 < 0:
                        break
                    if deep[c2] != stamp:
                        deep[c2] = stamp
                        queue[tail] = c2
                        tail += 1
        if tail == end:
            return
        if tail >= m:
            for i in range(end, tail):
                deep[queue[i]] = 0
            return
        start = end


@numba.njit(cache=False)
def _peg_depth2(
    var_deg: npt.NDArray[np.int64], m: int, max_check_deg: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """Progressive edge growth with the tree search truncated at depth 2.

    Variable nodes in ascending degree; each new edge goes to the
    lowest-degree check not within distance 2 of the node (so no 4-cycle is
    ever formed); checks are kept bucket-sorted by degree so the choice costs
    O(1) amortised. Full-depth PEG costs O(n·E) on the dense graphs of
    high-rate codes; depth 2 keeps girth ≥ 6, which is what matters at these
    lengths.

    Degree-2 nodes get more care, because a cycle made of degree-2 nodes
    only is a codeword of weight equal to its length (an undetected error
    if the decoder lands on it): while possible their second edge joins two
    different components of the degree-2 subgraph (union-find over the
    checks), so the first m − 1 of them form a forest; the BSC-optimised
    ensembles have more degree-2 nodes than checks, and each further one
    goes to a check outside a breadth-first ball of up to m/2 checks around
    its first check in the degree-2 subgraph, so such cycles are long.
    Nodes of degree 3 to :data:`DEEP_PEG_MAX_DEGREE` search the whole tree
    instead (:func:`_peg_ball`). Returns the check adjacency, check degrees
    and the number of edges that had to close a 4-cycle (0 in practice).
    """
    np.random.seed(seed)
    n = var_deg.size
    dv_max = var_deg.max()
    width = max_check_deg + dv_max
    v_adj = np.full((n, dv_max), -1, dtype=np.int64)
    c_adj = np.full((m, width), -1, dtype=np.int64)
    c_deg = np.zeros(m, dtype=np.int64)
    # degree-2 subgraph: checks joined by a degree-2 variable
    d2_adj = np.full((m, width), -1, dtype=np.int64)
    d2_deg = np.zeros(m, dtype=np.int64)
    ball = np.zeros(m, dtype=np.int64)
    queue = np.empty(m, dtype=np.int64)
    order = np.random.permutation(m).astype(np.int64)
    pos = np.empty(m, dtype=np.int64)
    for i in range(m):
        pos[order[i]] = i
    top = width + 2
    bucket = np.full(top + 1, m, dtype=np.int64)  # bucket[d] = first index of degree ≥ d
    bucket[0] = 0
    mark = np.zeros(m, dtype=np.int64)
    deep = np.zeros(m, dtype=np.int64)
    var_seen = np.zeros(n, dtype=np.int64)
    parent = np.arange(m, dtype=np.int64)  # union-find over checks, joined by degree-2 nodes
    components = m
    forced = 0
    for v in range(n):
        stamp = v + 1
        for k in range(var_deg[v]):
            second2 = var_deg[v] == 2 and k == 1
            avoid_root = -1
            in_ball = False
            if second2:
                c0 = v_adj[v, 0]
                if components > 1:
                    avoid_root = _find(parent, c0)
                else:
                    # Ball around c0 in the degree-2 subgraph, at most m/2 checks.
                    ball[c0] = stamp
                    head, tail = 0, 1
                    queue[0] = c0
                    while head < tail < m // 2:
                        c1 = queue[head]
                        head += 1
                        for b in range(d2_deg[c1]):
                            c2 = d2_adj[c1, b]
                            if ball[c2] != stamp:
                                ball[c2] = stamp
                                queue[tail] = c2
                                tail += 1
                    in_ball = True
            deep_on = 3 <= var_deg[v] <= DEEP_PEG_MAX_DEGREE and k >= 1
            if deep_on:
                _peg_ball(v, k, v_adj, c_adj, c_deg, deep, var_seen, queue, stamp, m, dv_max)
            lowest = 0
            while bucket[lowest + 1] == 0:
                lowest += 1
            span = m - bucket[lowest]
            size_low = bucket[lowest + 1] - bucket[lowest]
            r = np.random.randint(size_low)
            chosen = -1
            for i in range(span):
                c = order[bucket[lowest] + (r + i) % span]
                if mark[c] == stamp or (in_ball and ball[c] == stamp):
                    continue
                if deep_on and deep[c] == stamp:
                    continue
                if avoid_root < 0 or _find(parent, c) != avoid_root:
                    chosen = c
                    break
            if chosen < 0:  # no check far enough: keep only girth ≥ 6
                for i in range(span):
                    c = order[bucket[lowest] + (r + i) % span]
                    if mark[c] != stamp:
                        chosen = c
                        break
            if chosen < 0:  # every check within distance 2: accept a 4-cycle
                forced += 1
                for i in range(span):
                    c = order[bucket[lowest] + (r + i) % span]
                    dup = False
                    for t in range(k):
                        if v_adj[v, t] == c:
                            dup = True
                    if not dup:
                        chosen = c
                        break
            c = chosen
            if second2:
                c0 = v_adj[v, 0]
                ra, rb = _find(parent, c0), _find(parent, c)
                if ra != rb:
                    parent[rb] = ra
                    components -= 1
                d2_adj[c0, d2_deg[c0]] = c
                d2_deg[c0] += 1
                d2_adj[c, d2_deg[c]] = c0
                d2_deg[c] += 1
            v_adj[v, k] = c
            d = c_deg[c]
            c_adj[c, d] = v
            # move c from bucket d to bucket d + 1
            j = bucket[d + 1] - 1
            other = order[j]
            order[j], order[pos[c]] = c, other
            pos[other], pos[c] = pos[c], j
            bucket[d + 1] -= 1
            c_deg[c] = d + 1
            # checks within distance 2 of v through c are now forbidden for v
            mark[c] = stamp
            for b in range(c_deg[c]):
                u = c_adj[c, b]
                for e in range(dv_max):
                    c2 = v_adj[u, e]
                    if c2 < 0:
                        break
                    mark[c2] = stamp
    return c_adj, c_deg, forced


def puncture_order(
    check_ptr: npt.NDArray[np.int64],
    check_vars: npt.NDArray[np.int64],
    var_deg: npt.NDArray[np.int64],
    seed: int,
) -> npt.NDArray[np.int64]:
    """Untainted puncturing order: no check ever has two punctured neighbours."""
    n = var_deg.size
    m = check_ptr.size - 1
    var_checks: list[list[int]] = [[] for _ in range(n)]
    for c in range(m):
        for v in check_vars[check_ptr[c] : check_ptr[c + 1]]:
            var_checks[int(v)].append(c)
    rng = np.random.default_rng(seed)
    candidates = sorted(range(n), key=lambda v: (int(var_deg[v]), float(rng.random())))
    used = np.zeros(m, dtype=bool)
    order: list[int] = []
    for v in candidates:
        cs = var_checks[v]
        if not any(used[c] for c in cs):
            order.append(v)
            used[cs] = True
    return np.array(order, dtype=np.int64)


def ensemble(rate: float) -> tuple[float, npt.NDArray[np.int64], npt.NDArray[np.float64], str]:
    """Threshold, variable degrees, edge-perspective λ and provenance for a mother rate."""
    if rate in DESIGNED:
        lam_d, _, p_star = DESIGNED[rate]
        degrees = np.array(sorted(lam_d), dtype=np.int64)
        lam = np.array([lam_d[int(d)] for d in degrees], dtype=np.float64)
        return p_star, degrees, lam / lam.sum(), "density evolution (tools/de_bsc.py)"
    if rate in PUBLISHED:
        lam_d, _, p_star = PUBLISHED[rate]
        degrees = np.array(sorted(lam_d), dtype=np.int64)
        lam = np.array([lam_d[int(d)] for d in degrees], dtype=np.float64)
        return p_star, degrees, lam / lam.sum(), "Elkouss et al. 2009, Table I"
    p_design, lam, _ = design_for_rate(rate)
    return p_design, np.array(VAR_DEGREES, dtype=np.int64), lam, "EXIT linear program"


def build(rate: float, n: int, seed: int, out: Path) -> None:
    t0 = time.perf_counter()
    p_design, var_degrees, lam, source = ensemble(rate)
    m = round(n * (1 - rate))
    degrees = node_degrees(n, var_degrees, lam)
    edges = int(degrees.sum())
    max_check_deg = math.ceil(edges / m) + 1
    c_adj, c_deg, forced = _peg_depth2(degrees, m, max_check_deg, seed)
    check_ptr = np.concatenate([[0], np.cumsum(c_deg)]).astype(np.int64)
    check_vars = np.concatenate([c_adj[c, : c_deg[c]] for c in range(m)]).astype(np.int64)
    order = puncture_order(check_ptr, check_vars, degrees, seed)
    # λ as realised by the graph (node counts are rounded), for the record.
    realised = np.array([float(np.sum(degrees[degrees == d])) for d in var_degrees]) / edges
    name = f"peg_n{n}_r{round(rate * 100):03d}.npz"
    np.savez_compressed(
        out / name,
        n=n,
        m=m,
        design_rate=rate,
        design_qber=p_design,
        check_ptr=check_ptr.astype(np.int32),
        check_vars=check_vars.astype(np.int32),
        puncture_order=order.astype(np.int32),
        var_degrees=var_degrees.astype(np.int32),
        lambda_edge=realised,
        source=source,
        seed=seed,
    )
    print(
        f"{name}: R0={rate} m={m} edges={edges} p*={p_design:.4f} "
        f"f*={(1 - rate) / _h(p_design):.3f} ({source}) check deg {c_deg.min()}-{c_deg.max()} "
        f"4-cycles forced={forced} puncturable={order.size} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )


def _h(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=int, default=1 << 16)
    parser.add_argument("--rates", type=float, nargs="+", default=list(DEFAULT_RATES))
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument(
        "--out", type=Path, default=Path("qkdd/postprocessing/reconciliation/codes")
    )
    parser.add_argument(
        "--lift",
        nargs=2,
        metavar=("CODE", "Z"),
        help="instead of building: write CODE (a shipped code's name) lifted by Z "
        "(random cyclic shifts; qkdd.postprocessing.reconciliation.codebook)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.lift:
        lift(args.lift[0], int(args.lift[1]), args.seed, args.out)
        return
    for rate in args.rates:
        build(rate, args.frame, args.seed + round(rate * 100), args.out)


def lift(name: str, z: int, seed: int, out: Path) -> None:
    """Write ``name`` lifted by ``z``: the base's name, Z and one shift per base edge."""
    base = np.load(out / f"{name}.npz")
    edges = int(base["check_ptr"][-1])
    if not 2 <= z <= 255:
        raise SystemExit("Z must be in [2, 255] (shifts are stored as bytes)")
    shifts = np.random.default_rng([seed, z]).integers(0, z, edges, dtype=np.uint8)
    path = out / f"{name}_x{z}.npz"
    np.savez_compressed(path, base=np.array(name), lift=np.array(z), shifts=shifts)
    print(f"{path}: {name} lifted by {z} (n = {int(base['n']) * z}, {edges} shifts)")


if __name__ == "__main__":
    main()
