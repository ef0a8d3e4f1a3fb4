"""Sealing keys to one consumer, and the consumer's acknowledgement tag (DESIGN §5).

Format ``chacha20poly1305-hkdf-sha256-v1`` (README, "Sealing format"):

* slot key ``K = HKDF-SHA256(IKM = consumer secret (32 bytes), salt = UTF-8 link id,
  info = b"qkdd-seal-v1" + UTF-8 slot name, L = 32)``;
* ``nonce`` = 12 random bytes, fresh per key (random nonces are safe here: a slot key
  seals far fewer than 2^32 keys in its life);
* associated data ``AD = b"qkdd-seal-v1" 0x00 link 0x00 slot 0x00 key_id 0x00 bits 0x00
  simulated`` (``bits`` in decimal, ``simulated`` "1" or "0"; names never contain
  0x00). Besides the link, slot and key id of the design, it binds the key length and
  the simulated flag, so nobody can turn a simulated key into a "real" one on the way;
* ``ciphertext = ChaCha20-Poly1305(K).encrypt(nonce, key bytes, AD)`` (key bytes:
  ``ceil(bits/8)`` bytes, most significant bit first, unused low bits of the last byte
  zero), i.e. the sealed bytes followed by the 16-byte Poly1305 tag;
* acknowledgement ``tag = HMAC-SHA256(K, b"qkdd-ack-v1" 0x00 link 0x00 slot 0x00 key_id)``.

Why HMAC for the acknowledgement: one slot key tags every acknowledgement of the
slot, and HMAC-SHA256 is a PRF that stays secure over any number of messages under
one key, whereas a bare Poly1305 key must never authenticate two messages. The
``qkdd-ack-v1`` prefix keeps the tag domain apart from the AEAD's use of K (the AEAD
derives its Poly1305 keys from ChaCha20 blocks, never from K directly).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qkdd.mqtt.messages import KeyMetadata, SealedKeyMessage

SEAL_INFO: Final = b"qkdd-seal-v1"
ACK_INFO: Final = b"qkdd-ack-v1"
SECRET_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
ACK_TAG_BYTES: Final = 32


class SealingError(Exception):
    """A sealed key or acknowledgement that does not verify (never says more)."""


def derive_slot_key(secret: bytes | bytearray, link: str, slot: str) -> bytearray:
    """K = HKDF-SHA256(secret; salt = link; info = "qkdd-seal-v1" + slot)."""
    if len(secret) != SECRET_BYTES:
        raise ValueError("a consumer secret is 32 bytes")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=link.encode(),
        info=SEAL_INFO + slot.encode(),
    )
    return bytearray(hkdf.derive(bytes(secret)))


def associated_data(link: str, slot: str, key_id: str, bits: int, simulated: bool) -> bytes:
    parts = [SEAL_INFO, link.encode(), slot.encode(), key_id.encode(), str(bits).encode()]
    parts.append(b"1" if simulated else b"0")
    return b"\x00".join(parts)


def ack_input(link: str, slot: str, key_id: str) -> bytes:
    return b"\x00".join([ACK_INFO, link.encode(), slot.encode(), key_id.encode()])


@dataclass
class SlotKey:
    """The derived key of one (link, slot): seals keys, opens them, tags acknowledgements.

    The key bytes never appear in a repr; :meth:`wipe` overwrites them.
    """

    link: str
    slot: str
    _key: bytearray = field(repr=False)

    @classmethod
    def derive(cls, secret: bytes | bytearray, link: str, slot: str) -> SlotKey:
        return cls(link, slot, derive_slot_key(secret, link, slot))

    def wipe(self) -> None:
        for i in range(len(self._key)):
            self._key[i] = 0

    def seal(self, meta: KeyMetadata, material: bytes | bytearray) -> SealedKeyMessage:
        """Seal ``material`` (the key's bits) into a key message for this slot."""
        self._check_meta(meta)
        if len(material) != (meta.bits + 7) // 8:
            raise ValueError("material length does not match bits")
        nonce = os.urandom(NONCE_BYTES)
        ad = associated_data(meta.link, meta.slot, meta.key_id, meta.bits, meta.simulated)
        ciphertext = ChaCha20Poly1305(bytes(self._key)).encrypt(nonce, bytes(material), ad)
        return SealedKeyMessage(**meta.model_dump(), nonce=nonce, ciphertext=ciphertext)

    def open(self, message: SealedKeyMessage) -> bytearray:
        """The key's bits; raises :class:`SealingError` if it was not sealed under this
        slot's key (or anything bound to it was changed)."""
        self._check_meta(message)
        ad = associated_data(
            message.link, message.slot, message.key_id, message.bits, message.simulated
        )
        try:
            plain = ChaCha20Poly1305(bytes(self._key)).decrypt(
                message.nonce, message.ciphertext, ad
            )
        except InvalidTag:
            raise SealingError(
                f"key {message.key_id} does not open under this slot's key"
            ) from None
        return bytearray(plain)

    def ack_tag(self, key_id: str) -> bytes:
        return hmac.new(bytes(self._key), ack_input(self.link, self.slot, key_id), sha256).digest()

    def check_ack(self, key_id: str, tag: bytes) -> bool:
        """Constant-time check of an acknowledgement tag."""
        return len(tag) == ACK_TAG_BYTES and hmac.compare_digest(self.ack_tag(key_id), tag)

    def _check_meta(self, meta: KeyMetadata) -> None:
        if meta.link != self.link or meta.slot != self.slot:
            raise SealingError(
                f"key for {meta.link}/{meta.slot} given to the key of {self.link}/{self.slot}"
            )
