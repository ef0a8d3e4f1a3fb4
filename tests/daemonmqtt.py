"""Helpers for tests that run real ``qkdd run`` daemons against a real Mosquitto: a link
set up from the example configs (secrets, consumer registrations), ``qkdd consume``
consumers, commands over MQTT, retained messages and condition waits.

Used by tests/test_daemon_mqtt.py and the acceptance suite (tests/acceptance/).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, cast

import aiomqtt

from qkdd.mqtt.messages import CommandReply
from tests.daemonpair import Proc, free_port, qkdd
from tests.exampleconfigs import example_configs
from tests.mqtt_broker import MosquittoBroker

LINK = "link1"  # the example configs' link


def setup_link(
    tmp: Path,
    broker: MosquittoBroker,
    mqtt: dict[str, Any] | None = None,
    *,
    link: str = LINK,
    **overrides: Any,
) -> dict[str, Path]:
    """Secrets, the example configs pointing at ``broker`` (in ``tmp``) and a consumer
    file per end (``tmp/{role}.consumer.toml``) for the slot ``default``."""
    out = qkdd("init-secret", "--link", link, "--alice-dir", str(tmp / "alice"),
               "--bob-dir", str(tmp / "bob"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    if link != LINK:
        overrides["node"] = {**overrides.get("node", {}), "link": link}
    configs = example_configs(
        tmp,
        free_port(),
        mqtt={"host": broker.host, "port": broker.port, **(mqtt or {})},
        **overrides,
    )
    for role in ("alice", "bob"):
        out = qkdd("consumer", "add", "default", "-c", str(configs[role]),
                   "-o", str(tmp / f"{role}.consumer.toml"))  # fmt: skip
        assert out.returncode == 0, out.stderr
    return configs


class Consumed:
    """What a ``qkdd consume`` subprocess handed over (JSON lines on its stdout)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    @property
    def keys(self) -> dict[str, str]:
        return {k["key_id"]: k["key_hex"] for k in self.lines()}

    @property
    def blocks(self) -> set[int]:
        return {int(k["block"]) for k in self.lines()}

    def duplicates(self) -> dict[str, int]:
        """Key ids handed over more than once (should be none)."""
        counts = Counter(k["key_id"] for k in self.lines())
        return {k: n for k, n in counts.items() if n > 1}


def consume(tmp: Path, role: str) -> tuple[subprocess.Popen[bytes], Consumed]:
    """Start ``qkdd consume`` with ``tmp/{role}.consumer.toml`` (output appended, so a
    restarted consumer adds to the same file)."""
    out = tmp / f"{role}.consumed.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qkdd", "consume", "-c", str(tmp / f"{role}.consumer.toml")],
        stdout=out.open("ab"),
        stderr=(tmp / f"{role}.consume.log").open("ab"),
        start_new_session=True,
    )
    return proc, Consumed(out)


def consumer_proc(tmp: Path, popen: subprocess.Popen[bytes], config: Path) -> Proc:
    """A consumer wrapped as a Proc, so ``processes()`` kills it at the end."""
    return Proc("consumer", config, cast("subprocess.Popen[str]", popen), tmp / "alice.consume.log")


async def until(condition: Any, limit_s: float, *procs: Proc) -> None:
    """Poll ``condition``; fail early if a daemon in ``procs`` died, or after ``limit_s``."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        for p in procs:
            assert p.popen.poll() is None, p.log.read_text()[-3000:]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                "condition not met in time\n" + "\n".join(p.log.read_text()[-2000:] for p in procs)
            )
        await asyncio.sleep(0.2)


async def command(
    broker: MosquittoBroker, node: str, *, link: str = LINK, within_s: float = 20, **fields: Any
) -> CommandReply:
    """Send a command (MQTT 3.1.1 style: the reply comes on ``cmd/reply`` by request id)."""
    base = f"qkd/{node}/links/{link}/cmd"
    request_id = uuid.uuid4().hex
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"cmd-{request_id}") as c:
        await c.subscribe(f"{base}/reply", qos=1)
        await c.publish(base, json.dumps({"request_id": request_id, **fields}), qos=1)
        async with asyncio.timeout(within_s):
            async for message in c.messages:
                assert isinstance(message.payload, bytes)
                reply = CommandReply.model_validate_json(message.payload)
                if reply.request_id == request_id:
                    return reply
    raise AssertionError("no reply")


async def retained(broker: MosquittoBroker, topic: str) -> bytes:
    """The retained message on ``topic`` (empty when there is none)."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"r-{uuid.uuid4().hex}") as c:
        await c.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in c.messages:
                    if message.retain and isinstance(message.payload, bytes):
                        return message.payload
    return b""


def stop(*procs: Proc, within_s: float = 30) -> None:
    """SIGTERM every process, then each must exit 0 within ``within_s``."""
    for p in procs:
        if p.popen.poll() is None:
            p.signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(within_s) == 0, p.log.read_text()[-12000:]


def listed(config: Path, states: tuple[str, ...] = ("committed", "delivered")) -> set[str]:
    """Key ids in a node's store (``qkdd keys list --json``) in one of ``states``."""
    out = qkdd("keys", "list", "-c", str(config), "--json")
    assert out.returncode == 0, out.stderr
    return {k["key_id"] for k in json.loads(out.stdout)["keys"] if k["state"] in states}
