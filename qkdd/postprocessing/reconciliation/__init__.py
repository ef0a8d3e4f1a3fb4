"""Information reconciliation: make Bob's key equal to Alice's, counting every leaked bit.

- :mod:`.base` — the sans-I/O two-party interface, messages that declare
  their key-dependent bits, per-party leakage ledgers (both directions), a
  local channel and driver for tests and benchmarks.
- :mod:`.ldpc` — rate-adaptive one-way LDPC, the production reconciler
  (≤ 3 round trips); codes are package data made by tools/make_ldpc_codes.py,
  loaded by :mod:`.codebook` (graphs, and lifts of them, built on first use).
- :mod:`.cascade` — vectorised interactive Cascade with BICONF.
"""

from qkdd.postprocessing.reconciliation.base import (
    Channel,
    LeakageLedger,
    LocalChannel,
    LocalRun,
    Message,
    Outcome,
    Party,
    ReconciliationError,
    Role,
    run_local,
)

__all__ = [
    "Channel",
    "LeakageLedger",
    "LocalChannel",
    "LocalRun",
    "Message",
    "Outcome",
    "Party",
    "ReconciliationError",
    "Role",
    "run_local",
]
