"""Status (retained, Last Will on SIGKILL), QBER, alarms (retained, then cleared) and commands,
read by aiomqtt and by the C client mosquitto_sub; plaintext keys for trusted labs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from qkdd.link.alarms import AlarmEvent, AlarmKind, AlarmLevel
from qkdd.mqtt.config import MqttConfig
from qkdd.mqtt.consumer import KeyConsumer
from qkdd.mqtt.messages import (
    AlarmMessage,
    CommandMessage,
    CommandReply,
    PlaintextKeyMessage,
    QberMessage,
    StatusMessage,
)
from qkdd.mqtt.publisher import MqttPublisher
from qkdd.mqtt.seam import CommandRefused, FrameQber
from qkdd.store import KeyState, KeyStore
from tests.mqtt_broker import (
    Collector,
    MosquittoBroker,
    commit_test_block,
    consumer_config,
    key_material,
    mqtt_config,
    open_node_store,
    running,
    wait_until,
)

LINK = "link1"
TOPIC = f"qkd/alice/links/{LINK}"


def mosquitto_sub(broker: MosquittoBroker, topic: str, *extra: str, wait_s: int = 10) -> list[str]:
    """Payloads mosquitto_sub (the C client) prints for ``topic``."""
    result = subprocess.run(
        ["mosquitto_sub", *broker.client_args(), "-t", topic, "-W", str(wait_s), *extra],
        capture_output=True,
        text=True,
        timeout=wait_s + 10,
        check=False,
    )
    return [line for line in result.stdout.splitlines() if line]


def start_mosquitto_sub(broker: MosquittoBroker, topic: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["mosquitto_sub", *broker.client_args(), "-t", topic, "-C", str(count), "-W", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )


def make_publisher(broker: MosquittoBroker, tmp_path: Path, **kwargs: Any) -> MqttPublisher:
    mqtt = kwargs.pop("mqtt", {})
    store = open_node_store(tmp_path / "alice", {"kms": b"k" * 32})
    return MqttPublisher(
        mqtt_config(broker, client_id="pub-alice", **mqtt),
        store,
        node="alice",
        link=LINK,
        role="alice",
        slots=["kms"],
        simulated=True,
        **kwargs,
    )


async def test_status_qber_and_alarms_parse_from_mosquitto_sub(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    pub = make_publisher(mqtt_broker, tmp_path)
    async with running(pub):
        pub.on_status("TRANSMIT", "block 1")
        await asyncio.sleep(0.2)
        status = StatusMessage.model_validate_json(
            (await asyncio.to_thread(mosquitto_sub, mqtt_broker, f"{TOPIC}/status", "-C", "1"))[0]
        )
        assert (status.state, status.online, status.simulated, status.role) == (
            "TRANSMIT",
            True,
            True,
            "alice",
        )
        assert status.versions["qkdd"]

        sub = start_mosquitto_sub(mqtt_broker, f"{TOPIC}/qber", 1)
        for frame in range(100):
            pub.on_frame_qber(
                FrameQber(
                    frame=frame,
                    qber=0.021,
                    qber_bound=0.01,
                    window_bits=512,
                    sifted_bits=900,
                    gains={"signal": 1e-3},
                    rates={"sifted": 9e3},
                )
            )
            await asyncio.sleep(0.05)
            if sub.poll() is not None:
                break
        out, _ = sub.communicate(timeout=10)
        qber = QberMessage.model_validate_json(out.splitlines()[0])
        assert (qber.qber, qber.window_bits, qber.gains) == (0.021, 512, {"signal": 1e-3})

        # an alarm is retained while active: a late subscriber still sees it
        pub.on_alarm(AlarmEvent(AlarmKind.QBER_HIGH, active=True, values={"errors": 80}))
        pub.on_alarm(AlarmEvent(AlarmKind.TIMING_SHIFT, active=True, values={"ps": 40}))
        await asyncio.sleep(0.3)
        lines = await asyncio.to_thread(mosquitto_sub, mqtt_broker, f"{TOPIC}/alarm", "-C", "1")
        alarm = AlarmMessage.model_validate_json(lines[0])
        assert alarm.active and alarm.kind is AlarmKind.TIMING_SHIFT
        assert {a.kind for a in alarm.active_alarms} == {
            AlarmKind.QBER_HIGH,
            AlarmKind.TIMING_SHIFT,
        }
        assert {a.level for a in alarm.active_alarms} == {AlarmLevel.ABORT, AlarmLevel.WARNING}

        # cleared explicitly: live subscribers see the clears, and nothing stays retained
        sub = start_mosquitto_sub(mqtt_broker, f"{TOPIC}/alarm", 4)  # retained + 2 clears + removal
        await asyncio.sleep(0.5)
        pub.on_alarm(AlarmEvent(AlarmKind.QBER_HIGH, active=False, values={"errors": 3}))
        pub.on_alarm(AlarmEvent(AlarmKind.TIMING_SHIFT, active=False))
        out, _ = await asyncio.to_thread(sub.communicate, timeout=20)
        events = [AlarmMessage.model_validate_json(line) for line in out.splitlines() if line]
        assert [(e.kind, e.active) for e in events[-2:]] == [
            (AlarmKind.QBER_HIGH, False),
            (AlarmKind.TIMING_SHIFT, False),
        ]
        assert events[-1].active_alarms == []
        await asyncio.sleep(0.3)
        retained = await asyncio.to_thread(
            mosquitto_sub, mqtt_broker, f"{TOPIC}/alarm", "--retained-only", wait_s=1
        )
        assert retained == []
    # a clean stop leaves status offline
    lines = await asyncio.to_thread(mosquitto_sub, mqtt_broker, f"{TOPIC}/status", "-C", "1")
    final = StatusMessage.model_validate_json(lines[0])
    assert (final.online, final.state) == (False, "STOPPED")
    pub.store.close()


def test_last_will_says_offline_when_the_publisher_is_killed(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    state_dir = tmp_path / "alice"
    open_node_store(state_dir, {"kms": os.urandom(32)}).close()
    spec = {
        "state_dir": str(state_dir),
        "node": "alice",
        "link": LINK,
        "slots": ["kms"],
        "keys_per_block": 2,
        "blocks": 1,
        "interval_s": 0.1,
        "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port, "keepalive_s": 5},
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.mqtt_broker", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "connected"
        assert child.stdout.readline().strip() == "committed"
        status = StatusMessage.model_validate_json(
            mosquitto_sub(mqtt_broker, f"{TOPIC}/status", "-C", "1")[0]
        )
        assert status.online and status.state == "TRANSMIT"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        for _ in range(50):
            status = StatusMessage.model_validate_json(
                mosquitto_sub(mqtt_broker, f"{TOPIC}/status", "-C", "1")[0]
            )
            if not status.online:
                break
        assert not status.online
        assert status.state == "UNKNOWN" and "Last Will" in status.reason
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


async def _command_v5(
    broker: MosquittoBroker, payload: bytes, correlation: bytes
) -> tuple[CommandReply, bytes | None]:
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="operator", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe("operator/replies", qos=1)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "operator/replies"
        props.CorrelationData = correlation
        await client.publish(f"{TOPIC}/cmd", payload, qos=1, properties=props)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                data = getattr(message.properties, "CorrelationData", None)
                return CommandReply.model_validate_json(message.payload), data
    raise AssertionError("no reply")


async def test_commands_mqtt5_replies_with_correlation_and_refusals_change_nothing(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    handled: list[CommandMessage] = []

    async def handler(command: CommandMessage) -> dict[str, Any]:
        if command.command == "recalibrate":
            raise CommandRefused("not while stopping")
        handled.append(command)
        return {"done": command.command}

    pub = make_publisher(mqtt_broker, tmp_path, command_handler=handler)
    async with running(pub):
        pause = CommandMessage(command="pause", request_id="r1")
        reply, corr = await _command_v5(mqtt_broker, pause.to_json(), b"\x01corr")
        assert reply.ok and reply.result["done"] == "pause" and corr == b"\x01corr"
        assert reply.request_id == "r1"

        status, _ = await _command_v5(mqtt_broker, CommandMessage(command="status").to_json(), b"s")
        assert status.ok and status.result["queued_keys"] == 0 and "state" in status.result

        refusals = [
            (b'{"schema":"qkdd.command/1","command":"explode","request_id":"r2"}', "malformed"),
            (b"not json at all", "malformed"),
            (b'{"schema":"qkdd.command/1","command":"pause","extra":1}', "malformed"),
            (
                CommandMessage(
                    command="eve", eve_model="intercept-resend", request_id="r3"
                ).to_json(),
                "simulation is not allowed",
            ),
            (CommandMessage(command="recalibrate").to_json(), "not while stopping"),
        ]
        for payload, expected in refusals:
            reply, _ = await _command_v5(mqtt_broker, payload, b"x")
            assert not reply.ok and expected in (reply.error or ""), reply
        assert [c.command for c in handled] == ["pause", "status"]
    pub.store.close()


async def test_commands_mqtt311_reply_on_the_reply_topic_and_eve_when_simulation_allowed(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    handled: list[CommandMessage] = []

    async def handler(command: CommandMessage) -> dict[str, Any]:
        handled.append(command)
        return {}

    pub = make_publisher(
        mqtt_broker,
        tmp_path,
        mqtt={"protocol": "3.1.1"},
        command_handler=handler,
        allow_simulated=True,
    )
    async with aiomqtt.Client(
        mqtt_broker.host, mqtt_broker.port, protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        await client.subscribe(f"{TOPIC}/cmd/reply", qos=1)
        # a retained command (it would run at every reconnect) is refused
        retained = CommandMessage(command="pause", request_id="ret").to_json()
        await client.publish(f"{TOPIC}/cmd", retained, qos=1, retain=True)
        async with running(pub):
            eve = CommandMessage(
                command="eve", eve_model="intercept-resend", eve_fraction=1.0, request_id="e1"
            )
            await client.publish(f"{TOPIC}/cmd", eve.to_json(), qos=1)
            await client.publish(f"{TOPIC}/cmd", b'{"command":"resume","request_id":7}', qos=1)
            replies: dict[str | None, CommandReply] = {}
            async with asyncio.timeout(10):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    reply = CommandReply.model_validate_json(message.payload)
                    replies[reply.request_id] = reply
                    if len(replies) == 3:
                        break
        await client.publish(f"{TOPIC}/cmd", b"", qos=1, retain=True)
    assert replies["e1"].ok
    assert not replies[None].ok and "request_id" in (replies[None].error or "")
    assert not replies["ret"].ok and "retained" in (replies["ret"].error or "")
    assert [(c.command, c.eve_model) for c in handled] == [("eve", "intercept-resend")]
    pub.store.close()


async def test_plaintext_keys_for_a_trusted_lab(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="neither loopback nor TLS"):
        MqttConfig(host="broker.lab.example", plaintext_keys=True)
    assert MqttConfig(host="::1", plaintext_keys=True).plaintext_keys

    secret = os.urandom(32)
    store = open_node_store(tmp_path / "alice", {"kms": secret})
    pub = MqttPublisher(
        mqtt_config(
            mqtt_broker, client_id="pub-alice", plaintext_keys=True, republish_interval_s=0.5
        ),
        store,
        node="alice",
        link=LINK,
        role="alice",
        slots=["kms"],
        simulated=True,
    )
    metas = commit_test_block(store, LINK, ["kms"], 0, 2)
    sub = start_mosquitto_sub(mqtt_broker, f"{TOPIC}/keys/kms", 2)
    await asyncio.sleep(0.5)
    collector = Collector()
    async with running(pub):
        out, _ = await asyncio.to_thread(sub.communicate, timeout=20)
        plain = [PlaintextKeyMessage.model_validate_json(line) for line in out.splitlines()]
        assert [bytes.fromhex(p.key_hex) for p in plain] == [
            key_material(b"qkdd-test", m.key_id, 256) for m in metas
        ]
        assert KeyStore(store).list(KeyState.COMMITTED)  # still needs an acknowledgement
        consumer = KeyConsumer(
            consumer_config(
                mqtt_broker,
                tmp_path / "c",
                node="alice",
                link=LINK,
                slot="kms",
                secret=secret,
                plaintext=True,
            ),
            collector,
        )
        async with running(consumer):
            await wait_until(lambda: pub.acks_accepted == 2)
        consumer.close()
    assert not KeyStore(store).list(KeyState.COMMITTED)
    store.close()

    # auto-ack: the broker's PUBACK counts (and the log says so)
    store = open_node_store(tmp_path / "bob", {})
    pub = MqttPublisher(
        mqtt_config(
            mqtt_broker, client_id="pub-bob", plaintext_keys=True, plaintext_keys_auto_ack=True
        ),
        store,
        node="bob",
        link=LINK,
        role="bob",
        slots=["kms"],
        simulated=True,
    )
    metas = commit_test_block(store, LINK, ["kms"], 0, 3)
    async with running(pub):
        await wait_until(lambda: not KeyStore(store).list(KeyState.COMMITTED))
    assert {m.state for m in KeyStore(store).list()} == {KeyState.DELIVERED}
    store.close()
