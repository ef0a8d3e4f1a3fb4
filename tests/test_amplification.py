"""Privacy amplification: the FFT Toeplitz hash is the exact GF(2) matrix product."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdd.postprocessing.amplification import (
    AmplificationError,
    modified_toeplitz_hash,
    seed_bits_from_bytes,
    toeplitz_hash,
    toeplitz_matrix,
    toeplitz_seed_bits,
)


def _bits(rng: np.random.Generator, k: int) -> np.ndarray:
    return rng.integers(0, 2, k, dtype=np.uint8)


@st.composite
def _instance(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    n = draw(st.integers(1, 300))
    ell = draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return _bits(rng, n), _bits(rng, n + ell - 1), ell


@given(_instance())
@settings(max_examples=60, deadline=None)
def test_fft_hash_equals_direct_gf2_product(inst: tuple[np.ndarray, np.ndarray, int]) -> None:
    key, seed, ell = inst
    direct = (toeplitz_matrix(seed, key.size, ell).astype(np.int64) @ key) & 1
    out = toeplitz_hash(key, seed, ell)
    assert out.dtype == np.uint8
    assert out.shape == (ell,)
    np.testing.assert_array_equal(out, direct)


def test_matrix_is_toeplitz_with_the_documented_indexing() -> None:
    seed = np.array([1, 0, 0, 1, 1, 0], dtype=np.uint8)  # n = 4, ell = 3
    t = toeplitz_matrix(seed, 4, 3)
    # T[i, j] = seed[i - j + 3]: the first row is seed[3], seed[2], seed[1], seed[0].
    np.testing.assert_array_equal(t[0], [1, 0, 0, 1])
    np.testing.assert_array_equal(t[:, 0], [1, 1, 0])
    assert all(t[i, j] == t[i + 1, j + 1] for i in range(2) for j in range(3))


@given(_instance(), st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_hash_is_linear_over_gf2_for_a_fixed_seed(
    inst: tuple[np.ndarray, np.ndarray, int], other_seed: int
) -> None:
    key, seed, ell = inst
    other = _bits(np.random.default_rng(other_seed), key.size)
    lhs = toeplitz_hash(key ^ other, seed, ell)
    rhs = toeplitz_hash(key, seed, ell) ^ toeplitz_hash(other, seed, ell)
    np.testing.assert_array_equal(lhs, rhs)


@given(_instance(), st.integers(1, 64))
@settings(max_examples=60, deadline=None)
def test_piecewise_product_equals_the_whole(
    inst: tuple[np.ndarray, np.ndarray, int], piece: int
) -> None:
    key, seed, ell = inst
    whole = toeplitz_hash(key, seed, ell, piece_bits=10**6)
    pieces = toeplitz_hash(key, seed, ell, piece_bits=piece)
    np.testing.assert_array_equal(pieces, whole)


def test_piecewise_equals_whole_on_a_larger_block() -> None:
    rng = np.random.default_rng(11)
    n, ell = 200_003, 50_021
    key, seed = _bits(rng, n), _bits(rng, n + ell - 1)
    whole = toeplitz_hash(key, seed, ell, piece_bits=n)
    pieces = toeplitz_hash(key, seed, ell, piece_bits=1 << 15)
    assert toeplitz_hash(key, seed, ell).tolist() == whole.tolist()  # default pieces
    np.testing.assert_array_equal(pieces, whole)
    # Spot-check some output bits against the definition at full size.
    for i in (0, 1, ell // 2, ell - 1):
        row = seed[i + n - 1 - np.arange(n)]
        assert int(np.dot(row.astype(np.int64), key) & 1) == whole[i]


def test_modified_toeplitz_is_identity_plus_toeplitz() -> None:
    rng = np.random.default_rng(5)
    n, ell = 97, 31
    key, seed = _bits(rng, n), _bits(rng, n - 1)
    t_prime = toeplitz_matrix(seed, n - ell, ell).astype(np.int64)
    expected = (key[:ell].astype(np.int64) + t_prime @ key[ell:]) & 1
    np.testing.assert_array_equal(modified_toeplitz_hash(key, seed, ell), expected)


def test_seed_length_and_errors() -> None:
    assert toeplitz_seed_bits(10, 4) == 13
    key = np.ones(10, dtype=np.uint8)
    with pytest.raises(AmplificationError, match="13 bits"):
        toeplitz_hash(key, np.ones(12, dtype=np.uint8), 4)
    with pytest.raises(AmplificationError, match="only 0 and 1"):
        toeplitz_hash(np.full(10, 2, dtype=np.uint8), np.ones(13, dtype=np.uint8), 4)
    with pytest.raises(AmplificationError):
        toeplitz_seed_bits(10, 0)


def test_seed_from_random_bytes() -> None:
    bits = seed_bits_from_bytes(b"\x80\x01", 16)
    assert bits[0] == 1 and bits[15] == 1 and int(bits.sum()) == 2
    with pytest.raises(AmplificationError):
        seed_bits_from_bytes(b"\x00", 9)
