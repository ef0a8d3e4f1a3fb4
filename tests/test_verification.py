"""Verification hash: Poly1305 with a fresh public r, truncated by the collision bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdd.postprocessing.verification import (
    SEED_BYTES,
    VerificationError,
    collision_bound,
    message_bytes,
    params_for,
    tag_bits_for,
    tags_match,
    verification_tag,
)


def _reference_poly1305(key32: bytes, message: bytes) -> int:
    """Poly1305 written out from RFC 8439 §2.5, to check the encoding and truncation."""
    r = int.from_bytes(key32[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key32[16:], "little")
    p = (1 << 130) - 5
    acc = 0
    for i in range(0, len(message), 16):
        block = message[i : i + 16] + b"\x01"
        acc = (acc + int.from_bytes(block, "little")) * r % p
    return (acc + s) % (1 << 128)


def test_rfc8439_vector_through_the_reference() -> None:
    key = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    tag = _reference_poly1305(key, b"Cryptographic Forum Research Group")
    assert tag.to_bytes(16, "little").hex() == "a8061dc1305136c6c22b8baf0c0127a9"


@given(
    st.lists(st.integers(0, 1), min_size=0, max_size=700),
    st.binary(min_size=SEED_BYTES, max_size=SEED_BYTES),
    st.integers(1, 128),
)
@settings(max_examples=80, deadline=None)
def test_tag_is_the_truncated_poly1305_of_length_and_packed_key(
    bits: list[int], seed: bytes, tag_bits: int
) -> None:
    key = np.array(bits, dtype=np.uint8)
    message = len(bits).to_bytes(8, "little") + np.packbits(key).tobytes()
    expected = _reference_poly1305(seed + bytes(16), message) % (1 << tag_bits)
    tag = verification_tag(key, seed, tag_bits)
    assert len(tag) == math.ceil(tag_bits / 8)
    assert int.from_bytes(tag, "little") == expected
    assert tags_match(tag, key, seed, tag_bits)


@given(st.integers(0, 2**32 - 1), st.integers(1, 5))
@settings(max_examples=50, deadline=None)
def test_a_corrupted_key_is_rejected(seed_int: int, errors: int) -> None:
    rng = np.random.default_rng(seed_int)
    key = rng.integers(0, 2, 4096, dtype=np.uint8)
    seed = rng.bytes(SEED_BYTES)
    params = params_for(key.size, 1e-15)
    tag = verification_tag(key, seed, params.tag_bits)
    bad = key.copy()
    bad[rng.choice(key.size, errors, replace=False)] ^= 1
    assert not tags_match(tag, bad, seed, params.tag_bits)
    assert tags_match(tag, key.copy(), seed, params.tag_bits)


def test_trailing_zero_keys_of_different_length_differ() -> None:
    seed = bytes(range(16))
    a = np.zeros(9, dtype=np.uint8)
    b = np.zeros(10, dtype=np.uint8)
    assert verification_tag(a, seed, 128) != verification_tag(b, seed, 128)


def test_collision_bound_known_values() -> None:
    # 10^6 key bits: L = 8 + 125000 bytes, ⌈L/16⌉ = 7813 blocks, 8·7813 = 62504.
    assert message_bytes(10**6) == 125_008
    assert collision_bound(10**6, 128) == pytest.approx(62_504 / 2**106, rel=1e-12)
    # log2(62504 / 1e-15) + 22 = 87.76, so 88 bits reach 1e-15 and 87 do not.
    assert tag_bits_for(10**6, 1e-15) == 88
    assert collision_bound(10**6, 87) > 1e-15 >= collision_bound(10**6, 88)
    p = params_for(10**6, 1e-15)
    assert p.tag_bits == 88 and p.leaked_bits == 88 and p.eps_cor <= 1e-15
    # Longer keys need longer tags: 10^8 bits costs log2(100) ≈ 6.6 bits more.
    assert tag_bits_for(10**8, 1e-15) == 95


def test_unreachable_targets_and_bad_inputs() -> None:
    with pytest.raises(VerificationError, match="no Poly1305 tag"):
        tag_bits_for(10**6, 1e-30)
    with pytest.raises(VerificationError):
        tag_bits_for(10, 0.0)
    with pytest.raises(VerificationError, match="16 bytes"):
        verification_tag(np.zeros(8, dtype=np.uint8), b"short", 64)
    with pytest.raises(VerificationError):
        collision_bound(100, 0)
