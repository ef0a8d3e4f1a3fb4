"""Build the LDPC mother codes shipped in qkdd/postprocessing/reconciliation/codes/.

Never run in CI; run by hand when the code set changes (a few minutes on 2 cores):

    python tools/make_ldpc_codes.py [--frame 65536] [--out qkdd/postprocessing/reconciliation/codes]

For each mother rate R0:

1. Degree distribution. Check-concentrated ρ(x) and an irregular λ(x) over
   variable degrees {2, 3, …, 30}, optimised for the binary symmetric channel
   with an EXIT-chart linear program (ten Brink, Kramer & Ashikhmin, IEEE TCOM
   52, 670 (2004); the LP form of Richardson & Urbanke, "Modern Coding Theory",
   §4.11): maximise the design rate Σλ_i/i subject to the variable-node curve
   (BSC channel LLR ±ln((1−p)/p) plus Gaussian a-priori messages, integrated
   exactly by Gauss–Hermite quadrature) lying above the inverse check-node
   curve, and λ2 below the BSC stability bound 1/(2√(p(1−p)) ρ′(1)). The
   crossover p is the largest for which the optimised rate still reaches R0.
2. Graph. Progressive edge growth (Hu, Eleftheriou & Arnold, IEEE TIT 51, 386
   (2005)) with its tree search truncated at depth 2: each new edge of a
   variable node goes to the lowest-degree check outside the node's
   depth-2 neighbourhood, so the graph has girth ≥ 6 and concentrated check
   degrees. (Full-depth PEG took far too long on the dense high-rate graphs.)
3. Puncturing order. Variable nodes none of whose checks touches an earlier
   punctured node (untainted puncturing, Elkouss et al., arXiv:1006.2660), low
   degrees first. Every check then has at most one punctured neighbour, so
   every prefix of the order has full column rank and is one-step recoverable;
   the rank is what lets the syndrome leak m − p bits instead of m.

Each code is an .npz with the parity-check matrix in CSR form (rows = checks)
plus the metadata the reconciler needs.
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
MOTHER_RATES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


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


def node_degrees(n: int, lam: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Variable degrees of n nodes realising edge-perspective λ, ascending."""
    frac = lam / np.array(VAR_DEGREES)
    frac = frac / frac.sum()
    counts = np.floor(frac * n).astype(np.int64)
    order = np.argsort(-(frac * n - counts))
    counts[order[: n - int(counts.sum())]] += 1
    return np.repeat(np.array(VAR_DEGREES, dtype=np.int64), counts)


@numba.njit(cache=False)
def _find(parent: npt.NDArray[np.int64], c: int) -> int:
    while parent[c] != c:
        parent[c] = parent[parent[c]]
        c = parent[c]
    return c


@numba.njit(cache=False)
def _peg_depth2(
    var_deg: npt.NDArray[np.int64], m: int, max_check_deg: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """Progressive edge growth with the tree search truncated at depth 2.

    Variable nodes in ascending degree; each new edge goes to the
    lowest-degree check not within distance 2 of the node (so no 4-cycle is
    ever formed); checks are kept bucket-sorted by degree so the choice costs
    O(1) amortised. Degree-2 nodes never close a cycle among themselves
    (union-find over the checks they join). Full-depth PEG costs O(n·E) on the dense graphs of
    high-rate codes; depth 2 keeps girth ≥ 6, which is what matters at these
    lengths. Returns the check adjacency, check degrees and the number of
    edges that had to close a 4-cycle (0 in practice).
    """
    np.random.seed(seed)
    n = var_deg.size
    dv_max = var_deg.max()
    v_adj = np.full((n, dv_max), -1, dtype=np.int64)
    c_adj = np.full((m, max_check_deg + dv_max), -1, dtype=np.int64)
    c_deg = np.zeros(m, dtype=np.int64)
    order = np.random.permutation(m).astype(np.int64)
    pos = np.empty(m, dtype=np.int64)
    for i in range(m):
        pos[order[i]] = i
    top = max_check_deg + dv_max + 2
    bucket = np.full(top + 1, m, dtype=np.int64)  # bucket[d] = first index of degree ≥ d
    bucket[0] = 0
    mark = np.zeros(m, dtype=np.int64)
    parent = np.arange(m, dtype=np.int64)  # union-find over checks, joined by degree-2 nodes
    forced = 0
    for v in range(n):
        stamp = v + 1
        for k in range(var_deg[v]):
            avoid_root = -1
            if var_deg[v] == 2 and k == 1:
                avoid_root = _find(parent, v_adj[v, 0])
            lowest = 0
            while bucket[lowest + 1] == 0:
                lowest += 1
            span = m - bucket[lowest]
            size_low = bucket[lowest + 1] - bucket[lowest]
            r = np.random.randint(size_low)
            chosen = -1
            for i in range(span):
                c = order[bucket[lowest] + (r + i) % span]
                if mark[c] != stamp and (avoid_root < 0 or _find(parent, c) != avoid_root):
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
            if avoid_root >= 0:
                parent[_find(parent, c)] = avoid_root
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


def build(rate: float, n: int, seed: int, out: Path) -> None:
    t0 = time.perf_counter()
    p_design, lam, rho = design_for_rate(rate)
    m = round(n * (1 - rate))
    degrees = node_degrees(n, lam)
    edges = int(degrees.sum())
    max_check_deg = math.ceil(edges / m) + 1
    c_adj, c_deg, forced = _peg_depth2(degrees, m, max_check_deg, seed)
    check_ptr = np.concatenate([[0], np.cumsum(c_deg)]).astype(np.int64)
    check_vars = np.concatenate([c_adj[c, : c_deg[c]] for c in range(m)]).astype(np.int64)
    order = puncture_order(check_ptr, check_vars, degrees, seed)
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
        var_degrees=np.array(VAR_DEGREES, dtype=np.int32),
        lambda_edge=lam,
        rho_edge=np.array(rho, dtype=np.float64),
        seed=seed,
    )
    print(
        f"{name}: R0={rate} m={m} edges={edges} p*={p_design:.4f} "
        f"f*={(1 - rate) / _h(p_design):.3f} check deg {c_deg.min()}-{c_deg.max()} "
        f"4-cycles forced={forced} puncturable={order.size} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )


def _h(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=int, default=1 << 16)
    parser.add_argument("--rates", type=float, nargs="+", default=list(MOTHER_RATES))
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument(
        "--out", type=Path, default=Path("qkdd/postprocessing/reconciliation/codes")
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for i, rate in enumerate(args.rates):
        build(rate, args.frame, args.seed + i, args.out)


if __name__ == "__main__":
    main()
