"""Making aiomqtt clients from ``[mqtt]`` settings (shared by the publisher and consumers)."""

from __future__ import annotations

import socket
import ssl

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from qkdd.mqtt.config import MqttConfig


def link_topic(mqtt: MqttConfig, node: str, link: str) -> str:
    return f"{mqtt.base_topic}/{node}/links/{link}"


def make_client(
    mqtt: MqttConfig,
    identifier: str,
    *,
    will: aiomqtt.Will | None = None,
    persistent_session: bool = False,
) -> aiomqtt.Client:
    """An aiomqtt client for ``mqtt`` (TLS with hostname checking when configured)."""
    tls_context = None
    if mqtt.tls is not None:
        tls_context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(mqtt.tls.ca_file)
        )
        if mqtt.tls.cert_file is not None:
            tls_context.load_cert_chain(
                str(mqtt.tls.cert_file),
                None if mqtt.tls.key_file is None else str(mqtt.tls.key_file),
            )
    v5 = mqtt.protocol == "5"
    properties = None
    if v5 and persistent_session:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 7 * 24 * 3600
    return aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=mqtt.username,
        password=mqtt.password_value(),
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        will=will,
        clean_session=None if v5 else not persistent_session,
        clean_start=(not persistent_session) if v5 else 3,  # 3: paho's "first only"
        keepalive=mqtt.keepalive_s,
        tls_context=tls_context,
        properties=properties,
        timeout=15,
        # Small QoS 1 messages each waiting for an answer: Nagle's algorithm plus delayed
        # ACKs would stall every round trip by ~40 ms.
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
