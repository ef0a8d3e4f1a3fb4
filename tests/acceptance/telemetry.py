"""Telemetry as a lab sees it: ``mosquitto_sub`` (the C client) subscribed to status,
alarm and qber topics of every link, each message stamped with its arrival time."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.mqtt_broker import MosquittoBroker

TOPICS = ("qkd/+/links/+/status", "qkd/+/links/+/alarm", "qkd/+/links/+/qber")


@dataclass(frozen=True)
class Message:
    time: float  # arrival at mosquitto_sub, Unix seconds
    topic: str
    payload: dict[str, Any]

    @property
    def node(self) -> str:
        return self.topic.split("/")[1]

    @property
    def kind(self) -> str:
        return self.topic.rsplit("/", 1)[1]


class Telemetry:
    """One ``mosquitto_sub`` process writing ``%U %t %p`` lines to ``log``. Restarted
    brokers are reconnected to by mosquitto_sub itself (it retries)."""

    def __init__(self, binary: str, broker: MosquittoBroker, log: Path) -> None:
        self.broker = broker
        self.log = log
        self.binary = binary
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [self.binary, *self.broker.client_args(), "-q", "1", "-F", "%U %t %p"]
        for topic in TOPICS:
            args += ["-t", topic]
        self.popen = subprocess.Popen(
            args,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def messages(self, kind: str | None = None, node: str | None = None) -> list[Message]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            parts = line.split(" ", 2)
            if len(parts) < 3 or not parts[2].startswith("{"):
                continue  # an empty retained payload (a cleared alarm) or a client message
            try:
                msg = Message(float(parts[0]), parts[1], json.loads(parts[2]))
            except ValueError:
                continue  # a line still being written
            if (kind is None or msg.kind == kind) and (node is None or msg.node == node):
                out.append(msg)
        return out

    def alarms(self, node: str, kind: str, link: str | None = None) -> list[Message]:
        """Alarm messages of ``node`` in which ``kind`` is active."""
        return [
            m
            for m in self.messages("alarm", node)
            if (link is None or m.payload.get("link") == link)
            and any(a["kind"] == kind for a in m.payload.get("active_alarms", []))
        ]

    def last_status(self, node: str, link: str) -> dict[str, Any] | None:
        found = [m.payload for m in self.messages("status", node) if m.payload["link"] == link]
        return found[-1] if found else None
