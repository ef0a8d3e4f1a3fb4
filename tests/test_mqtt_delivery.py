"""Sealed key delivery through a real Mosquitto: both ends' consumers get identical keys,
nothing in clear on the wire or in the broker's database, forged keys and
acknowledgements rejected, republish sends identical bytes."""

from __future__ import annotations

import asyncio
import base64
import io
import os
from pathlib import Path

import aiomqtt
import pytest

from qkdd.link.alarm_kinds import AlarmEvent, AlarmKind
from qkdd.logging import configure_logging
from qkdd.mqtt.consumer import ConsumerStore, KeyConsumer, ReceivedKey
from qkdd.mqtt.messages import AckMessage, KeyMetadata, SealedKeyMessage, StatusMessage
from qkdd.mqtt.publisher import MqttPublisher
from qkdd.mqtt.sealing import SlotKey
from qkdd.store import KeyState, KeyStore, StateStore
from qkdd.store.outbox import Outbox, OutboxState
from tests.daemonmqtt import command, retained
from tests.mqtt_broker import (
    Collector,
    MosquittoBroker,
    commit_test_block,
    consumer_config,
    key_material,
    mqtt_config,
    open_node_store,
    running,
    sniffer,
    wait_until,
)

LINK = "link1"
SLOTS = ["kms", "app"]
SEED = b"delivery-test"


def publisher(
    broker: MosquittoBroker, store: StateStore, node: str, **mqtt: object
) -> MqttPublisher:
    return MqttPublisher(
        mqtt_config(broker, client_id=f"pub-{node}", **mqtt),
        store,
        node=node,
        link=LINK,
        role="alice" if node == "alice" else "bob",
        slots=SLOTS,
        simulated=True,
    )


def assert_not_in_clear(blob: bytes, materials: list[bytes]) -> None:
    for material in materials:
        forms = [material, material.hex().encode(), base64.b64encode(material)]
        # any 16-byte run of the key (a partial leak) as well as the whole key
        forms += [material[i : i + 16] for i in range(0, len(material) - 15, 8)]
        for form in forms:
            assert form not in blob


@pytest.fixture
def secrets_() -> dict[str, bytes]:
    return {slot: os.urandom(32) for slot in SLOTS}


async def test_both_ends_consumers_get_identical_keys_nothing_in_clear(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    ends = {}
    for node in ("alice", "bob"):
        secrets = {slot: os.urandom(32) for slot in SLOTS}
        store = open_node_store(tmp_path / node, secrets)
        collectors = {slot: Collector() for slot in SLOTS}
        consumers = {
            slot: KeyConsumer(
                consumer_config(
                    mqtt_broker,
                    tmp_path / f"{node}-{slot}",
                    node=node,
                    link=LINK,
                    slot=slot,
                    secret=secrets[slot],
                ),
                collectors[slot],
            )
            for slot in SLOTS
        }
        ends[node] = (store, publisher(mqtt_broker, store, node), consumers, collectors)

    materials: list[bytes] = []
    async with sniffer(mqtt_broker) as seen:
        alice, bob = ends["alice"], ends["bob"]
        async with running(alice[1], bob[1], *alice[2].values(), *bob[2].values()):
            # The app consumer at alice goes away with its session kept: its keys wait in
            # the broker (and its database) as ciphertext.
            await alice[2]["app"].stop()
            gone = "Client qkdd-consumer-alice-link1-app disconnected"
            await wait_until(lambda: gone in mqtt_broker.log())
            for block in range(2):
                for store, pub, _, _ in (alice, bob):
                    metas = commit_test_block(store, LINK, SLOTS, block, 6, seed=SEED)
                    pub.on_keys_committed(metas[0].block_id, metas)
            expected = {f"{LINK}-b{b}-k{i}" for b in range(2) for i in range(6)}
            materials = [key_material(SEED, kid, 256) for kid in sorted(expected)]
            await wait_until(
                lambda: len(alice[3]["kms"].keys) == 6 and len(bob[3]["app"].keys) == 6
            )
            await asyncio.sleep(1.5)  # autosave_interval 1: the broker saves its queue
            persisted_while_queued = mqtt_broker.persisted_bytes()
            alice_app = KeyConsumer(alice[2]["app"].config, alice[3]["app"])
            async with running(alice_app):
                await wait_until(
                    lambda: all(
                        len(c.keys) == 6 for _, _, _, cs in (alice, bob) for c in cs.values()
                    )
                )
                await wait_until(
                    lambda: (
                        alice[1].outbox.count_queued() == 0 and bob[1].outbox.count_queued() == 0
                    )
                )
            alice_app.close()
        for _, _, consumers, _ in (alice, bob):
            for consumer in consumers.values():
                consumer.close()

    for slot in SLOTS:
        a, b = alice[3][slot].keys, bob[3][slot].keys
        assert a.keys() == b.keys()
        assert all(a[kid] == b[kid] == key_material(SEED, kid, 256) for kid in a)
        assert sorted(alice[3][slot].handed) == sorted(a)  # each handed over once
    assert set(alice[3]["kms"].keys) | set(alice[3]["app"].keys) == expected
    assert all(kid.endswith(("k0", "k2", "k4")) for kid in alice[3]["kms"].keys)  # i mod 2

    # The wire: key messages were there (sealed), never a key in clear.
    key_messages = [p for t, p in seen if "/keys/" in t and not t.endswith("/ack")]
    assert len(key_messages) >= 24
    assert_not_in_clear(b"".join(p for _, p in seen), materials)
    # The broker's database held queued key messages, sealed.
    assert persisted_while_queued
    queued_messages = [p for t, p in seen if t.endswith(f"alice/links/{LINK}/keys/app")]
    assert all(SealedKeyMessage.model_validate_json(p).ciphertext for p in queued_messages)
    assert any(p in persisted_while_queued for p in queued_messages)
    assert_not_in_clear(persisted_while_queued, materials)
    assert_not_in_clear(mqtt_broker.persisted_bytes(), materials)

    # Delivered: erased at the daemon (material and stored message), metadata kept.
    for store, *_ in (alice, bob):
        keystore = KeyStore(store)
        assert {m.state for m in keystore.list()} == {KeyState.DELIVERED}
        rows = store.conn.execute("SELECT count(*) FROM keys WHERE material IS NOT NULL")
        assert rows.fetchone()[0] == 0
        rows = store.conn.execute("SELECT count(*) FROM outbox WHERE payload IS NOT NULL")
        assert rows.fetchone()[0] == 0
        store.close()
        assert_not_in_clear((store.path).read_bytes(), materials)


async def test_foreign_key_and_forged_acknowledgements_are_rejected(
    mqtt_broker: MosquittoBroker, tmp_path: Path, secrets_: dict[str, bytes]
) -> None:
    log = io.StringIO()
    configure_logging("debug", json=True, stream=log)
    store = open_node_store(tmp_path / "alice", secrets_)
    pub = publisher(mqtt_broker, store, "alice")
    collector = Collector()
    consumer = KeyConsumer(
        consumer_config(
            mqtt_broker, tmp_path / "c", node="alice", link=LINK, slot="kms", secret=secrets_["kms"]
        ),
        collector,
    )
    metas = commit_test_block(store, LINK, SLOTS, 0, 2)
    topic = f"qkd/alice/links/{LINK}"
    async with running(consumer), running(pub):  # consumer first: no session yet
        async with aiomqtt.Client(
            mqtt_broker.host, mqtt_broker.port, identifier="intruder"
        ) as evil:
            # 1. a key sealed without the consumer secret is dropped, never acknowledged
            wrong = SlotKey.derive(os.urandom(32), LINK, "kms")
            meta = KeyMetadata(
                link=LINK,
                slot="kms",
                key_id="injected",
                bits=256,
                block=0,
                qber=0.0,
                eps_total=1e-10,
                simulated=False,
                created="2026-01-01T00:00:00Z",
            )
            await evil.publish(
                f"{topic}/keys/kms", wrong.seal(meta, os.urandom(32)).to_json(), qos=1
            )
            # ... and so is a genuine message whose simulated flag was flipped on the way
            genuine = SlotKey.derive(secrets_["kms"], LINK, "kms").seal(
                meta.model_copy(update={"key_id": "flipped", "simulated": True}), os.urandom(32)
            )
            tampered = genuine.model_copy(update={"simulated": False})
            await evil.publish(f"{topic}/keys/kms", tampered.to_json(), qos=1)
            await wait_until(lambda: consumer.rejected == 2)
            assert "injected" not in consumer.store.ids() and "flipped" not in consumer.store.ids()

            # 2. forged acknowledgements of the app slot's key (it has no consumer here,
            # so only a forgery could deliver it) leave it queued
            kms_key = next(m for m in metas if m.consumer_slot == "kms")
            app_key = next(m for m in metas if m.consumer_slot == "app")
            kms_slot_key = SlotKey.derive(secrets_["kms"], LINK, "kms")
            forged = [
                ("app", AckMessage(key_id=app_key.key_id, tag=os.urandom(32))),  # random tag
                ("app", AckMessage(key_id=app_key.key_id, tag=wrong.ack_tag(app_key.key_id))),
                # the kms consumer's valid tag for that id, on either ack topic
                (
                    "app",
                    AckMessage(key_id=app_key.key_id, tag=kms_slot_key.ack_tag(app_key.key_id)),
                ),
                (
                    "kms",
                    AckMessage(key_id=app_key.key_id, tag=kms_slot_key.ack_tag(app_key.key_id)),
                ),
            ]
            for slot, ack in forged:
                await evil.publish(f"{topic}/keys/{slot}/ack", ack.to_json(), qos=1)
            await evil.publish(f"{topic}/keys/app/ack", b"not json", qos=1)
            await wait_until(lambda: pub.acks_rejected == 5)
            assert Outbox(store).get(app_key.key_id) == (OutboxState.QUEUED, "app")
            assert [m.key_id for m in KeyStore(store).list(KeyState.COMMITTED)] == [app_key.key_id]

        # 3. the real consumer's key arrives once the daemon publishes it
        pub.on_keys_committed(metas[0].block_id, metas)
        await wait_until(lambda: pub.acks_accepted == 1)
    consumer.close()
    assert list(collector.keys) == [kms_key.key_id]
    assert collector.keys[kms_key.key_id] == key_material(b"qkdd-test", kms_key.key_id, 256)
    states = {m.key_id: m.state for m in KeyStore(store).list()}
    assert states[kms_key.key_id] is KeyState.DELIVERED
    assert list(states.values()).count(KeyState.COMMITTED) == 1  # the app key: no consumer
    store.close()
    # the logs name key ids, never key bits or secrets
    assert "keys delivered" in log.getvalue() and "forged acknowledgement" in log.getvalue()
    assert_not_in_clear(
        log.getvalue().encode(), [collector.keys[kms_key.key_id], *secrets_.values()]
    )


async def test_unacknowledged_keys_are_republished_identically_after_restart_and_periodically(
    mqtt_broker: MosquittoBroker, tmp_path: Path, secrets_: dict[str, bytes]
) -> None:
    state_dir = tmp_path / "alice"
    store = open_node_store(state_dir, secrets_)
    metas = commit_test_block(store, LINK, SLOTS, 0, 2)
    async with sniffer(mqtt_broker, f"qkd/alice/links/{LINK}/keys/kms") as seen:
        pub = publisher(mqtt_broker, store, "alice", republish_interval_s=0.5)
        async with running(pub):
            pub.on_keys_committed(metas[0].block_id, metas)
            await wait_until(lambda: len(seen) >= 3)  # first publish + periodic republishes
        store.close()
        first = seen[0][1]
        assert all(payload == first for _, payload in seen)

        # a restart: the outbox survives, the same bytes go out again
        count = len(seen)
        store = StateStore.open(state_dir)
        pub = publisher(mqtt_broker, store, "alice")
        async with running(pub):
            await wait_until(lambda: len(seen) > count)
        assert seen[-1][1] == first

        # a restart of a daemon that committed keys but stopped before sealing them
        later = commit_test_block(store, LINK, SLOTS, 1, 2)
        store.close()
        store = StateStore.open(state_dir)
        pub = publisher(mqtt_broker, store, "alice")
        async with running(pub):
            await wait_until(lambda: any(later[0].key_id.encode() in p for _, p in seen))

        # the consumer comes: every kms key exactly once, then nothing is queued for it
        collector = Collector()
        consumer = KeyConsumer(
            consumer_config(
                mqtt_broker,
                tmp_path / "c",
                node="alice",
                link=LINK,
                slot="kms",
                secret=secrets_["kms"],
            ),
            collector,
        )
        pub = publisher(mqtt_broker, store, "alice")
        # the consumer subscribes first: it has no session yet to hold what comes before
        async with running(consumer), running(pub):
            await wait_until(lambda: len(collector.keys) == 2)
            await wait_until(lambda: Outbox(store).queued("kms") == [])
        consumer.close()
    assert sorted(collector.handed) == sorted(
        m.key_id for m in [*metas, *later] if m.consumer_slot == "kms"
    )
    store.close()


async def test_a_failed_hand_over_keeps_the_key_until_it_succeeds(
    mqtt_broker: MosquittoBroker, tmp_path: Path, secrets_: dict[str, bytes]
) -> None:
    store = open_node_store(tmp_path / "alice", secrets_)
    pub = publisher(mqtt_broker, store, "alice", republish_interval_s=0.3)
    handed: list[str] = []
    failures = [OSError("no reader on the FIFO")] * 2

    async def flaky_sink(key: ReceivedKey) -> None:
        if failures:
            raise failures.pop()
        handed.append(key.key_id)

    config = consumer_config(
        mqtt_broker, tmp_path / "c", node="alice", link=LINK, slot="kms", secret=secrets_["kms"]
    )
    consumer = KeyConsumer(config, flaky_sink, handover_retry_s=0.2)
    metas = commit_test_block(store, LINK, ["kms"], 0, 1, seed=SEED)
    async with running(pub, consumer):
        pub.on_keys_committed(metas[0].block_id, metas)
        # acknowledged at once (it is stored), handed over when the sink works again
        await wait_until(lambda: pub.acks_accepted == 1)
        await wait_until(lambda: handed == [metas[0].key_id])
    assert consumer.store.pending() == []
    consumer.close()
    store.close()


async def test_keys_never_handed_to_the_publisher_are_still_sealed_and_delivered(
    mqtt_broker: MosquittoBroker, tmp_path: Path, secrets_: dict[str, bytes]
) -> None:
    """An engine subscriber that failed (or a crash between commit and hand-over) loses
    nothing: the republish tick seals committed keys that have no message."""
    store = open_node_store(tmp_path / "alice", secrets_)
    pub = publisher(mqtt_broker, store, "alice", republish_interval_s=0.3)
    collector = Collector()
    consumer = KeyConsumer(
        consumer_config(
            mqtt_broker, tmp_path / "c", node="alice", link=LINK, slot="kms", secret=secrets_["kms"]
        ),
        collector,
    )
    async with running(pub, consumer):
        metas = commit_test_block(store, LINK, ["kms"], 0, 3, seed=SEED)  # never announced
        await wait_until(lambda: len(collector.keys) == 3)
        await wait_until(lambda: pub.acks_accepted == 3)
    assert sorted(collector.keys) == sorted(m.key_id for m in metas)
    consumer.close()
    store.close()


async def test_broker_killed_while_keys_are_outstanding_every_key_arrives_once(
    mqtt_broker: MosquittoBroker, tmp_path: Path, secrets_: dict[str, bytes]
) -> None:
    """The quick version of tests/test_mqtt_faults.py: SIGKILL the broker while keys wait
    for a consumer that is away; after the restart each key is delivered exactly once."""
    store = open_node_store(tmp_path / "alice", secrets_)
    pub = publisher(mqtt_broker, store, "alice", republish_interval_s=0.5)
    collector = Collector()
    config = consumer_config(
        mqtt_broker, tmp_path / "c", node="alice", link=LINK, slot="kms", secret=secrets_["kms"]
    )
    async with running(pub):
        # the consumer registers its session, then goes away
        first = KeyConsumer(config, collector)
        async with running(first):
            pass
        first.close()
        for block in range(3):
            metas = commit_test_block(store, LINK, ["kms"], block, 4, seed=SEED)
            pub.on_keys_committed(metas[0].block_id, metas)
        await asyncio.sleep(0.3)
        for _ in range(2):
            mqtt_broker.kill()
            await asyncio.sleep(0.3)
            mqtt_broker.start()
            await wait_until(pub.connected.is_set)
        consumer = KeyConsumer(config, collector)
        async with running(consumer):
            await wait_until(lambda: len(collector.keys) == 12)
            await wait_until(lambda: pub.outbox.count_queued() == 0)
            await asyncio.sleep(1.2)  # two more republish ticks: nothing arrives twice
    consumer.close()
    expected = [f"{LINK}-b{b}-k{i}" for b in range(3) for i in range(4)]
    assert sorted(collector.handed) == sorted(expected)
    assert all(collector.keys[k] == key_material(SEED, k, 256) for k in expected)
    consumer_store = ConsumerStore(config.consumer.state_dir)
    assert sorted(consumer_store.ids()) == sorted(expected)
    consumer_store.close()
    store.close()


async def test_an_alarm_does_not_wait_behind_a_block_of_keys(
    tmp_path: Path, mqtt_broker: MosquittoBroker
) -> None:
    """Each key waits for its PUBACK and a store write; an alarm raised while a big
    block is being published goes out after the current batch, not after the block
    (seen in the acceptance suite: qber_high 50 s late behind 3000 keys)."""
    store = open_node_store(tmp_path / "a", {s: os.urandom(32) for s in SLOTS})
    pub = publisher(mqtt_broker, store, "alice")
    alarm_topic = f"qkd/alice/links/{LINK}/alarm"
    async with sniffer(mqtt_broker, f"qkd/alice/links/{LINK}/#") as seen, running(pub):
        metas = commit_test_block(store, LINK, SLOTS, 0, 400, seed=SEED)
        pub.on_keys_committed(metas[0].block_id, metas)
        await wait_until(lambda: any("/keys/" in t for t, _ in seen), 60)
        pub.on_alarm(AlarmEvent(AlarmKind.QBER_HIGH, True, {"block_id": 1}))
        await wait_until(lambda: sum("/keys/" in t for t, _ in seen) >= 400, 240)
        await wait_until(lambda: any(t == alarm_topic for t, _ in seen), 60)
    topics = [t for t, _ in seen]
    keys_after_alarm = sum("/keys/" in t for t in topics[topics.index(alarm_topic) :])
    assert keys_after_alarm > 100, f"alarm sent after {400 - keys_after_alarm} of 400 keys"
    store.close()


async def test_commands_are_answered_while_a_backlog_is_republished(
    tmp_path: Path, mqtt_broker: MosquittoBroker
) -> None:
    """A large outbox (keys committed while the broker was away) is republished after
    connecting, while commands are served (seen in the acceptance suite: ``pause`` went
    unanswered for minutes after a broker restart)."""
    store = open_node_store(tmp_path / "a", {s: os.urandom(32) for s in SLOTS})
    pub = publisher(mqtt_broker, store, "alice")
    commit_test_block(store, LINK, SLOTS, 0, 400, seed=SEED)
    async with sniffer(mqtt_broker, f"qkd/alice/links/{LINK}/keys/#") as seen, running(pub):
        reply = await command(mqtt_broker, "alice", command="status")
        keys_when_answered = len(seen)
        assert reply.ok, reply.error
        await wait_until(lambda: len(seen) >= 400, 240)
    assert keys_when_answered < 400
    store.close()


async def test_status_stays_offline_after_stop(
    tmp_path: Path, mqtt_broker: MosquittoBroker
) -> None:
    """A status queued just before stopping (STOPPED) must not overwrite the retained
    ``online: false`` (seen in the acceptance suite after SIGTERM)."""
    store = open_node_store(tmp_path / "a", {s: os.urandom(32) for s in SLOTS})
    pub = publisher(mqtt_broker, store, "alice")
    async with running(pub):
        pub.on_status("STOPPED", "stopped")
        await pub.stop()
    raw = await retained(mqtt_broker, f"qkd/alice/links/{LINK}/status")
    status = StatusMessage.model_validate_json(raw)
    assert (status.state, status.online) == ("STOPPED", False)
    store.close()


async def test_key_copies_expire_after_two_republish_intervals(
    mqtt_broker: MosquittoBroker, tmp_path: Path, secrets_: dict[str, bytes]
) -> None:
    """MQTT 5: each copy carries a message expiry of two republish intervals, so an
    absent consumer's session does not collect one copy per interval."""
    store = open_node_store(tmp_path / "alice", secrets_)
    metas = commit_test_block(store, LINK, SLOTS, 0, 2)
    expiries: list[int] = []
    async with aiomqtt.Client(
        mqtt_broker.host,
        mqtt_broker.port,
        identifier="expiry-probe",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as probe:
        await probe.subscribe(f"qkd/alice/links/{LINK}/keys/kms", qos=1)
        pub = publisher(mqtt_broker, store, "alice", republish_interval_s=45)
        async with running(pub):
            pub.on_keys_committed(metas[0].block_id, metas)
            async with asyncio.timeout(15):
                async for message in probe.messages:
                    props = message.properties
                    expiries.append(int(getattr(props, "MessageExpiryInterval", -1)))
                    break
    store.close()
    # The broker forwards the remaining lifetime: at most 90 s, and nearly all of it.
    assert 80 <= expiries[0] <= 90
