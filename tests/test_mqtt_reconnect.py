"""The one reconnect loop of the publisher and the consumer: back-off that doubles while
the broker is away, starts again from the shortest once a session got connected, and
ends promptly on stop."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiomqtt
from structlog.testing import capture_logs

from qkdd.mqtt.client import keep_connected


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
