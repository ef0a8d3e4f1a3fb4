"""Key verification after reconciliation: a 2-universal hash with a fresh public seed.

Alice sends tag = H_r(K_A); Bob accepts his corrected key only if H_r(K_B)
equals it. The hash is Poly1305's polynomial evaluation (``cryptography``'s
constant-time implementation) keyed with a **fresh public r drawn after
reconciliation** (an input here: the caller draws it from the random source),
so the errors left by the reconciler cannot depend on r.

Collision bound (Bernstein, "The Poly1305-AES message-authentication code",
FSE 2005, Theorem 3.3): for distinct messages of at most L bytes and any
g, Pr_r[H_r(m) − H_r(m′) ≡ g (mod 2^128)] ≤ 8⌈L/16⌉ / 2^106. Keeping only the
low t bits of the tag, a collision means the difference lies in one of
2^(128 − t) residues, so

    ε_cor ≤ 2^(128 − t) · 8⌈L/16⌉ / 2^106.                      (union bound)

:func:`tag_bits_for` picks the shortest t meeting a target ε_cor; the tag is
public and key-dependent, so the finite-key length subtracts its t bits (DESIGN
§4: the real tag length + 1 when it exceeds log2(2/ε_cor)).
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.poly1305 import Poly1305

Bits = npt.NDArray[np.uint8]

#: Bytes of the public hash key r (Poly1305 clamps it to 106 free bits).
SEED_BYTES = 16
#: Full Poly1305 tag length.
MAX_TAG_BITS = 128
#: Bytes in front of the packed key: its length in bits, so keys that differ
#: only in trailing zero padding still differ as messages.
_LENGTH_PREFIX_BYTES = 8


class VerificationError(ValueError):
    """Bad inputs: seed length, tag length, or an ε_cor no tag can reach."""


@dataclass(frozen=True)
class VerificationParams:
    """What a block's verification costs and guarantees.

    ``tag_bits`` are disclosed (count them in the key length); ``eps_cor`` is
    the collision probability bound for this key length and tag length.
    """

    key_bits: int
    tag_bits: int
    eps_cor: float

    @property
    def leaked_bits(self) -> int:
        """Key-dependent bits the tag discloses."""
        return self.tag_bits


def message_bytes(key_bits: int) -> int:
    """Length L in bytes of the hashed message for a key of ``key_bits`` bits."""
    return _LENGTH_PREFIX_BYTES + -(-key_bits // 8)


def collision_bound(key_bits: int, tag_bits: int) -> float:
    """ε_cor = 2^(128 − t) · 8⌈L/16⌉ / 2^106 for a t-bit tag (capped at 1)."""
    if not 1 <= tag_bits <= MAX_TAG_BITS:
        raise VerificationError(f"tag length must be 1..{MAX_TAG_BITS} bits, got {tag_bits}")
    blocks = -(-message_bytes(key_bits) // 16)
    log2_eps = (MAX_TAG_BITS - tag_bits) + math.log2(8 * blocks) - 106
    return min(1.0, math.pow(2.0, log2_eps))


def tag_bits_for(key_bits: int, eps_cor: float) -> int:
    """Shortest tag length t with :func:`collision_bound` ≤ ``eps_cor``."""
    if not 0.0 < eps_cor < 1.0:
        raise VerificationError(f"eps_cor must lie in (0, 1), got {eps_cor}")
    blocks = -(-message_bytes(key_bits) // 16)
    # 128 − t + log2(8·blocks) − 106 ≤ log2(ε)  ⇔  t ≥ 22 + log2(8·blocks) − log2(ε)
    t = math.ceil(22 + math.log2(8 * blocks) - math.log2(eps_cor))
    t = min(max(t, 1), MAX_TAG_BITS + 1)
    while t > 1 and collision_bound(key_bits, t - 1) <= eps_cor:  # float edge cases
        t -= 1
    while t <= MAX_TAG_BITS and collision_bound(key_bits, t) > eps_cor:
        t += 1
    if t > MAX_TAG_BITS:
        raise VerificationError(
            f"no Poly1305 tag reaches eps_cor={eps_cor:g} for {key_bits} key bits"
        )
    return t


def params_for(key_bits: int, eps_cor: float) -> VerificationParams:
    """Tag length and the ε_cor it actually achieves for this key length."""
    t = tag_bits_for(key_bits, eps_cor)
    return VerificationParams(key_bits=key_bits, tag_bits=t, eps_cor=collision_bound(key_bits, t))


def verification_tag(key: Bits, seed: bytes, tag_bits: int) -> bytes:
    """The low ``tag_bits`` bits of Poly1305_r(len ‖ packed key), little-endian bytes.

    ``seed`` is the fresh public r (``SEED_BYTES`` bytes), drawn after
    reconciliation. The one-time pad half of the Poly1305 key is zero: it
    would cancel in the comparison and adds nothing to verification.
    """
    if len(seed) != SEED_BYTES:
        raise VerificationError(f"verification seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if not 1 <= tag_bits <= MAX_TAG_BITS:
        raise VerificationError(f"tag length must be 1..{MAX_TAG_BITS} bits, got {tag_bits}")
    bits = np.asarray(key, dtype=np.uint8)
    if bits.ndim != 1:
        raise VerificationError("key must be a 1-D bit array")
    message = int(bits.size).to_bytes(_LENGTH_PREFIX_BYTES, "little") + np.packbits(bits).tobytes()
    full = int.from_bytes(Poly1305.generate_tag(seed + bytes(16), message), "little")
    truncated = full & ((1 << tag_bits) - 1)
    return truncated.to_bytes(-(-tag_bits // 8), "little")


def tags_match(expected: bytes, key: Bits, seed: bytes, tag_bits: int) -> bool:
    """Bob's check: does his key hash to Alice's tag? (constant-time compare)."""
    return hmac.compare_digest(expected, verification_tag(key, seed, tag_bits))
