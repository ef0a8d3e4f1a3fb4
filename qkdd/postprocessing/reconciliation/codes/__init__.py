"""LDPC mother codes (package data), made by tools/make_ldpc_codes.py; never built in CI.

A file holds a graph, or a lift of another file's graph (see ..codebook)."""
