"""Same-run LDPC throughput of the working tree's decoder against an earlier revision's.

    python tools/compare_decoders.py [--rev e75e984] [--n 1000000] [--qbers 0.01 0.02 0.05]

Loads ``qkdd/postprocessing/reconciliation/decoder.py`` as it was at ``--rev``
(``git show``) and runs the benchmark's LDPC reconciliation
(benchmarks/bench_reconciliation.py ``run_ldpc``, same keys and seeds) with
each decoder in turn, alternating, ``--repeats`` times; reports f, dropped
frames and the best wall-clock and CPU (per core) throughput of each. The
rest of the reconciler (planning, folding, protocol) is the working tree's
for both.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_reconciliation  # noqa: E402

import qkdd.postprocessing.reconciliation.decoder as current  # noqa: E402
from qkdd.postprocessing.reconciliation import ldpc  # noqa: E402


def load_revision(rev: str) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:qkdd/postprocessing/reconciliation/decoder.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "decoder_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("decoder_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def use(module: ModuleType) -> None:
    """Make ldpc decode with ``module``'s decoder, adapting older call signatures."""
    if "_layered" in vars(module):
        decode_from = module.decode_from  # the current interface (C kernel)
    elif "decode_from" in vars(module):
        # numba revisions: positional, with the φ table and its shift.
        def decode_from(
            ptr: object, cols: object, llr: object, target: object, messages: object, **kw: int
        ) -> object:
            return module.decode_from(
                ptr,
                cols,
                llr,
                target,
                kw["max_iterations"],
                module.PHI_TABLE,
                module.PHI_SCALE,
                kw["stall"],
                messages,
            )
    else:
        # Revisions before warm retries: a fresh decode (the messages stay
        # zero), and before the stall argument without it.
        stall = "FINAL_STALL_ITERATIONS" in vars(module)

        def decode_from(
            ptr: object, cols: object, llr: object, target: object, messages: object, **kw: int
        ) -> object:
            args = [ptr, cols, llr, target, kw["max_iterations"], module.PHI_TABLE]
            args += [module.PHI_SCALE, kw["stall"]] if stall else [module.PHI_SCALE]
            return module.decode(*args)

    ldpc.decode_from = decode_from  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="e75e984")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--qbers", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    variants = {args.rev: load_revision(args.rev), "worktree": current}
    for module in variants.values():
        use(module)
        bench_reconciliation.run_ldpc(20_000, 0.02, 1)  # compile outside the timings
    for q in args.qbers:
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for name, module in variants.items():
                use(module)
                c0 = time.process_time()
                row = bench_reconciliation.run_ldpc(args.n, q, args.seed)
                cpu = args.n / (time.process_time() - c0)
                wall, old_cpu = best.get(name, (0.0, 0.0))
                best[name] = (max(wall, row["bits_per_s"]), max(old_cpu, cpu))
                f, dropped = row["f"], row["failed_frames"]
                print(f"  {name:>9} q={q} f={f:.3f} dropped={dropped}", flush=True)
        for name, (wall, cpu) in best.items():
            print(f"{name} q={q}: best {wall / 1e6:.3f} Mbit/s wall, {cpu / 1e6:.3f} CPU")
        ratio = best["worktree"][1] / best[args.rev][1]
        print(f"speed-up (CPU) at q={q}: {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
