"""Prometheus metrics from the health snapshot: a node_exporter textfile and/or /metrics.

Off by default. ``[metrics] textfile = PATH`` rewrites a file for node_exporter's
textfile collector (atomically, mode 0644) with every health snapshot;
``[metrics] listen = "127.0.0.1:9464"`` serves the same text at ``GET /metrics``
from a small asyncio HTTP server. Both render :func:`render` from one
:class:`~qkdd.health.HealthSnapshot`, so the two can never disagree with
``qkdd status``. Text exposition format 0.0.4, written here (prometheus_client is
not a dependency): public numbers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
from collections.abc import Callable
from pathlib import Path
from typing import Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qkdd.health import HealthSnapshot, write_atomic
from qkdd.link.alarm_kinds import AlarmKind
from qkdd.link.states import LinkState
from qkdd.logging import get_logger

_log = get_logger("metrics")

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: node_exporter runs as its own user and must read the file.
TEXTFILE_MODE: Final = 0o644


class MetricsConfig(BaseModel):
    """``[metrics]``: Prometheus exposition of the health snapshot (off unless set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    textfile: Path | None = Field(
        default=None,
        description="node_exporter textfile collector file to rewrite (e.g. "
        "/var/lib/prometheus/node-exporter/qkdd-link1.prom); must end in .prom",
    )
    listen: str | None = Field(
        default=None,
        description='HOST:PORT of an HTTP endpoint serving /metrics (e.g. "127.0.0.1:9464"); '
        "unauthenticated: keep it on loopback or a management network",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.textfile is not None and self.textfile.suffix != ".prom":
            # node_exporter reads only *.prom files: anything else is silently ignored.
            raise ValueError("textfile: node_exporter reads only files ending in .prom")
        if self.listen is not None:
            parse_listen(self.listen)
        return self

    @property
    def enabled(self) -> bool:
        return self.textfile is not None or self.listen is not None


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port); ValueError otherwise."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"listen: expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port < 65536:
        raise ValueError(f"listen: port out of range in {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    return host, port


# -- exposition format -------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Writer:
    def __init__(self, base: dict[str, str]) -> None:
        self.base = base
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **extra: str) -> None:
        self.lines.append(f"{name}{_labels({**self.base, **extra})} {_number(value)}")


def render(snapshot: HealthSnapshot, *, up: bool | None = None) -> str:
    """The snapshot in Prometheus text format. ``up`` overrides whether the daemon runs
    (the HTTP endpoint is served by the daemon itself, so it is up)."""
    w = _Writer({"link": snapshot.link, "role": snapshot.role})
    running = snapshot.running if up is None else up
    w.family("qkdd_up", "gauge", "1 while the daemon runs, 0 in its last snapshot")
    w.sample("qkdd_up", 1 if running else 0)
    w.family("qkdd_state", "gauge", "link state machine, one-hot by state")
    for state in LinkState:
        w.sample("qkdd_state", 1 if snapshot.state == state.value else 0, state=state.value)
    w.family("qkdd_state_since_seconds", "gauge", "unix time the link entered its current state")
    w.sample("qkdd_state_since_seconds", snapshot.state_since)
    w.family("qkdd_qber", "gauge", "QBER: last frame, alarm-test window, last committed block")
    for scope, value in (
        ("frame", snapshot.qber_frame),
        ("window", snapshot.qber_window),
        ("block", snapshot.qber_block),
    ):
        if value is not None:  # absent, not 0, until measured
            w.sample("qkdd_qber", value, scope=scope)
    w.family("qkdd_secret_bits_total", "counter", "secret key bits committed since start")
    w.sample("qkdd_secret_bits_total", snapshot.secret_bits_committed)
    w.family("qkdd_keys_total", "counter", "keys committed since start")
    w.sample("qkdd_keys_total", snapshot.keys_committed)
    w.family("qkdd_blocks_total", "counter", "blocks committed since start")
    w.sample("qkdd_blocks_total", snapshot.blocks_committed)
    w.family(
        "qkdd_key_rate_bits_per_second",
        "gauge",
        f"secret bits committed per second over the last {snapshot.key_rate_window_s:g} s",
    )
    w.sample("qkdd_key_rate_bits_per_second", snapshot.key_rate_bits_per_s)
    active = {a.name for a in snapshot.alarms}
    w.family("qkdd_alarms_active", "gauge", "1 while the alarm is raised, by alarm and level")
    for kind in AlarmKind:
        w.sample(
            "qkdd_alarms_active", 1 if kind.value in active else 0,
            alarm=kind.value, level=kind.level.value,
        )  # fmt: skip
    w.family("qkdd_alarms_total", "counter", "alarms raised since start, by alarm and level")
    for kind in AlarmKind:
        w.sample(
            "qkdd_alarms_total", snapshot.alarms_total.get(kind.value, 0),
            alarm=kind.value, level=kind.level.value,
        )  # fmt: skip
    w.family("qkdd_simulated", "gauge", "1 when an instrument is simulated (keys not secure)")
    w.sample("qkdd_simulated", 1 if snapshot.simulated else 0)
    if snapshot.mqtt_connected is not None:
        w.family("qkdd_mqtt_connected", "gauge", "1 while connected to the MQTT broker")
        w.sample("qkdd_mqtt_connected", 1 if snapshot.mqtt_connected else 0)
    w.family("qkdd_start_time_seconds", "gauge", "unix time the daemon started")
    w.sample("qkdd_start_time_seconds", snapshot.started_at)
    w.family("qkdd_snapshot_time_seconds", "gauge", "unix time of this health snapshot")
    w.sample("qkdd_snapshot_time_seconds", snapshot.updated_at)
    return "\n".join(w.lines) + "\n"


def textfile_sink(path: Path) -> Callable[[HealthSnapshot], None]:
    """A health sink that rewrites ``path`` atomically (node_exporter must never read half
    a file) with every snapshot."""

    def write(snapshot: HealthSnapshot) -> None:
        write_atomic(path, render(snapshot), TEXTFILE_MODE)

    return write


# -- /metrics over HTTP --------------------------------------------------------------------

_MAX_HEADER_BYTES: Final = 8192


class MetricsServer:
    """``GET /metrics`` (and ``HEAD``) in text format; anything else 404/405. One request
    per connection, bounded in size and time, so a slow client cannot hold the loop.
    It serves from :meth:`start` until :meth:`close` (the daemon's ``finally``)."""

    def __init__(self, listen: str, snapshot: Callable[[], HealthSnapshot]) -> None:
        self.host, self.port = parse_listen(listen)
        self.snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._client, self.host, self.port, limit=_MAX_HEADER_BYTES
        )
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])  # the real port when 0 was asked for
        _log.info("metrics endpoint listening", host=self.host, port=self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            target = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif target != "/metrics":
                status, body, ctype = "404 Not Found", b"see /metrics\n", "text/plain"
            else:
                status, ctype = "200 OK", CONTENT_TYPE
                body = render(self.snapshot(), up=True).encode()
            headers = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(headers.encode("latin-1") + (b"" if method == "HEAD" else body))
            await asyncio.wait_for(writer.drain(), 5)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a client that is slow, went away or sent no request: nothing to answer
        except asyncio.LimitOverrunError:
            pass  # headers over 8 KiB: not a scraper
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
