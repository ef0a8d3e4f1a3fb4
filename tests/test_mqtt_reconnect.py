"""The one reconnect loop of the publisher and the consumer: back-off that doubles while
the broker is away, starts again from the shortest once a session got connected, and
ends promptly on stop."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiomqtt
from structlog.testing import capture_logs

from qkdd.mqtt.client import broker_session, keep_connected
from qkdd.mqtt.config import MqttConfig


async def test_back_off_doubles_then_resets_after_a_connected_session() -> None:
    stop, connected = asyncio.Event(), asyncio.Event()
    starts: list[float] = []
    # Three refusals, one session that connects and then drops, one refusal, success.
    plan = ["refuse", "refuse", "refuse", "drop", "refuse", "ok"]

    async def session() -> None:
        starts.append(time.monotonic())
        step = plan.pop(0)
        if step == "drop":
            connected.set()
            raise aiomqtt.MqttError("connection lost")
        if step == "refuse":
            raise aiomqtt.MqttError("connection refused")

    with capture_logs() as logs:
        await keep_connected(session, stop=stop, connected=connected, backoff=(0.05, 1.0))
    assert not plan and not connected.is_set()
    # The delays announced (the waits are these times 1–1.25 for jitter): doubling,
    # then back to the shortest after the session that connected.
    waits = [e["retry_s"] for e in logs if e["event"] == "broker connection lost"]
    assert waits == [0.05, 0.1, 0.2, 0.05, 0.1]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(g >= w for g, w in zip(gaps, waits, strict=True))


async def test_stop_ends_the_wait_at_once() -> None:
    stop, connected = asyncio.Event(), asyncio.Event()

    async def session() -> None:
        raise aiomqtt.MqttError("no broker")

    task = asyncio.create_task(
        keep_connected(session, stop=stop, connected=connected, backoff=(30.0, 30.0))
    )
    await asyncio.sleep(0.05)
    began = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - began < 1


async def test_disconnect_from_a_broker_that_stopped_reading_is_bounded() -> None:
    """aiomqtt waits 15 s (its operation timeout) for its DISCONNECT to go out; a
    broker that accepted the connection and then stopped reading must not hold the
    caller (a stopping daemon) beyond the bound."""
    stalled = asyncio.Event()

    async def silent_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(2)  # CONNECT: fixed header, then its body
        length, shift, byte = header[1] & 0x7F, 7, header[1]
        while byte & 0x80:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
        await reader.readexactly(length)
        writer.write(bytes([0x20, 0x03, 0x00, 0x00, 0x00]))  # MQTT 5 CONNACK: accepted
        await writer.drain()
        stalled.set()
        await asyncio.sleep(3600)  # never reads again: the client's writes back up

    server = await asyncio.start_server(silent_broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mqtt = MqttConfig(host="127.0.0.1", port=port)
    began = 0.0
    with capture_logs() as logs:
        async with broker_session(mqtt, "stalled", disconnect_timeout_s=1.0) as client:
            await stalled.wait()
            # Publish until one cannot be written any more: the socket buffers are full.
            for _ in range(256):
                try:
                    await client.publish("t", b"x" * 262_144, qos=0, timeout=0.5)
                except aiomqtt.MqttError:
                    break
            else:
                raise AssertionError("the broker's socket never filled")
            began = time.monotonic()
    took = time.monotonic() - began
    server.close()
    assert took < 3, f"disconnect took {took:.1f} s"
    assert any(e["event"].startswith("broker did not confirm the disconnect") for e in logs)
