"""Sealing format (checked against an independent implementation of the documented bytes),
payload models, the outbox and the store-full rule — no broker needed."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from qkdd.link.alarms import AlarmKind, AlarmLevel
from qkdd.mqtt.config import MqttConfig
from qkdd.mqtt.consumer import ReceivedKey
from qkdd.mqtt.messages import (
    AckMessage,
    AlarmMessage,
    CommandMessage,
    KeyMetadata,
    PlaintextKeyMessage,
    SealedKeyMessage,
    StatusMessage,
)
from qkdd.mqtt.publisher import DeliveryError, MqttPublisher
from qkdd.mqtt.sealing import SealingError, SlotKey
from qkdd.mqtt.seam import slot_for_index
from qkdd.store import KeyState, KeyStore, StoreError
from qkdd.store.outbox import Outbox, OutboxEntry, OutboxState
from tests.mqtt_broker import commit_test_block, open_node_store


def rfc5869_hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF written out from RFC 5869, independent of the code under test."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def meta(**changes: object) -> KeyMetadata:
    fields: dict[str, object] = {
        "link": "link1",
        "slot": "kms",
        "key_id": "link1-b3-k7",
        "bits": 256,
        "block": 3,
        "qber": 0.02,
        "eps_total": 1e-10,
        "simulated": True,
        "created": "2026-11-22T00:00:00Z",
    }
    return KeyMetadata.model_validate(fields | changes)


def test_sealed_bytes_follow_the_documented_format() -> None:
    secret, key = os.urandom(32), os.urandom(32)
    sealed = SlotKey.derive(secret, "link1", "kms").seal(meta(), key)
    wire = SealedKeyMessage.model_validate_json(sealed.to_json())

    slot_key = rfc5869_hkdf_sha256(secret, b"link1", b"qkdd-seal-v1" + b"kms", 32)
    ad = b"qkdd-seal-v1\x00link1\x00kms\x00link1-b3-k7\x00256\x001"
    assert len(wire.nonce) == 12 and len(wire.ciphertext) == 32 + 16
    assert ChaCha20Poly1305(slot_key).decrypt(wire.nonce, wire.ciphertext, ad) == key
    tag = hmac.new(slot_key, b"qkdd-ack-v1\x00link1\x00kms\x00link1-b3-k7", hashlib.sha256).digest()
    assert SlotKey.derive(secret, "link1", "kms").ack_tag("link1-b3-k7") == tag


def test_anything_bound_to_the_key_changed_or_a_wrong_secret_fails() -> None:
    secret, key = os.urandom(32), os.urandom(32)
    slot_key = SlotKey.derive(secret, "link1", "kms")
    sealed = slot_key.seal(meta(), key)
    assert slot_key.open(sealed) == key
    for change in ({"key_id": "link1-b3-k8"}, {"simulated": False}):
        with pytest.raises(SealingError):
            slot_key.open(sealed.model_copy(update=change))
    with pytest.raises(SealingError):
        SlotKey.derive(os.urandom(32), "link1", "kms").open(sealed)
    with pytest.raises(SealingError):  # another slot's key (and topic) never opens it
        SlotKey.derive(secret, "link1", "app").open(sealed.model_copy(update={"slot": "app"}))
    flipped = bytearray(sealed.ciphertext)
    flipped[0] ^= 1
    with pytest.raises(SealingError):
        slot_key.open(sealed.model_copy(update={"ciphertext": bytes(flipped)}))
    assert not slot_key.check_ack("link1-b3-k7", slot_key.ack_tag("link1-b3-k8"))
    assert not slot_key.check_ack("link1-b3-k7", b"")


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(1, 4096),
    key_id=st.text(
        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=40,
    ),
)
def test_round_trip_any_length_and_id(bits: int, key_id: str) -> None:
    slot_key = SlotKey.derive(b"s" * 32, "link1", "kms")
    material = os.urandom((bits + 7) // 8)
    sealed = slot_key.seal(meta(bits=bits, key_id=key_id), material)
    again = slot_key.seal(meta(bits=bits, key_id=key_id), material)
    assert sealed.nonce != again.nonce  # a fresh nonce every time
    assert slot_key.open(SealedKeyMessage.model_validate_json(sealed.to_json())) == material


def test_secrets_never_in_reprs() -> None:
    secret, key = os.urandom(32), os.urandom(32)
    slot_key = SlotKey.derive(secret, "link1", "kms")
    plain = PlaintextKeyMessage(**meta().model_dump(), key_hex=key.hex())
    received = ReceivedKey("k", "link1", "kms", 256, 0, 0.0, 0.0, True, "t", bytearray(key))
    entry = OutboxEntry("k", "kms", "t", "sealed", b"payload-bytes")
    for text in (repr(slot_key), repr(plain), repr(received), repr(entry)):
        assert key.hex() not in text and secret.hex() not in text and "payload-bytes" not in text
        assert str(list(key)[:4])[1:-1] not in text
    slot_key.wipe()
    assert slot_key._key == bytearray(32)


def test_payload_models_check_their_schema_and_content() -> None:
    status = StatusMessage(
        node="a", link="l", role="bob", state="ALARM", online=True, simulated=False, versions={}
    )
    assert status.to_json().startswith(b'{"schema":"qkdd.status/1"')
    with pytest.raises(ValidationError, match=r"expected 'qkdd\.alarm/1'"):
        AlarmMessage.model_validate_json(status.to_json())
    with pytest.raises(ValidationError, match="is a abort alarm"):
        AlarmMessage(
            node="a", link="l", kind=AlarmKind.QBER_HIGH, level=AlarmLevel.WARNING, active=True
        )
    with pytest.raises(ValidationError, match="ciphertext length"):
        SealedKeyMessage(**meta().model_dump(), nonce=b"n" * 12, ciphertext=b"c" * 20)
    with pytest.raises(ValidationError, match="eve needs eve_model"):
        CommandMessage(command="eve")
    with pytest.raises(ValidationError):
        AckMessage.model_validate_json(b'{"schema":"qkdd.ack/1","key_id":"k","tag":"%%%"}')
    # telemetry ignores fields a newer daemon adds; commands refuse unknown fields
    assert StatusMessage.model_validate_json(status.to_json()[:-1] + b',"new":1}') == status
    with pytest.raises(ValidationError):
        CommandMessage.model_validate_json(b'{"schema":"qkdd.command/1","command":"pause","x":1}')


def test_slot_assignment_is_index_mod_slots() -> None:
    slots = ["kms", "app", "lab"]
    assert [slot_for_index(i, slots) for i in range(7)] == [*slots, *slots, "kms"]
    with pytest.raises(ValueError):
        slot_for_index(0, [])


def test_outbox_keeps_first_bytes_and_erases_on_delivery(tmp_path: Path) -> None:
    store = open_node_store(tmp_path / "n", {})
    outbox = Outbox(store)
    metas = commit_test_block(store, "link1", ["kms", "app"], 0, 2)
    first = OutboxEntry(metas[0].key_id, "kms", "t/keys/kms", "sealed", b"first")
    assert outbox.enqueue([first]) == 1
    assert outbox.enqueue([OutboxEntry(metas[0].key_id, "kms", "t", "sealed", b"second")]) == 0
    assert [e.payload for e in outbox.queued()] == [b"first"]
    with pytest.raises(StoreError, match="belongs to slot kms"):
        outbox.enqueue([OutboxEntry(metas[0].key_id, "app", "t", "sealed", b"x")])
    assert [m.key_id for m in outbox.committed_without_message()] == [metas[1].key_id]

    assert outbox.deliver(metas[0].key_id)
    assert not outbox.deliver(metas[0].key_id)  # a repeated acknowledgement changes nothing
    assert outbox.get(metas[0].key_id) == (OutboxState.DELIVERED, "kms")
    assert KeyStore(store).list()[0].state is KeyState.DELIVERED
    row = store.conn.execute("SELECT payload FROM outbox WHERE key_id = ?", (metas[0].key_id,))
    assert row.fetchone()[0] is None
    with pytest.raises(StoreError):
        KeyStore(store).material(metas[0].key_id)
    store.close()
    assert b"first" not in store.path.read_bytes()


def test_periodic_republish_skips_messages_sent_within_the_interval(tmp_path: Path) -> None:
    store = open_node_store(tmp_path / "n", {})
    outbox = Outbox(store)
    metas = commit_test_block(store, "link1", ["kms"], 0, 3)
    outbox.enqueue([OutboxEntry(m.key_id, "kms", "t/keys/kms", "sealed", b"x") for m in metas])
    outbox.mark_published([metas[0].key_id])
    ids = [m.key_id for m in metas]
    assert [e.key_id for e in outbox.queued()] == ids  # reconnect: everything again
    recent = outbox.queued(unpublished_for_s=60)  # periodic: not what just went out
    assert [e.key_id for e in recent] == ids[1:]
    store.close()


def test_a_full_outbox_pauses_key_production_and_warns(tmp_path: Path) -> None:
    store = open_node_store(tmp_path / "n", {"kms": os.urandom(32)})
    pub = MqttPublisher(
        MqttConfig(outbox_limit=3),
        store,
        node="a",
        link="link1",
        role="alice",
        slots=["kms"],
        simulated=True,
    )
    assert pub.accepting_keys
    metas = commit_test_block(store, "link1", ["kms"], 0, 3)
    pub.on_keys_committed(metas[0].block_id, metas)
    assert not pub.accepting_keys
    raised = [i for i in pub._queue if i[0] == "alarm"]
    assert raised and AlarmMessage.model_validate_json(raised[-1][2]).kind is AlarmKind.STORE_FULL
    assert pub.outbox.deliver(metas[0].key_id)
    pub._check_store_full()
    assert pub.accepting_keys
    cleared = AlarmMessage.model_validate_json([i for i in pub._queue if i[0] == "alarm"][-2][2])
    assert (cleared.kind, cleared.active) == (AlarmKind.STORE_FULL, False)

    with pytest.raises(DeliveryError, match="qkdd consumer add app"):
        MqttPublisher(
            MqttConfig(),
            store,
            node="a",
            link="link1",
            role="alice",
            slots=["kms", "app"],
            simulated=True,
        )
    store.close()
