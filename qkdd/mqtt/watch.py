"""A live view of links from their telemetry: state, QBER with its bound, rates, alarms.

:class:`LinkBoard` folds status, QBER and alarm payloads into one row per link (pure,
no I/O); :func:`render` draws it as a rich table; :func:`watch` subscribes to a broker
and keeps the view live. It reads only telemetry topics (``status``, ``qber``,
``alarm``), which the monitoring identity of the production ACL may read; never keys.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from qkdd.mqtt.client import broker_session
from qkdd.mqtt.config import MqttConfig
from qkdd.mqtt.messages import AlarmMessage, QberMessage, StatusMessage


@dataclass
class LinkRow:
    """What the board knows about one end of one link."""

    node: str
    link: str
    role: str = "?"
    state: str = "?"
    online: bool | None = None
    simulated: bool = False
    frame: int | None = None
    qber: float | None = None
    qber_bound: float | None = None
    sifted_bits: int = 0
    rates: dict[str, float] = field(default_factory=dict)
    alarms: dict[str, str] = field(default_factory=dict)  # kind → level
    updated: str = ""


class LinkBoard:
    """Rows by (node, link), updated from telemetry payloads."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], LinkRow] = {}
        self.ignored = 0

    def _row(self, node: str, link: str) -> LinkRow:
        return self.rows.setdefault((node, link), LinkRow(node, link))

    def update(self, topic: str, payload: bytes) -> None:
        """Fold one message in; anything that does not validate is counted and skipped."""
        kind = topic.rsplit("/", 1)[-1]
        if not payload:
            return  # the removal of a retained alarm
        try:
            if kind == "status":
                status = StatusMessage.model_validate_json(payload)
                row = self._row(status.node, status.link)
                row.role, row.state, row.online = status.role, status.state, status.online
                row.simulated, row.updated = status.simulated, status.time
            elif kind == "qber":
                qber = QberMessage.model_validate_json(payload)
                row = self._row(qber.node, qber.link)
                row.frame, row.qber, row.qber_bound = qber.frame, qber.qber, qber.qber_bound
                row.sifted_bits, row.rates, row.updated = qber.sifted_bits, qber.rates, qber.time
            elif kind == "alarm":
                alarm = AlarmMessage.model_validate_json(payload)
                row = self._row(alarm.node, alarm.link)
                row.alarms = {str(a.kind): str(a.level) for a in alarm.active_alarms}
                row.updated = alarm.time
            else:
                self.ignored += 1
        except ValidationError:
            self.ignored += 1


def render(board: LinkBoard) -> Table:
    table = Table(title="qkdd links", expand=True)
    for column in ("node", "link", "role", "state", "QBER (bound)", "sifted", "rates", "alarms"):
        table.add_column(column)
    for (_, _), row in sorted(board.rows.items()):
        state = Text(row.state + (" (offline)" if row.online is False else ""))
        if row.online is False:
            state.stylize("dim")
        elif row.state == "ALARM":
            state.stylize("bold red")
        qber = (
            "-"
            if row.qber is None
            else f"{100 * row.qber:.2f} % (≥{100 * (row.qber_bound or 0):.2f})"
        )
        rates = ", ".join(f"{k} {v:.3g}/s" for k, v in sorted(row.rates.items())) or "-"
        alarms = Text(", ".join(f"{k} [{v}]" for k, v in sorted(row.alarms.items())) or "none")
        if row.alarms:
            alarms.stylize("bold red" if "abort" in row.alarms.values() else "yellow")
        node = row.node + (" [SIMULATED]" if row.simulated else "")
        table.add_row(node, row.link, row.role, state, qber, str(row.sifted_bits), rates, alarms)
    return table


def broker_settings(url: str, **fields: object) -> MqttConfig:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://…`` (TLS; give ``tls``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"not a broker URL: {url!r} (mqtt://host:port or mqtts://host:port)")
    data: dict[str, object] = {
        "host": parts.hostname,
        "port": parts.port or (8883 if parts.scheme == "mqtts" else 1883),
        **fields,
    }
    if parts.username:
        data["username"] = unquote(parts.username)
    if parts.password:
        data["password"] = unquote(parts.password)
    if parts.scheme == "mqtts" and data.get("tls") is None:
        raise ValueError("mqtts:// needs a CA file (--cafile)")
    return MqttConfig.model_validate(data)


async def watch(
    mqtt: MqttConfig,
    *,
    base_topic: str = "qkd",
    duration_s: float | None = None,
    console: Console | None = None,
    live: bool = True,
) -> LinkBoard:
    """Show the board until interrupted (or for ``duration_s``); returns the final board."""
    board = LinkBoard()
    console = console or Console()
    async with broker_session(mqtt, f"qkdd-watch-{id(board):x}") as client:
        for kind in ("status", "qber", "alarm"):
            await client.subscribe(f"{base_topic}/+/links/+/{kind}", qos=1 if kind != "qber" else 0)
        view = Live(render(board), console=console, refresh_per_second=4) if live else None
        with view or contextlib.nullcontext(), contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration_s):
                async for message in client.messages:
                    if isinstance(message.payload, bytes):
                        board.update(message.topic.value, message.payload)
                    if view is not None:
                        view.update(render(board))
    return board
