"""The daemon wired to MQTT: two real ``qkdd run`` processes, a real Mosquitto and the
reference consumer library at each end.

Identical keys reach the consumers at both ends; ``intercept-resend`` switched on over
the MQTT command topic raises ``qber_high`` (retained on the alarm topic) and nothing of
the attacked block is delivered; switched off, keys resume.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from qkdd.mqtt.messages import AlarmMessage, StatusMessage
from tests.daemonmqtt import LINK, command, consume, consumer_proc, retained, setup_link, until
from tests.daemonpair import processes, qkdd, start
from tests.mqtt_broker import MosquittoBroker


@pytest.mark.acceptance
@pytest.mark.timeout(900)
async def test_daemons_deliver_identical_keys_and_alarm_over_mqtt(
    tmp_path: Path, mqtt_broker: MosquittoBroker
) -> None:
    configs = setup_link(tmp_path, mqtt_broker)
    with processes() as procs:
        alice = start("alice", configs["alice"], tmp_path)
        bob = start("bob", configs["bob"], tmp_path)
        procs += [alice, bob]
        ca, a = consume(tmp_path, "alice")
        cb, b = consume(tmp_path, "bob")
        for c in (ca, cb):
            procs.append(consumer_proc(tmp_path, c, configs["alice"]))
        # Keys at both ends: the same ids with identical bytes.
        await until(lambda: len(set(a.keys) & set(b.keys)) >= 2, 180, alice, bob)
        ka, kb = a.keys, b.keys
        assert all(ka[k] == kb[k] for k in set(ka) & set(kb))
        status = StatusMessage.model_validate_json(
            await retained(mqtt_broker, f"qkd/alice/links/{LINK}/status")
        )
        assert status.online and status.simulated and status.role == "alice"

        # Eve over MQTT: refused at Alice (the light is at Bob), done at Bob.
        refused = await command(mqtt_broker, "alice", command="eve", eve_model="intercept-resend")
        assert not refused.ok and "Bob" in (refused.error or "")
        reply = await command(
            mqtt_broker, "bob", command="eve", eve_model="intercept-resend", eve_fraction=1.0
        )
        assert reply.ok, reply.error

        async def alarm_of(node: str) -> AlarmMessage | None:
            raw = await retained(mqtt_broker, f"qkd/{node}/links/{LINK}/alarm")
            return AlarmMessage.model_validate_json(raw) if raw else None

        alarms: dict[str, AlarmMessage] = {}

        async def poll_alarms() -> None:
            for node in ("alice", "bob"):
                msg = await alarm_of(node)
                if msg and any(x.kind == "qber_high" for x in msg.active_alarms):
                    alarms[node] = msg

        # Within the first alarm window of the attack; generous for a loaded CI machine.
        deadline = asyncio.get_running_loop().time() + 300
        while len(alarms) < 2:
            assert asyncio.get_running_loop().time() < deadline, alice.log.read_text()[-3000:]
            await poll_alarms()
            await asyncio.sleep(0.5)
        attacked = {
            int(x.values.get("block_id", -1))
            for msg in alarms.values()
            for x in msg.active_alarms
            if x.kind == "qber_high"
        }
        assert all(
            x.level == "abort" for m in alarms.values() for x in m.active_alarms
            if x.kind == "qber_high"
        )  # fmt: skip
        # A few more seconds: nothing of an attacked block reaches a consumer (nor is
        # it committed at either end).
        await asyncio.sleep(3)
        assert not attacked & (a.blocks | b.blocks)
        for role in ("alice", "bob"):
            listed = json.loads(qkdd("keys", "list", "-c", str(configs[role]), "--json").stdout)
            assert not attacked & {int(k["block"]) for k in listed["keys"]}

        # Eve off: the alarm clears and keys resume.
        reply = await command(mqtt_broker, "bob", command="eve", eve_model="off")
        assert reply.ok, reply.error
        seen = set(a.keys) | set(b.keys)
        await until(lambda: len((set(a.keys) & set(b.keys)) - seen) >= 1, 240, alice, bob)
        ka, kb = a.keys, b.keys
        assert all(ka[k] == kb[k] for k in set(ka) & set(kb))
        assert not await retained(mqtt_broker, f"qkd/alice/links/{LINK}/alarm") or not any(
            x.kind == "qber_high"
            for x in AlarmMessage.model_validate_json(
                await retained(mqtt_broker, f"qkd/alice/links/{LINK}/alarm")
            ).active_alarms
        )
        # Pause at Alice (the coordinator): no block starts; resume: keys again.
        refused = await command(mqtt_broker, "bob", command="pause")
        assert not refused.ok and "Alice" in (refused.error or "")
        reply = await command(mqtt_broker, "alice", command="pause")
        assert reply.ok, reply.error

        async def state_of(node: str) -> str:
            raw = await retained(mqtt_broker, f"qkd/{node}/links/{LINK}/status")
            return StatusMessage.model_validate_json(raw).state if raw else "?"

        deadline = asyncio.get_running_loop().time() + 120
        while await state_of("alice") != "PAUSED":
            assert asyncio.get_running_loop().time() < deadline, alice.log.read_text()[-3000:]
            await asyncio.sleep(0.5)

        def listed(role: str) -> set[str]:
            out = qkdd("keys", "list", "-c", str(configs[role]), "--json")
            keys = json.loads(out.stdout)["keys"]
            return {k["key_id"] for k in keys if k["state"] in ("committed", "delivered")}

        # PAUSED is entered only between blocks, so the stores are final; wait (on a
        # loaded machine this takes a while) until every stored key reached its consumer.
        stored = listed("alice") | listed("bob")
        try:
            await until(lambda: stored <= (set(a.keys) | set(b.keys)), 180, alice, bob)
        except AssertionError:
            missing = stored - set(a.keys) - set(b.keys)
            raise AssertionError(
                f"{len(missing)} of {len(stored)} stored keys not delivered"
            ) from None
        paused = set(a.keys) | set(b.keys)
        await asyncio.sleep(5)
        assert listed("alice") | listed("bob") == stored, "a block was committed while paused"
        assert (set(a.keys) | set(b.keys)) == paused
        status = await command(mqtt_broker, "alice", command="status")
        assert status.ok and status.result["link"]["paused"] == ["command"]
        reply = await command(mqtt_broker, "alice", command="resume")
        assert reply.ok, reply.error
        await until(lambda: len((set(a.keys) & set(b.keys)) - paused) >= 1, 240, alice, bob)
        # Recalibrate (Alice, between blocks; Bob follows her calibration frame); keys go on.
        reply = await command(mqtt_broker, "alice", command="recalibrate")
        assert reply.ok, reply.error
        await until(lambda: "Alice recalibrates" in bob.log.read_text(), 240, alice, bob)
        before = set(a.keys) & set(b.keys)
        await until(lambda: len((set(a.keys) & set(b.keys)) - before) >= 1, 240, alice, bob)
        ka, kb = a.keys, b.keys
        assert all(ka[k] == kb[k] for k in set(ka) & set(kb))
    # (SIGTERM and a clean exit are tested in test_daemon.py; here the fixture kills.)
    print(f"keys delivered: alice {len(a.keys)}, bob {len(b.keys)}")


@pytest.mark.acceptance
@pytest.mark.timeout(900)
async def test_a_full_outbox_pauses_production_and_loses_nothing(
    tmp_path: Path, mqtt_broker: MosquittoBroker
) -> None:
    """No consumer yet: the first block fills the outbox past its limit, ``store_full``
    is raised and Alice pauses; nothing more is committed. Consumers start: every
    stored key reaches them, the warning clears and key production resumes."""
    configs = setup_link(tmp_path, mqtt_broker, mqtt={"outbox_limit": 20})  # one block fills it

    def listed(role: str) -> set[str]:
        out = qkdd("keys", "list", "-c", str(configs[role]), "--json")
        keys = json.loads(out.stdout)["keys"]
        return {k["key_id"] for k in keys if k["state"] in ("committed", "delivered")}

    async def store_full_at(node: str) -> bool:
        raw = await retained(mqtt_broker, f"qkd/{node}/links/{LINK}/alarm")
        return bool(raw) and any(
            x.kind == "store_full" for x in AlarmMessage.model_validate_json(raw).active_alarms
        )

    with processes() as procs:
        alice = start("alice", configs["alice"], tmp_path)
        bob = start("bob", configs["bob"], tmp_path)
        procs += [alice, bob]
        deadline = asyncio.get_running_loop().time() + 300
        while not (await store_full_at("alice") and "PAUSED" in alice.log.read_text()):
            assert asyncio.get_running_loop().time() < deadline, alice.log.read_text()[-3000:]
            await asyncio.sleep(1)
        stored = listed("alice") | listed("bob")
        assert len(stored) > 20
        await asyncio.sleep(5)
        assert listed("alice") | listed("bob") == stored, "a block was committed while full"

        ca, a = consume(tmp_path, "alice")
        cb, b = consume(tmp_path, "bob")
        for c in (ca, cb):
            procs.append(consumer_proc(tmp_path, c, configs["alice"]))
        await until(lambda: stored <= set(a.keys) and stored <= set(b.keys), 240, alice, bob)
        await until(lambda: bool((set(a.keys) & set(b.keys)) - stored), 300, alice, bob)
        ka, kb = a.keys, b.keys
        assert all(ka[k] == kb[k] for k in set(ka) & set(kb))
        assert not await store_full_at("alice") or len(a.keys) > 20
