"""Acceptance: a real Mosquitto, two ``qkdd run`` daemons from the example configs, a
``mosquitto_sub`` reading telemetry and ``qkdd consume`` consumers at both ends.

Each test prints its figures (keys per minute, alarm latency, shutdown time) through
the ``figures`` fixture, which repeats them in the run's summary."""

from __future__ import annotations

import base64
import datetime as dt
import json
import signal
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.acceptance.conftest import Report
from tests.acceptance.telemetry import Telemetry
from tests.daemonmqtt import (
    LINK,
    Consumed,
    command,
    consume,
    consumer_proc,
    listed,
    retained,
    setup_link,
    stop,
    until,
)
from tests.daemonpair import Proc, keys_json, processes, qkdd, start, wait_for
from tests.exampleconfigs import example_configs
from tests.mqtt_broker import MosquittoBroker

pytestmark = [pytest.mark.acceptance, pytest.mark.timeout(900)]

# Deadlines are generous: CI machines are loaded (2 cores for everything).
FIRST_KEYS_S = 300
MORE_KEYS_S = 300


@dataclass
class Link:
    tmp: Path
    configs: dict[str, Path]
    procs: list[Proc]
    alice: Proc
    bob: Proc
    a: Consumed
    b: Consumed

    def common(self) -> set[str]:
        return set(self.a.keys) & set(self.b.keys)

    def assert_identical(self) -> None:
        ka, kb = self.a.keys, self.b.keys
        assert all(ka[k] == kb[k] for k in set(ka) & set(kb))

    def restart(self, role: str) -> Proc:
        proc = start(role, self.configs[role], self.tmp)
        self.procs.append(proc)
        setattr(self, role, proc)
        return proc


@pytest.fixture
def link(tmp_path: Path, mqtt_broker: MosquittoBroker, telemetry: Telemetry) -> Iterator[Link]:
    """The example link running, with a consumer at each end."""
    yield from _running_link(tmp_path, mqtt_broker)


@pytest.fixture
def link_of_large_keys(
    tmp_path: Path, mqtt_broker: MosquittoBroker, telemetry: Telemetry
) -> Iterator[Link]:
    """The example link with keys of 2048 bits: the same secret bits in an eighth of the
    messages, so a backlog built up while the broker is away drains in minutes, not
    tens of minutes, on a loaded CI machine."""
    yield from _running_link(tmp_path, mqtt_broker, protocol={"key_size_bits": 2048})


def _running_link(tmp_path: Path, mqtt_broker: MosquittoBroker, **overrides: Any) -> Iterator[Link]:
    configs = setup_link(tmp_path, mqtt_broker, **overrides)
    with processes() as procs:
        alice = start("alice", configs["alice"], tmp_path)
        bob = start("bob", configs["bob"], tmp_path)
        procs += [alice, bob]
        ca, a = consume(tmp_path, "alice")
        cb, b = consume(tmp_path, "bob")
        procs += [consumer_proc(tmp_path, c, configs["alice"]) for c in (ca, cb)]
        yield Link(tmp_path, configs, procs, alice, bob, a, b)


def _revealed(config: Path) -> dict[str, str]:
    """Material (hex) of the keys a node still holds, by id (delivered keys are erased)."""
    return {
        k["key_id"]: base64.b64decode(k["key"]).hex()
        for k in keys_json(config)["keys"]
        if "key" in k
    }


def _broker_sessions(proc: Proc) -> int:
    """How often a daemon has connected to the broker so far (from its log)."""
    return sum(r.get("event") == "connected to broker" for r in proc.log_lines())


def _utc(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp()


def _metadata(config: Path, *states: str) -> dict[str, tuple[int, int]]:
    """(bits, block) by key id, of the keys in ``states`` (every key when none given)."""
    return {
        k["key_id"]: (k["bits"], k["block"])
        for k in keys_json(config, False)["keys"]
        if not states or k["state"] in states
    }


async def test_identical_keys_at_both_ends(
    link: Link, telemetry: Telemetry, figures: Report
) -> None:
    await until(lambda: len(link.common()) >= 1, FIRST_KEYS_S, link.alice, link.bob)
    t_first, n_first = time.monotonic(), len(link.common())
    first_blocks = link.a.blocks & link.b.blocks
    # Measure over two more blocks.
    await until(
        lambda: len((link.a.blocks & link.b.blocks) - first_blocks) >= 2,
        MORE_KEYS_S,
        link.alice,
        link.bob,
    )
    elapsed = time.monotonic() - t_first
    n_end = len(link.common())
    link.assert_identical()
    per_minute = (n_end - n_first) / elapsed * 60
    bits = sum(int(k["bits"]) for k in link.a.lines())
    figures(
        f"keys per minute: {per_minute:.1f} ({n_end - n_first} keys of "
        f"{bits // max(1, len(link.a.lines()))} bits in {elapsed:.1f} s, after the first block)"
    )
    # Consumers stop: the next block stays in the stores, with its material.
    for p in link.procs[2:]:
        p.signal(signal.SIGTERM)
    for p in link.procs[2:]:
        p.wait(30)
    delivered = set(link.a.keys)

    def held_at_both() -> bool:
        return bool(set(_revealed(link.configs["alice"])) & set(_revealed(link.configs["bob"])))

    await until(held_at_both, MORE_KEYS_S, link.alice, link.bob)
    stop(link.alice, link.bob)
    # `keys list --reveal --json`: the same keys (ids, bits, blocks) at both ends, the
    # same material where it is still held; consumers at both ends saw the same bytes.
    # (Which keys are still held differs per end: each end erases what its own consumer
    # acknowledged.)
    ra, rb = _revealed(link.configs["alice"]), _revealed(link.configs["bob"])
    held = set(ra) & set(rb)
    assert held and all(ra[k] == rb[k] for k in held)
    # A stop can fall inside the two-phase commit. Alice never keeps a block pending
    # (stopping, she aborts what she has not decided); Bob keeps the one he voted yes
    # on until the next handshake gives him Alice's decision (a commit record, or none:
    # abort), which tests/integration checks. Every other key is settled alike.
    alice, bob = (link.configs[r] for r in ("alice", "bob"))
    assert _metadata(alice, "pending") == {}
    voted = _metadata(bob, "pending")
    in_doubt = {block for _, block in voted.values()}
    assert len(in_doubt) <= 1, in_doubt
    settled = {c: _metadata(c, "committed", "delivered") for c in (alice, bob)}
    decided = {k: v for k, v in settled[alice].items() if v[1] in in_doubt}
    assert decided in ({}, voted)
    assert {k: v for k, v in settled[alice].items() if v[1] not in in_doubt} == settled[bob]
    assert delivered <= set(settled[alice])
    link.assert_identical()
    # mosquitto_sub saw both nodes online and per-frame QBER.
    for node in ("alice", "bob"):
        assert any(m.payload["online"] for m in telemetry.messages("status", node))
    qber = telemetry.messages("qber")
    assert qber
    figures(
        f"telemetry: {len(qber)} qber messages, "
        f"{len(telemetry.messages('status'))} status messages; "
        f"keys held at both ends compared: {len(held)}"
    )


async def test_eavesdropper_raises_qber_high_and_no_attacked_key(
    link: Link, mqtt_broker: MosquittoBroker, telemetry: Telemetry, figures: Report
) -> None:
    await until(lambda: len(link.common()) >= 1, FIRST_KEYS_S, link.alice, link.bob)
    reply = await command(
        mqtt_broker, "bob", command="eve", eve_model="intercept-resend", eve_fraction=1.0
    )
    t_reply = time.time()
    assert reply.ok, reply.error
    await until(
        lambda: (
            bool(telemetry.alarms("alice", "qber_high"))
            and bool(telemetry.alarms("bob", "qber_high"))
        ),
        300,
        link.alice,
        link.bob,
    )
    attacked: set[int] = set()
    for node in ("alice", "bob"):
        alarm = telemetry.alarms(node, "qber_high")[0]
        active = [a for a in alarm.payload["active_alarms"] if a["kind"] == "qber_high"]
        assert all(a["level"] == "abort" for a in active)
        attacked |= {int(a["values"]["block_id"]) for a in active if "block_id" in a["values"]}
        # The daemon's own clock (payload ``time``) next to the subscriber's arrival time.
        raised = _utc(alarm.payload["time"])
        frames = [
            m.payload["frame"]
            for m in telemetry.messages("qber", node)
            if t_reply <= _utc(m.payload["time"]) <= raised
        ]
        figures(
            f"qber_high at {node}: seen by mosquitto_sub {alarm.time - t_reply:.2f} s after "
            f"the command reply (raised by the daemon after {raised - t_reply:.2f} s, "
            f"{len(frames)} frames of {node}'s QBER telemetry in between)"
        )
    assert attacked, "the alarm names the attacked block"
    # Nothing of the attacked block is committed at either end or delivered: wait until
    # the node has moved past it (a later block started, or a few seconds more).
    wait_for(lambda: False, 3)
    for role in ("alice", "bob"):
        blocks = {b for _, b in _metadata(link.configs[role]).values()}
        assert not attacked & blocks, role
    assert not attacked & (link.a.blocks | link.b.blocks)
    figures(f"attacked block(s) {sorted(attacked)}: no key at either end")


async def test_broker_killed_twice_loses_no_key(
    link_of_large_keys: Link, mqtt_broker: MosquittoBroker, figures: Report
) -> None:
    link = link_of_large_keys
    await until(lambda: len(link.common()) >= 1, FIRST_KEYS_S, link.alice, link.bob)
    for round_ in (1, 2):
        before = listed(link.configs["alice"])
        mqtt_broker.kill()
        # A block is committed while the broker is away: its keys wait in the outboxes.
        await until(
            lambda b=before: bool(listed(link.configs["alice"]) - b),
            MORE_KEYS_S,
            link.alice,
            link.bob,
        )
        sessions = {p.role: _broker_sessions(p) for p in (link.alice, link.bob)}
        mqtt_broker.start()  # same port, same persistence directory
        seen = link.common()
        await until(lambda s=seen: bool(link.common() - s), MORE_KEYS_S, link.alice, link.bob)
        # Consumers can get keys the broker kept before a daemon is back (its reconnect
        # backs off up to 30 s); a command sent before then reaches no one.
        await until(
            lambda n=sessions: all(_broker_sessions(p) > n[p.role] for p in (link.alice, link.bob)),
            MORE_KEYS_S,
            link.alice,
            link.bob,
        )
        figures(f"broker restart {round_}: keys flow again ({len(link.common())} at both ends)")
    # Pause Alice (between blocks): the stores are final; then every committed key
    # reaches its consumer, exactly once.
    reply = await command(mqtt_broker, "alice", command="pause", within_s=120)
    assert reply.ok, reply.error
    await until(lambda: "PAUSED" in link.alice.log.read_text(), MORE_KEYS_S, link.alice)
    stored = {r: listed(link.configs[r]) for r in ("alice", "bob")}
    await until(
        lambda: stored["alice"] <= set(link.a.keys) and stored["bob"] <= set(link.b.keys),
        MORE_KEYS_S,
        link.alice,
        link.bob,
    )
    assert link.a.duplicates() == {} and link.b.duplicates() == {}
    assert stored["alice"] == stored["bob"]
    link.assert_identical()
    figures(f"after 2 broker crashes: {len(stored['alice'])} keys, each delivered once per end")


async def test_peer_restart_resumes_with_identical_keys(link: Link, figures: Report) -> None:
    await until(lambda: len(link.common()) >= 1, FIRST_KEYS_S, link.alice, link.bob)
    t0 = time.monotonic()
    link.bob.signal(signal.SIGTERM)
    assert link.bob.wait(30) == 0
    seen = link.common()
    link.restart("bob")
    await until(lambda: bool(link.common() - seen), MORE_KEYS_S, link.alice, link.bob)
    link.assert_identical()
    figures(
        f"Bob restarted: new identical keys {time.monotonic() - t0:.1f} s after his SIGTERM "
        f"({len(link.common() - seen)} new)"
    )


async def test_sighup_reports_ignored_and_sigterm_goes_offline(
    tmp_path: Path, mqtt_broker: MosquittoBroker, telemetry: Telemetry, figures: Report
) -> None:
    configs = setup_link(tmp_path, mqtt_broker)
    with processes() as procs:
        alice = start("alice", configs["alice"], tmp_path)
        bob = start("bob", configs["bob"], tmp_path)
        procs += [alice, bob]

        def online(node: str) -> bool:
            status = telemetry.last_status(node, LINK)
            return bool(status and status["online"] and status["state"] != "STARTING")

        await until(lambda: online("alice") and online("bob"), 120, alice, bob)
        # SIGHUP after editing a protocol parameter and the log level.
        data = tomllib.loads(configs["alice"].read_text())
        data["protocol"]["block_pulses"] = 2 * int(data["protocol"]["block_pulses"])
        data["logging"]["level"] = "debug"
        configs["alice"].write_text(tomli_w.dumps(data))
        alice.signal(signal.SIGHUP)

        def reloaded() -> list[dict[str, object]]:
            return [r for r in alice.log_lines() if r.get("event") == "configuration reloaded"]

        await until(lambda: bool(reloaded()), 60, alice)
        assert "protocol" in reloaded()[0]["ignored_changes"]  # type: ignore[operator]
        assert reloaded()[0]["applied"] == "logging"
        status = qkdd("status", "-c", str(configs["alice"]), "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert alice.popen.poll() is None
        figures(f"SIGHUP: {reloaded()[0]['event']}, ignored {reloaded()[0]['ignored_changes']}")
        # SIGTERM: exit 0 within a few seconds, retained status offline.
        t0 = time.monotonic()
        for p in (alice, bob):
            p.signal(signal.SIGTERM)
        codes = {p.role: p.wait(30) for p in (alice, bob)}
        took = time.monotonic() - t0
    figures(f"SIGTERM: exit codes {codes} after {took:.1f} s")
    assert codes == {"alice": 0, "bob": 0}
    assert took < 15, f"shutdown took {took:.1f} s"
    await until(
        lambda: all(
            (s := telemetry.last_status(n, LINK)) is not None and not s["online"]
            for n in ("alice", "bob")
        ),
        30,
    )
    for node in ("alice", "bob"):
        # A fresh subscriber gets the retained offline status.
        raw = await retained(mqtt_broker, f"qkd/{node}/links/{LINK}/status")
        assert raw and json.loads(raw)["online"] is False, raw
    status = qkdd("status", "-c", str(configs["alice"]), "--json")
    assert status.returncode == 3
    figures("SIGTERM: retained status online=false at both ends")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("protocol", "block_pulses", "many"), ("peer", "prot", 47700)],
)
def test_bad_config_exits_2_naming_file_and_key(
    tmp_path: Path, section: str, key: str, value: object
) -> None:
    configs = example_configs(tmp_path, 47700, **{section: {key: value}})
    out = qkdd("run", "-c", str(configs["alice"]), timeout=60)
    assert out.returncode == 2, out
    assert str(configs["alice"]) in out.stderr and f"{section}.{key}" in out.stderr, out.stderr
