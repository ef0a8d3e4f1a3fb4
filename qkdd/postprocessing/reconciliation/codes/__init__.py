"""LDPC mother codes (package data), made by tools/make_ldpc_codes.py; never built in CI."""
