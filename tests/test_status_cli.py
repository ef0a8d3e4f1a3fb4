"""``qkdd status`` and the metrics against two real ``qkdd run`` processes from the example
configs: running (exit 0, readable and JSON), the textfile and /metrics scraped over real
HTTP, no key material anywhere, then killed (exit 3, "not running (last seen …)")."""

from __future__ import annotations

import base64
import json
import re
import signal
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w

from qkdd.health import HEALTH_FILE
from tests.daemonpair import Proc, free_port, keys_json, processes, qkdd, start, wait_for
from tests.exampleconfigs import example_configs
from tests.mqtt_broker import MosquittoBroker
from tests.promtext import parse

LINK = "link1"


def _status_json(config: Path) -> tuple[int, dict[str, Any]]:
    out = qkdd("status", "-c", str(config), "--json")
    return out.returncode, json.loads(out.stdout)


def _metrics_port(proc: Proc) -> int:
    for record in proc.log_lines():
        if record.get("event") == "metrics endpoint listening":
            return int(record["port"])
    raise AssertionError(proc.log.read_text()[-2000:])


def test_status_without_a_daemon_is_not_running(tmp_path: Path) -> None:
    configs = example_configs(tmp_path, free_port())
    out = qkdd("status", "-c", str(configs["bob"]))
    assert out.returncode == 3
    assert "not running (no health snapshot" in out.stdout
    code, doc = _status_json(configs["bob"])
    assert code == 3 and doc["running"] is False


def test_status_and_metrics_of_a_running_pair(tmp_path: Path) -> None:
    out = qkdd(
        "init-secret", "--link", LINK,
        "--alice-dir", str(tmp_path / "alice"), "--bob-dir", str(tmp_path / "bob"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    prom = {r: tmp_path / f"qkdd-{r}.prom" for r in ("alice", "bob")}
    configs = example_configs(tmp_path, free_port(), metrics={"listen": "127.0.0.1:0"})
    for role, path in configs.items():  # each end its own textfile
        data = tomllib.loads(path.read_text())
        data["metrics"]["textfile"] = str(prom[role])
        path.write_text(tomli_w.dumps(data))
    with processes() as procs:
        alice = start("alice", configs["alice"], tmp_path)
        bob = start("bob", configs["bob"], tmp_path)
        procs += [alice, bob]

        def committed() -> bool:
            code, doc = _status_json(configs["bob"])
            return code == 0 and doc["health"]["secret_bits_committed"] > 0

        assert wait_for(committed, 90, step=0.5), alice.log.read_text()[-3000:]

        code, doc = _status_json(configs["alice"])
        assert code == 0 and doc["running"] is True
        health = doc["health"]
        assert (health["role"], health["link"], health["pid"]) == ("alice", LINK, alice.popen.pid)
        assert health["simulated"] is True and health["mqtt_enabled"] is False
        assert health["state"] and health["state_since"] <= health["updated_at"]
        assert doc["uptime_s"] > 0

        text = qkdd("status", "-c", str(configs["bob"]))
        assert text.returncode == 0, text.stderr
        assert "link1 (bob, node bob): running" in text.stdout
        assert re.search(r"state\s+[A-Z]+ since ", text.stdout)
        assert re.search(r"keys\s+[1-9][0-9]* keys, [1-9][0-9]* secret bits", text.stdout)
        assert "SIMULATED" in text.stdout and "not configured" in text.stdout

        with urllib.request.urlopen(
            f"http://127.0.0.1:{_metrics_port(bob)}/metrics", timeout=10
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            scraped = parse(response.read().decode())
        labels = {"link": LINK, "role": "bob"}
        assert scraped["qkdd_up"].value(**labels) == 1
        assert sum(scraped["qkdd_state"].samples.values()) == 1
        assert scraped["qkdd_secret_bits_total"].value(**labels) > 0
        assert scraped["qkdd_keys_total"].value(**labels) > 0
        assert scraped["qkdd_key_rate_bits_per_second"].value(**labels) > 0
        assert scraped["qkdd_simulated"].value(**labels) == 1
        assert scraped["qkdd_qber"].value(scope="block") < 0.05
        textfile = parse(prom["alice"].read_text())
        assert textfile["qkdd_up"].value(link=LINK, role="alice") == 1

        # No key material in anything the health mechanism writes or prints.
        published = "".join(
            [
                (tmp_path / r / HEALTH_FILE).read_text() + prom[r].read_text()
                for r in ("alice", "bob")
            ]
            + [json.dumps(doc), text.stdout]
        )
        keys = keys_json(configs["bob"])["keys"]
        assert keys
        for key in keys:
            if "key" in key:
                material = base64.b64decode(key["key"])
                assert key["key"] not in published
                assert material.hex() not in published and material.hex()[:16] not in published
            assert key["key_id"] not in published

        alice.kill()  # SIGKILL: no last snapshot, the pid check finds it gone
        out = qkdd("status", "-c", str(configs["alice"]))
        assert out.returncode == 3, out.stdout
        assert "not running (last seen" in out.stdout
        assert "last reason" in out.stdout
        code, doc = _status_json(configs["alice"])
        assert code == 3 and doc["running"] is False and doc["health"]["running"] is True

        bob.signal(signal.SIGTERM)  # a clean stop leaves running=false and qkdd_up 0
        assert bob.wait(20) == 0
        assert qkdd("status", "-c", str(configs["bob"])).returncode == 3
        assert parse(prom["bob"].read_text())["qkdd_up"].value(**labels) == 0


def test_status_shows_the_mqtt_connection(tmp_path: Path, mqtt_broker: MosquittoBroker) -> None:
    """Startup is visible; connected to the broker, then not once the broker is gone."""
    out = qkdd(
        "init-secret", "--link", LINK,
        "--alice-dir", str(tmp_path / "alice"), "--bob-dir", str(tmp_path / "bob"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    configs = example_configs(
        tmp_path, free_port(), mqtt={"host": mqtt_broker.host, "port": mqtt_broker.port}
    )
    out = qkdd("consumer", "add", "default", "-c", str(configs["alice"]),
               "-o", str(tmp_path / "alice.consumer.toml"))  # fmt: skip
    assert out.returncode == 0, out.stderr

    def mqtt(expected: bool) -> bool:
        code, doc = _status_json(configs["alice"])
        return code == 0 and doc["health"]["mqtt_connected"] is expected

    with processes() as procs:
        alice = start("alice", configs["alice"], tmp_path)
        procs.append(alice)

        # Before Bob exists Alice waits for the simulated fibre: status says so.
        def waiting_for_fibre() -> bool:
            code, doc = _status_json(configs["alice"])
            health = doc.get("health", {})
            return (
                code == 0
                and health.get("state") == "STARTING"
                and ("simulated fibre" in health.get("reason", ""))
            )

        assert wait_for(waiting_for_fibre, 30, step=0.5), alice.log.read_text()[-3000:]
        out = qkdd("consumer", "add", "default", "-c", str(configs["bob"]),
                   "-o", str(tmp_path / "bob.consumer.toml"))  # fmt: skip
        assert out.returncode == 0, out.stderr
        procs.append(start("bob", configs["bob"], tmp_path))
        assert wait_for(lambda: mqtt(True), 60, step=0.5), alice.log.read_text()[-3000:]
        text = qkdd("status", "-c", str(configs["alice"])).stdout
        assert re.search(r"mqtt\s+connected", text), text
        mqtt_broker.stop()
        # The heartbeat (5 s) picks up a lost connection that has no link event.
        assert wait_for(lambda: mqtt(False), 30, step=0.5), alice.log.read_text()[-3000:]
