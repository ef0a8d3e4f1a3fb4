"""The node's health snapshot: what ``qkdd status`` and the Prometheus metrics read.

The daemon keeps one :class:`HealthRecorder` subscribed to the link engine's events
(:class:`~qkdd.link.events.LinkEvents`): transitions, frame reports, committed keys and
alarms. It writes a :class:`HealthSnapshot` as ``health.json`` in the node's state
directory, atomically (temporary file + ``os.replace``, mode 0640): at once on an
alarm and on a transition into or out of a block (ALARM, FAULT, PAUSED, …); at most
every 0.5 s for frames, commits and the steps inside a block (several per frame);
and every few seconds as a heartbeat. The snapshot holds public numbers only — counts, rates,
QBERs, alarm names — never key material, key ids or check values.

A reader decides whether the snapshot is live from its pid (and the process's start
time, so a recycled pid does not pass for the daemon): :func:`is_alive`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from qkdd.link.alarm_kinds import AlarmEvent
from qkdd.link.events import FrameReport, KeysCommitted, LinkEvents
from qkdd.link.states import LinkState, Transition
from qkdd.logging import get_logger

_log = get_logger("health")

HEALTH_FILE: Final = "health.json"
HEALTH_SCHEMA: Final = "qkdd.health/1"
#: Health is not secret, but it stays within the qkdd group (the state dir is 0700 anyway).
HEALTH_FILE_MODE: Final = 0o640
MIN_INTERVAL_S: Final = 0.5
HEARTBEAT_S: Final = 5.0
KEY_RATE_WINDOW_S: Final = 60.0


class ActiveAlarm(BaseModel):
    """An alarm that is raised and not yet cleared."""

    model_config = ConfigDict(extra="forbid")

    name: str
    level: str
    since: float = Field(description="unix time it was (last) raised")
    values: dict[str, float | int] = Field(default_factory=dict)


class HealthSnapshot(BaseModel):
    """One node's health at ``updated_at``: public numbers only (no key material)."""

    model_config = ConfigDict(extra="forbid")

    schema_: str = Field(default=HEALTH_SCHEMA, alias="schema")
    node: str
    link: str
    role: str
    pid: int
    process_start: int | None = Field(
        default=None, description="start time of the pid in clock ticks since boot (Linux)"
    )
    boot_id: str | None = None
    started_at: float = Field(description="unix time the daemon started")
    updated_at: float
    running: bool = Field(default=True, description="false in the daemon's last snapshot")
    state: str
    state_since: float
    previous_state: str | None = None
    reason: str = Field(default="", description="reason of the last transition")
    simulated: bool
    frames: int = 0
    qber_frame: float | None = Field(default=None, description="test-basis QBER of the last frame")
    qber_window: float | None = Field(default=None, description="QBER of the alarm-test window")
    qber_window_bound: float | None = None
    qber_block: float | None = Field(default=None, description="QBER of the last committed block")
    last_block: int | None = None
    blocks_committed: int = 0
    keys_committed: int = 0
    secret_bits_committed: int = 0
    key_rate_bits_per_s: float = 0.0
    key_rate_window_s: float = KEY_RATE_WINDOW_S
    alarms: list[ActiveAlarm] = Field(default_factory=list)
    alarms_total: dict[str, int] = Field(default_factory=dict, description="raised, by name")
    mqtt_enabled: bool = False
    mqtt_connected: bool | None = None

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=1)


# -- process identity --------------------------------------------------------------------


def _process_start(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in ticks since boot), or None off Linux."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def is_alive(snapshot: HealthSnapshot) -> bool:
    """True when the snapshot's process still runs (the same process, not a recycled pid)."""
    if snapshot.boot_id is not None and _boot_id() not in (None, snapshot.boot_id):
        return False  # written before a reboot
    try:
        os.kill(snapshot.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user (the qkdd service user)
    if snapshot.process_start is not None:
        start = _process_start(snapshot.pid)
        if start is not None and start != snapshot.process_start:
            return False
    return True


# -- files ---------------------------------------------------------------------------------


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old or the new file, never part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask (077 under systemd) must not narrow it
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            fd = -1
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def health_path(state_dir: Path) -> Path:
    return state_dir / HEALTH_FILE


def read_snapshot(state_dir: Path) -> HealthSnapshot | None:
    """The last snapshot written in ``state_dir``, or None when there is none.
    Raises ``PermissionError`` when it exists but cannot be read."""
    try:
        raw = health_path(state_dir).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return HealthSnapshot.model_validate_json(raw)


# -- the recorder --------------------------------------------------------------------------

Sink = Callable[[HealthSnapshot], None]


class HealthRecorder:
    """Follows the link's events and keeps ``health.json`` current (see the module doc).

    ``sinks`` get every snapshot written (the Prometheus textfile is one); a sink that
    fails is logged, never allowed to disturb the link.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        node: str,
        link: str,
        role: str,
        simulated: bool,
        mqtt_connected: Callable[[], bool] | None = None,
        sinks: list[Sink] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = health_path(state_dir)
        self.node, self.link, self.role = node, link, role
        self.simulated = simulated
        self.mqtt_connected = mqtt_connected
        self.sinks = list(sinks or [])
        self._clock = clock
        self.pid = os.getpid()
        self._process_start = _process_start(self.pid)
        self._boot_id = _boot_id()
        self.started_at = clock()
        self.state = LinkState.STARTING.value
        self.state_since = self.started_at
        self.previous_state: str | None = None
        self.reason = "daemon started"
        self.frames = 0
        self.qber_frame: float | None = None
        self.qber_window: float | None = None
        self.qber_window_bound: float | None = None
        self.qber_block: float | None = None
        self.last_block: int | None = None
        self.blocks_committed = 0
        self.keys_committed = 0
        self.secret_bits_committed = 0
        self._commits: deque[tuple[float, int]] = deque()
        self._alarms: dict[str, ActiveAlarm] = {}
        self.alarms_total: dict[str, int] = {}
        self.running = True
        self._dirty = False
        self._last_write = 0.0
        self._write_failed = False
        self._sink_failed: set[int] = set()

    # -- event subscribers (run on the event loop; they must not block) ---------------

    def attach(self, events: LinkEvents) -> None:
        events.on_transition.append(self.transition)
        events.on_frame.append(self.frame)
        events.on_keys.append(self.keys)
        events.on_alarm.append(self.alarm)

    def transition(self, t: Transition) -> None:
        self.previous_state = str(t.source)
        self.state = str(t.target)
        self.state_since = t.at
        self.reason = t.reason
        if t.source.running and t.target.running:
            # TRANSMIT ↔ SIFT … COMMIT: several per frame, so rate-limited like frames.
            self._changed()
        else:
            self.write()  # into or out of a block, ALARM, FAULT, PAUSED…: at once

    def frame(self, r: FrameReport) -> None:
        self.frames += 1
        self.qber_frame = r.test_errors / r.test_bits if r.test_bits else None
        self.qber_window = r.window_qber
        self.qber_window_bound = r.window_bound
        self._changed()

    def keys(self, event: KeysCommitted) -> None:
        bits = sum(m.bits for m in event.keys)
        self.blocks_committed += 1
        self.keys_committed += len(event.keys)
        self.secret_bits_committed += bits
        self.last_block = event.block_id
        if event.keys:
            self.qber_block = event.keys[0].qber  # every key of a block carries its QBER
        self._commits.append((self._clock(), bits))
        self._changed()

    def alarm(self, event: AlarmEvent) -> None:
        name = str(event.kind)
        if event.active:
            self.alarms_total[name] = self.alarms_total.get(name, 0) + 1
            self._alarms[name] = ActiveAlarm(
                name=name, level=str(event.level), since=self._clock(), values=dict(event.values)
            )
        else:
            self._alarms.pop(name, None)
        self.write()

    # -- snapshot ---------------------------------------------------------------------

    def startup(self, reason: str) -> None:
        """What the daemon does before the link engine runs (no transition says it)."""
        self.reason = reason
        self.write()

    def key_rate(self, now: float) -> float:
        """Secret bits per second committed over the last window (or since start)."""
        while self._commits and self._commits[0][0] < now - KEY_RATE_WINDOW_S:
            self._commits.popleft()
        span = min(KEY_RATE_WINDOW_S, max(now - self.started_at, 1e-3))
        return sum(bits for _, bits in self._commits) / span

    def active_alarms(self) -> list[ActiveAlarm]:
        return sorted(self._alarms.values(), key=lambda a: a.name)

    def snapshot(self) -> HealthSnapshot:
        now = self._clock()
        connected: bool | None = None
        if self.mqtt_connected is not None:
            connected = bool(self.mqtt_connected())
        return HealthSnapshot(
            node=self.node,
            link=self.link,
            role=self.role,
            pid=self.pid,
            process_start=self._process_start,
            boot_id=self._boot_id,
            started_at=self.started_at,
            updated_at=now,
            running=self.running,
            state=self.state,
            state_since=self.state_since,
            previous_state=self.previous_state,
            reason=self.reason,
            simulated=self.simulated,
            frames=self.frames,
            qber_frame=self.qber_frame,
            qber_window=self.qber_window,
            qber_window_bound=self.qber_window_bound,
            qber_block=self.qber_block,
            last_block=self.last_block,
            blocks_committed=self.blocks_committed,
            keys_committed=self.keys_committed,
            secret_bits_committed=self.secret_bits_committed,
            key_rate_bits_per_s=self.key_rate(now),
            alarms=self.active_alarms(),
            alarms_total=dict(self.alarms_total),
            mqtt_enabled=self.mqtt_connected is not None,
            mqtt_connected=connected,
        )

    def _changed(self) -> None:
        """Frames and commits: written now if the last write is old enough, else by
        :meth:`run` within the interval (so the newest numbers always land)."""
        self._dirty = True
        if self._clock() - self._last_write >= MIN_INTERVAL_S:
            self.write()

    def write(self) -> None:
        """Write the snapshot and feed the sinks; failures are logged once, not raised."""
        snapshot = self.snapshot()
        self._dirty = False
        self._last_write = snapshot.updated_at
        try:
            write_atomic(self.path, snapshot.to_json(), HEALTH_FILE_MODE)
            self._write_failed = False
        except OSError as exc:
            if not self._write_failed:  # once per outage, not twice a second
                _log.warning(
                    "cannot write the health snapshot", path=str(self.path), error=str(exc)
                )
            self._write_failed = True
        for index, sink in enumerate(self.sinks):
            try:
                sink(snapshot)
                self._sink_failed.discard(index)
            except Exception as exc:
                if index not in self._sink_failed:  # e.g. the textfile directory not writable
                    _log.warning("health sink failed", error=f"{type(exc).__name__}: {exc}")
                self._sink_failed.add(index)

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Flush pending changes within the interval and write a heartbeat (uptime,
        MQTT connection, aging warnings) until ``stopping()``; then the last snapshot."""
        try:
            while not stopping():
                await asyncio.sleep(MIN_INTERVAL_S / 2)
                elapsed = self._clock() - self._last_write
                if (self._dirty and elapsed >= MIN_INTERVAL_S) or elapsed >= HEARTBEAT_S:
                    self.write()
        finally:
            self.close()

    def close(self) -> None:
        """The daemon's last snapshot: ``running`` false."""
        if self.running:
            self.running = False
            self.write()
