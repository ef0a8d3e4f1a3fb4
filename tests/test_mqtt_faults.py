"""Fault test: two daemons (separate processes) deliver keys while the broker is SIGKILLed and
restarted several times, a consumer is restarted and one daemon is SIGKILLed and
restarted. Afterwards every committed key reached its consumer at both ends exactly once
(as the consumers' stores show), with identical bytes at both ends, and none is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from qkdd.mqtt.consumer import ConsumerStore, KeyConsumer
from tests.mqtt_broker import (
    Collector,
    MosquittoBroker,
    consumer_config,
    key_material,
    open_node_store,
    wait_until,
)

LINK = "link1"
SLOTS = ["kms", "app"]
BLOCKS, PER_BLOCK = 12, 4
REPO = Path(__file__).parent.parent


class Daemon:
    """A publisher child process committing deterministic keys (tests/mqtt_broker.py)."""

    def __init__(self, broker: MosquittoBroker, state_dir: Path, node: str) -> None:
        self.spec = {
            "state_dir": str(state_dir),
            "node": node,
            "role": "alice" if node == "alice" else "bob",
            "link": LINK,
            "slots": SLOTS,
            "keys_per_block": PER_BLOCK,
            "blocks": BLOCKS,
            "interval_s": 0.25,
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "client_id": f"qkdd-{node}",
                "republish_interval_s": 1.0,
            },
        }
        self.state_dir = state_dir
        self.log = state_dir.parent / f"{node}.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.mqtt_broker", json.dumps(self.spec)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=REPO,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def queued(self) -> int:
        """Undelivered keys (committed without a message, or queued), read beside the daemon."""
        conn = sqlite3.connect(f"file:{self.state_dir / 'qkdd-state.sqlite3'}?mode=ro", uri=True)
        try:
            committed = conn.execute("SELECT count(*) FROM keys WHERE state != 'delivered'")
            return int(committed.fetchone()[0])
        finally:
            conn.close()

    def delivered(self) -> int:
        conn = sqlite3.connect(f"file:{self.state_dir / 'qkdd-state.sqlite3'}?mode=ro", uri=True)
        try:
            return int(
                conn.execute("SELECT count(*) FROM keys WHERE state = 'delivered'").fetchone()[0]
            )
        finally:
            conn.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_every_key_delivered_exactly_once_through_broker_daemon_and_consumer_crashes(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    daemons, consumers, collectors = {}, {}, {}
    configs = {}
    for node in ("alice", "bob"):
        secrets = {slot: os.urandom(32) for slot in SLOTS}
        open_node_store(tmp_path / node, secrets).close()
        daemons[node] = Daemon(mqtt_broker, tmp_path / node, node)
        for slot in SLOTS:
            configs[node, slot] = consumer_config(
                mqtt_broker,
                tmp_path / f"{node}-{slot}",
                node=node,
                link=LINK,
                slot=slot,
                secret=secrets[slot],
            )
            collectors[node, slot] = Collector()
    tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def start_consumer(name: tuple[str, str]) -> None:
        consumers[name] = KeyConsumer(configs[name], collectors[name])
        tasks[name] = asyncio.create_task(consumers[name].run())

    async def stop_consumer(name: tuple[str, str]) -> None:
        await consumers[name].stop()
        await asyncio.wait_for(tasks[name], timeout=20)
        consumers[name].close()

    for name in configs:
        start_consumer(name)
    for daemon in daemons.values():
        daemon.start()
    try:
        await asyncio.sleep(1.0)
        for round_ in range(4):
            mqtt_broker.kill()  # SIGKILL: whatever it had not saved is gone
            await asyncio.sleep(0.4)
            mqtt_broker.start()
            await asyncio.sleep(0.8)
            if round_ == 0:
                daemons["alice"].kill()  # SIGKILL mid-run
                await asyncio.sleep(0.3)
                daemons["alice"].start()
            if round_ == 1:
                await stop_consumer(("bob", "kms"))
                await asyncio.sleep(0.5)
                start_consumer(("bob", "kms"))
        expected = {f"{LINK}-b{b}-k{i}" for b in range(BLOCKS) for i in range(PER_BLOCK)}
        for node, daemon in daemons.items():
            await wait_until(lambda d=daemon: d.delivered() == len(expected), limit_s=120)
            assert daemon.queued() == 0, node
    finally:
        for daemon in daemons.values():
            daemon.kill()
        for name in list(consumers):
            await stop_consumer(name)

    for slot in SLOTS:
        slot_ids = {
            k for k in expected if int(k.rsplit("k", 1)[1]) % len(SLOTS) == SLOTS.index(slot)
        }
        for node in daemons:
            collector = collectors[node, slot]
            # the consumer's store: each key exactly once, none missing
            store = ConsumerStore(configs[node, slot].consumer.state_dir)
            assert sorted(store.ids()) == sorted(slot_ids)
            assert store.pending() == []
            store.close()
            # handed over once each, across the consumer's restart
            assert sorted(collector.handed) == sorted(slot_ids)
            assert all(collector.keys[k] == key_material(b"qkdd-fault", k, 256) for k in slot_ids)
        assert collectors["alice", slot].keys == collectors["bob", slot].keys
    duplicates = sum(c.duplicates for c in consumers.values())
    print(f"duplicates dropped by tombstones (last consumer runs): {duplicates}")
