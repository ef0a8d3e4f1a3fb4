"""``qkdd consumer add``, ``qkdd consume`` (a real subprocess against a test broker) and
``qkdd schema``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from qkdd.cli import main
from qkdd.config import load_config
from qkdd.mqtt.consumer import ConsumerStore, load_consumer_config
from qkdd.mqtt.messages import PAYLOAD_MODELS, json_schemas
from qkdd.mqtt.publisher import MqttPublisher, consumer_secret_name
from qkdd.store import SecretStore, StateStore
from tests.mqtt_broker import (
    MosquittoBroker,
    commit_test_block,
    key_material,
    mqtt_config,
    running,
    wait_until,
)

REPO = Path(__file__).parent.parent


def node_config(tmp_path: Path, port: int = 1883, slots: tuple[str, ...] = ("kms", "app")) -> Path:
    data = tomllib.loads((REPO / "config" / "alice.toml").read_text())
    data["node"]["state_dir"] = str(tmp_path / "state")
    data["mqtt"] = {"host": "127.0.0.1", "port": port}
    data["consumers"] = [{"name": s} for s in slots]
    path = tmp_path / "alice.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def test_consumer_add_writes_a_private_file_and_the_daemon_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = node_config(tmp_path)
    out = tmp_path / "kms.consumer.toml"
    assert main(["consumer", "add", "kms", "-c", str(config), "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    consumer = load_consumer_config(out)
    assert (consumer.consumer.name, consumer.consumer.node, consumer.consumer.link) == (
        "kms",
        "alice",
        "link1",
    )
    secret_hex = consumer.consumer.secret.get_secret_value()
    assert secret_hex not in repr(consumer) and secret_hex not in capsys.readouterr().out
    with StateStore.open(load_config(config).node.state_dir) as store:
        found = SecretStore(store).get(consumer_secret_name("kms"))
        assert found is not None
        assert found[0] == consumer.consumer.secret_id
        assert found[1].hex() == secret_hex

    # never a second secret for a slot (keys sealed to the first would be lost), nor an
    # unknown slot, nor overwriting a file
    assert main(["consumer", "add", "kms", "-c", str(config), "-o", str(tmp_path / "b")]) == 2
    assert main(["consumer", "add", "nope", "-c", str(config), "-o", str(tmp_path / "c")]) == 2
    assert main(["consumer", "add", "app", "-c", str(config), "-o", str(out)]) == 2
    assert "no slot named 'nope'" in capsys.readouterr().err


def test_schema_prints_every_payload_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(json_schemas()))
    assert set(printed) == set(PAYLOAD_MODELS)
    assert printed["key"]["properties"]["schema"]["const"] == "qkdd.key/1"
    assert "schema" in printed["ack"]["required"]
    assert main(["schema", "alarm"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "AlarmMessage"
    assert main(["schema", "nothing"]) == 2


async def test_qkdd_consume_hands_keys_to_a_file_once(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    config_path = node_config(tmp_path, mqtt_broker.port, slots=("kms",))
    consumer_file = tmp_path / "kms.consumer.toml"
    assert main(["consumer", "add", "kms", "-c", str(config_path), "-o", str(consumer_file)]) == 0
    keys_out = tmp_path / "keys.jsonl"
    config = load_config(config_path)
    store = StateStore.open(config.node.state_dir)
    pub = MqttPublisher(
        mqtt_config(mqtt_broker, republish_interval_s=0.5),
        store,
        node="alice",
        link="link1",
        role="alice",
        slots=["kms"],
        simulated=True,
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once; no waiting on the loop)
        [
            sys.executable,
            "-m",
            "qkdd",
            "consume",
            "-c",
            str(consumer_file),
            "--output",
            f"file:{keys_out}",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        async with running(pub):
            for block in range(2):
                metas = commit_test_block(store, "link1", ["kms"], block, 3)
                pub.on_keys_committed(metas[0].block_id, metas)
            await wait_until(lambda: pub.outbox.count_queued() == 0, limit_s=30)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [json.loads(line) for line in keys_out.read_text().splitlines()]
    assert [line["key_id"] for line in lines] == [
        f"link1-b{b}-k{i}" for b in range(2) for i in range(3)
    ]
    for line in lines:
        assert bytes.fromhex(line["key_hex"]) == key_material(b"qkdd-test", line["key_id"], 256)
        assert line["simulated"] is True
    assert stat.S_IMODE(keys_out.stat().st_mode) == 0o600
    consumer = load_consumer_config(consumer_file)
    cstore = ConsumerStore(consumer.consumer.state_dir)
    assert cstore.ids() == [line["key_id"] for line in lines]
    assert cstore.pending() == []  # handed over: only tombstones remain
    cstore.close()
    assert stat.S_IMODE(os.stat(cstore.path).st_mode) == 0o600
    store.close()
