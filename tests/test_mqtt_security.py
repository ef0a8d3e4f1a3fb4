"""TLS, passwords and per-identity ACLs: the production example of config/mosquitto/ holds.

A consumer reads only its own slot's keys; nobody but the daemon writes its topics;
monitoring reads telemetry only; keys still arrive, sealed, for the right consumer.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pydantic import SecretStr

from qkdd.mqtt.client import broker_session, make_client
from qkdd.mqtt.config import MqttConfig
from qkdd.mqtt.consumer import KeyConsumer
from qkdd.mqtt.messages import CommandMessage, CommandReply, StatusMessage
from qkdd.mqtt.publisher import MqttPublisher
from tests.conftest import BrokerFactory
from tests.mqtt_broker import (
    Collector,
    MosquittoBroker,
    commit_test_block,
    consumer_config,
    open_node_store,
    running,
    wait_until,
)

REPO = Path(__file__).parent.parent
PRODUCTION = REPO / "config" / "mosquitto"
LINK = "link1"
TOPIC = f"qkd/alice/links/{LINK}"
SLOTS = ["kms", "app"]
IDENTITIES = ["qkdd-alice-link1", "kms-alice-link1", "app-alice-link1", "monitor", "operator"]


def production_config_template() -> str:
    """The shipped mosquitto.conf with its paths and port pointed at the test broker."""
    text = (PRODUCTION / "mosquitto.conf").read_text()
    for path, key in (
        ("/etc/mosquitto/qkdd/passwd", "passwd"),
        ("/etc/mosquitto/qkdd/acl", "acl"),
        ("/etc/mosquitto/qkdd/ca.crt", "ca"),
        ("/etc/mosquitto/qkdd/server.crt", "server_cert"),
        ("/etc/mosquitto/qkdd/server.key", "server_key"),
        ("/var/lib/mosquitto/", "data_dir"),
    ):
        assert path in text
        text = text.replace(path, "{" + key + "}" + ("/" if path.endswith("/") else ""))
    assert "listener 8883\n" in text and "log_dest stderr" in text
    text = text.replace("listener 8883\n", "listener {port} 127.0.0.1\n")
    return text.replace("log_dest stderr", "log_dest file {dir}/mosquitto.log")


class Identities:
    """MQTT settings per identity for a broker variant."""

    def __init__(self, broker: MosquittoBroker, *, passwords: bool, certs: bool) -> None:
        self.broker = broker
        self.passwords = passwords
        self.certs = certs

    def fields(self, identity: str, **extra: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"host": self.broker.host, "port": self.broker.port, **extra}
        if self.passwords:
            data |= {"username": identity, "password": f"pw-{identity}"}
        if self.broker.pki is not None:
            data["tls"] = {"ca_file": str(self.broker.pki.ca.cert)}
            if self.certs:
                pair = self.broker.pki.issue(identity)
                data["tls"] |= {"cert_file": str(pair.cert), "key_file": str(pair.key)}
        return data

    def config(self, identity: str, **extra: Any) -> MqttConfig:
        return MqttConfig.model_validate(self.fields(identity, **extra))


async def _collect(
    client: aiomqtt.Client, seconds: float, stop_after: int = 0
) -> list[tuple[str, bytes]]:
    """Messages received within ``seconds`` (or until ``stop_after`` of them arrived)."""
    seen: list[tuple[str, bytes]] = []
    with_timeout = asyncio.timeout(seconds)
    try:
        async with with_timeout:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                seen.append((message.topic.value, payload))
                if len(seen) == stop_after:
                    break
    except TimeoutError:
        pass
    return seen


async def _try_publish(config: MqttConfig, topic: str, payload: bytes, retain: bool) -> None:
    """Publish as an identity that may not: the broker drops it (and may disconnect)."""
    try:
        async with broker_session(config, f"writer-{config.username or 'cert'}") as client:
            await client.publish(topic, payload, qos=0, retain=retain)
            await asyncio.sleep(0.05)
    except aiomqtt.MqttError:
        pass


async def check_acl(tmp_path: Path, ids: Identities) -> None:
    """Keys reach the right consumer only; intruders read and write nothing they may not."""
    secrets = {slot: os.urandom(32) for slot in SLOTS}
    store = open_node_store(tmp_path / "alice", secrets)
    pub = MqttPublisher(
        ids.config("qkdd-alice-link1", client_id="qkdd-alice-link1"),
        store,
        node="alice",
        link=LINK,
        role="alice",
        slots=SLOTS,
        simulated=True,
    )
    kms = Collector()
    kms_consumer = KeyConsumer(
        consumer_config(
            ids.broker,
            tmp_path / "kms",
            node="alice",
            link=LINK,
            slot="kms",
            secret=secrets["kms"],
            **ids.fields("kms-alice-link1"),
        ),
        kms,
    )
    async with running(pub, kms_consumer):
        pub.on_status("TRANSMIT")
        # The app slot's consumer tries to read the kms slot's keys (and everything).
        async with (
            broker_session(ids.config("app-alice-link1"), "app-intruder") as app_intruder,
            broker_session(ids.config("monitor"), "monitor") as monitor,
        ):
            await app_intruder.subscribe(f"{TOPIC}/keys/kms", qos=1)
            await app_intruder.subscribe("#", qos=1)
            await monitor.subscribe(f"{TOPIC}/status", qos=1)
            await monitor.subscribe(f"{TOPIC}/keys/#", qos=1)
            # ... and both try to write the daemon's topics and the kms acknowledgements.
            forged = StatusMessage(
                node="alice",
                link=LINK,
                role="alice",
                state="FORGED",
                online=True,
                simulated=False,
                versions={},
            )
            # Mosquitto 2.0 drops a denied write (and closes an MQTT 5 writer's
            # connection), so each attempt gets its own connection.
            for identity in ("app-alice-link1", "monitor", "kms-alice-link1"):
                for topic, payload, retain in (
                    (f"{TOPIC}/status", forged.to_json(), True),
                    (f"{TOPIC}/keys/kms", b'{"schema":"qkdd.key/1"}', False),
                    (f"{TOPIC}/alarm", b"forged", True),
                ):
                    await _try_publish(ids.config(identity), topic, payload, retain)
            metas = commit_test_block(store, LINK, SLOTS, 0, 4)
            pub.on_keys_committed(metas[0].block_id, metas)
            await wait_until(lambda: len(kms.keys) == 2)
            intruder_saw, monitor_saw = await asyncio.gather(
                _collect(app_intruder, 1.5), _collect(monitor, 0.5)
            )
        assert not [t for t, _ in intruder_saw if t.startswith(f"{TOPIC}/keys/kms")]
        assert not [t for t, _ in intruder_saw if not t.startswith(f"{TOPIC}/keys/app")]
        assert not [t for t, _ in monitor_saw if "/keys/" in t]
        statuses = [StatusMessage.model_validate_json(p) for t, p in monitor_saw]
        assert statuses and all(s.state != "FORGED" for s in statuses)
        assert kms_consumer.rejected == 0  # the forged key never reached the consumer
        assert sorted(kms.keys) == sorted(m.key_id for m in metas if m.consumer_slot == "kms")

        # The operator's MQTT 5 command, replied on its own response topic.
        async with broker_session(ids.config("operator"), "operator") as operator:
            await operator.subscribe("qkd/replies/operator/1", qos=1)
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = "qkd/replies/operator/1"
            props.CorrelationData = b"c1"
            await operator.publish(
                f"{TOPIC}/cmd", CommandMessage(command="status").to_json(), qos=1, properties=props
            )
            replies = await _collect(operator, 5, stop_after=1)
        assert replies and CommandReply.model_validate_json(replies[0][1]).ok
    kms_consumer.close()
    store.close()


async def test_production_example_tls_client_certificates_passwords_and_acl(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = broker_factory(
        raw_config=production_config_template(),
        users={i: f"pw-{i}" for i in IDENTITIES},
        acl=(PRODUCTION / "acl").read_text(),
        tls_password=True,
    )
    ids = Identities(broker, passwords=True, certs=True)
    # without a client certificate, or with a wrong password, nobody gets in
    assert broker.pki is not None
    no_cert = ssl.create_default_context(cafile=str(broker.pki.ca.cert))
    no_cert.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 reports the refusal late
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            username="monitor",
            password="pw-monitor",
            tls_context=no_cert,
            timeout=5,
        ):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with broker_session(
            ids.config("monitor").model_copy(update={"password": SecretStr("wrong")}), "x"
        ):
            pass
    await check_acl(tmp_path, ids)
    assert "autosave_on_changes true" in broker.config_path.read_text()


async def test_tls_identity_from_client_certificate_with_hostname_check(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = broker_factory(tls=True, acl=(PRODUCTION / "acl").read_text())
    ids = Identities(broker, passwords=False, certs=True)
    client = make_client(ids.config("monitor"), "probe")
    context = client._client._ssl_context  # paho keeps the context it was given
    assert context is not None and context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    await check_acl(tmp_path, ids)
    # a server certificate that does not name the host is refused (hostname checking)
    other = broker_factory(tls=True, server_names=("broker.elsewhere.example",))
    assert other.pki is not None
    pair = other.pki.issue("monitor")
    wrong_name = MqttConfig.model_validate(
        {
            "host": other.host,
            "port": other.port,
            "tls": {
                "ca_file": str(other.pki.ca.cert),
                "cert_file": str(pair.cert),
                "key_file": str(pair.key),
            },
        }
    )
    with pytest.raises(aiomqtt.MqttError, match=r"match|mismatch|hostname|IP address"):
        async with broker_session(wrong_name, "x"):
            pass


async def test_password_and_acl_on_a_plain_loopback_listener(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = broker_factory(
        users={i: f"pw-{i}" for i in IDENTITIES}, acl=(PRODUCTION / "acl").read_text()
    )
    await check_acl(tmp_path, Identities(broker, passwords=True, certs=False))
