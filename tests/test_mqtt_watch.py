"""``qkdd watch``: the board folds telemetry in; the command shows a running link."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from rich.console import Console

from qkdd.link.alarms import AlarmEvent, AlarmKind
from qkdd.mqtt.messages import QberMessage, StatusMessage
from qkdd.mqtt.publisher import MqttPublisher
from qkdd.mqtt.seam import FrameQber
from qkdd.mqtt.watch import LinkBoard, broker_settings, render
from tests.mqtt_broker import MosquittoBroker, mqtt_config, open_node_store, running

REPO = Path(__file__).parent.parent


def test_board_folds_telemetry_and_skips_what_does_not_validate() -> None:
    board = LinkBoard()
    status = StatusMessage(
        node="alice",
        link="l1",
        role="alice",
        state="ALARM",
        online=True,
        simulated=True,
        versions={},
    )
    board.update("qkd/alice/links/l1/status", status.to_json())
    qber = QberMessage(
        node="alice",
        link="l1",
        frame=7,
        qber=0.25,
        qber_bound=0.2,
        window_bits=512,
        sifted_bits=1000,
    )
    board.update("qkd/alice/links/l1/qber", qber.to_json())
    board.update("qkd/alice/links/l1/alarm", b"")  # a retained alarm removed
    board.update("qkd/alice/links/l1/qber", b'{"schema":"qkdd.qber/1"}')
    board.update("qkd/alice/links/l1/status", b"garbage")
    row = board.rows["alice", "l1"]
    assert (row.state, row.qber, row.frame, row.simulated) == ("ALARM", 0.25, 7, True)
    assert board.ignored == 2
    console = Console(record=True, width=160)
    console.print(render(board))
    text = console.export_text()
    assert "25.00 %" in text and "SIMULATED" in text and "ALARM" in text


def test_broker_urls() -> None:
    mqtt = broker_settings("mqtt://mon:s%40cret@broker.lab:1884")
    assert (mqtt.host, mqtt.port, mqtt.username, mqtt.password_value()) == (
        "broker.lab",
        1884,
        "mon",
        "s@cret",
    )
    assert "s@cret" not in repr(mqtt)
    assert broker_settings("mqtt://127.0.0.1").port == 1883
    with pytest.raises(ValueError, match="CA file"):
        broker_settings("mqtts://broker.lab")
    with pytest.raises(ValueError, match="not a broker URL"):
        broker_settings("http://broker.lab")


async def test_watch_shows_a_running_link(mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    store = open_node_store(tmp_path / "alice", {"kms": b"s" * 32})
    pub = MqttPublisher(
        mqtt_config(mqtt_broker),
        store,
        node="alice",
        link="link1",
        role="alice",
        slots=["kms"],
        simulated=True,
    )
    async with running(pub):
        pub.on_status("TRANSMIT")
        pub.on_alarm(AlarmEvent(AlarmKind.QBER_WARNING, active=True, values={"cusum": 13.0}))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "qkdd",
            "watch",
            "--broker",
            f"mqtt://{mqtt_broker.host}:{mqtt_broker.port}",
            "--duration",
            "3",
            "--no-live",
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        )
        # QoS 0 frames, unretained: published until watch ends, since its start-up time
        # (imports, connecting) is unknown on a loaded machine.
        communicate = asyncio.ensure_future(proc.communicate())
        frame = 0
        while not communicate.done():
            pub.on_frame_qber(
                FrameQber(
                    frame=frame,
                    qber=0.031,
                    qber_bound=0.012,
                    window_bits=512,
                    sifted_bits=4096,
                    rates={"key": 1200.0},
                )
            )
            frame += 1
            await asyncio.wait({communicate}, timeout=0.1)
        out, err = await communicate
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    for expected in ("alice", "link1", "TRANSMIT", "3.10 %", "qber_warning", "key 1.2e+03/s"):
        assert expected in text, text
    store.close()
