"""Making aiomqtt clients from ``[mqtt]`` settings (shared by the publisher and consumers)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from qkdd.logging import get_logger
from qkdd.mqtt.config import MqttConfig

_log = get_logger("mqtt")


#: QoS 1 messages a publisher or consumer keeps awaiting their PUBACK at once (key
#: batches, acknowledgements). 32 was no faster than 8 through Mosquitto on two cores
#: (benchmarks/bench_delivery.py: 104–114 against 114–140 keys/s, and the bare
#: round-trip baseline slower still), so 8.
IN_FLIGHT = 8


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


#: How long a graceful disconnect may wait for the broker's side. aiomqtt waits its
#: whole operation timeout (15 s) for a broker that stopped reading, which a stopping
#: daemon would add to every other bounded step of its shutdown.
DISCONNECT_TIMEOUT_S = 5.0


@contextlib.asynccontextmanager
async def broker_session(
    mqtt: MqttConfig,
    identifier: str,
    *,
    will: aiomqtt.Will | None = None,
    persistent_session: bool = False,
    disconnect_timeout_s: float = DISCONNECT_TIMEOUT_S,
) -> AsyncIterator[aiomqtt.Client]:
    """One connection to the broker (:func:`make_client`), whose disconnect on leaving
    is bounded: after ``disconnect_timeout_s`` the connection is abandoned (logged) and
    the caller goes on."""
    client = make_client(mqtt, identifier, will=will, persistent_session=persistent_session)
    await client.__aenter__()
    try:
        yield client
    except BaseException as exc:
        await _leave(client, identifier, disconnect_timeout_s, exc)
        raise
    await _leave(client, identifier, disconnect_timeout_s, None)


async def _leave(
    client: aiomqtt.Client, identifier: str, timeout_s: float, exc: BaseException | None
) -> None:
    try:
        await asyncio.wait_for(
            client.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None),
            timeout_s,
        )
    except TimeoutError:
        _log.warning(
            "broker did not confirm the disconnect; connection abandoned",
            client=identifier,
            waited_s=timeout_s,
        )
    except aiomqtt.MqttError as error:
        if exc is None:
            raise
        _log.debug("disconnect failed after an error", client=identifier, error=str(error))


async def keep_connected(
    session: Callable[[], Awaitable[None]],
    *,
    stop: asyncio.Event,
    connected: asyncio.Event,
    backoff: tuple[float, float] = (0.5, 30.0),
) -> None:
    """Run ``session`` (one broker connection) until it returns or ``stop`` is set; a
    lost connection is retried after a jittered, doubling delay that starts again from
    the shortest once a session got connected."""
    delay = backoff[0]
    while not stop.is_set():
        try:
            await session()
            return
        except aiomqtt.MqttError as exc:
            if connected.is_set():
                delay = backoff[0]
            _log.warning("broker connection lost", error=str(exc), retry_s=round(delay, 2))
        connected.clear()
        with contextlib.suppress(TimeoutError):
            # Jitter: many clients of one restarted broker must not reconnect in step.
            await asyncio.wait_for(stop.wait(), delay * (1 + 0.25 * random.random()))
        delay = min(delay * 2, backoff[1])
