"""Post-processing: pure functions over numpy arrays, no I/O.

Sifting, parameter estimation and finite-key length, reconciliation,
verification and privacy amplification. The link engine, the tests and the
benchmarks call the same code.
"""
