"""``qkdd run``: one role of one link as a supervised asyncio process (DESIGN §1, §6).

A TaskGroup runs the link engine (which owns the peer channel and drives the
instruments through their interfaces), the sd_notify watchdog and the status
reporter; CPU-bound post-processing runs in a bounded executor. SIGTERM (and
SIGINT) abandon the block in progress cleanly — a participant that voted keeps
its pending keys for the coordinator's answer — and exit 0; SIGHUP reloads only
local settings (log level) and says what it ignored.

The MQTT publisher plugs in through :class:`~qkdd.link.events.LinkEvents` (keys
committed and refilled, transitions, alarms, per-frame telemetry).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdd.auth import AuthSession, load_auth_state
from qkdd.auth.errors import AuthError
from qkdd.config import ConfigError, NodeConfig, load_config
from qkdd.instruments.interfaces import (
    InstrumentClass,
    Laser,
    RandomSource,
    SinglePhotonDetector,
    StateEncoder,
    TimeTagger,
)
from qkdd.instruments.registry import (
    BackendUsed,
    OpenedInstrument,
    close_instruments,
    open_instruments,
)
from qkdd.link.engine import EngineSettings, LinkEngine
from qkdd.link.events import LinkEvents
from qkdd.link.keys import BlockKeys
from qkdd.link.postprocess import PostProcessing
from qkdd.link.quantum import (
    ChoiceProbabilities,
    FrameReceiver,
    FrameTransmitter,
    InstrumentReceiver,
    InstrumentTransmitter,
)
from qkdd.link.standard import StandardPostProcessing
from qkdd.logging import configure_logging, get_logger
from qkdd.store import StateStore, StoreError

_log = get_logger("daemon")


class DaemonError(Exception):
    """The node cannot run (the message says why); exit code 1."""


# -- sd_notify ---------------------------------------------------------------------------


class Notifier:
    """systemd's notify protocol over ``$NOTIFY_SOCKET`` (a datagram socket); a no-op
    when the variable is unset."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        enabled = usec is not None and (pid is None or pid == str(os.getpid()))
        self.watchdog_interval_s = int(usec) / 2e6 if enabled and usec else None

    def notify(self, **fields: str | int) -> None:
        if self.address is None:
            return
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(payload, self.address)
            except OSError as exc:
                _log.warning("sd_notify failed", error=str(exc))


# -- assembly -----------------------------------------------------------------------------


def _first(opened: list[OpenedInstrument], kind: InstrumentClass) -> Any:
    for item in opened:
        if item.instrument is not None and item.instrument.instrument_class is kind:
            return item.instrument
    return None


def _all(opened: list[OpenedInstrument], kind: InstrumentClass) -> list[Any]:
    return [
        i.instrument
        for i in opened
        if i.instrument is not None and i.instrument.instrument_class is kind
    ]


def quantum_path(
    config: NodeConfig, opened: list[OpenedInstrument]
) -> tuple[FrameTransmitter | None, FrameReceiver | None, RandomSource]:
    """The engine's quantum path from this node's instruments (interfaces only)."""
    rng = _first(opened, InstrumentClass.RANDOM_SOURCE)
    if not isinstance(rng, RandomSource):
        raise DaemonError("no usable random source")
    p = config.protocol
    if config.node.role.value == "alice":
        encoder = _first(opened, InstrumentClass.STATE_ENCODER)
        laser = _first(opened, InstrumentClass.LASER)
        if not isinstance(encoder, StateEncoder):
            raise DaemonError("no usable state encoder")
        probabilities = ChoiceProbabilities(p.p_key_basis, p.intensities.probabilities)
        tx = InstrumentTransmitter(
            rng, encoder, probabilities, laser if isinstance(laser, Laser) else None
        )
        return tx, None, rng
    tagger = _first(opened, InstrumentClass.TIME_TAGGER)
    if not isinstance(tagger, TimeTagger):
        raise DaemonError("no usable time tagger")
    detectors = [
        d for d in _all(opened, InstrumentClass.DETECTOR) if isinstance(d, SinglePhotonDetector)
    ]
    rx = InstrumentReceiver(tagger, rng, slot_rate_hz=p.slot_rate_hz, detectors=detectors)
    return None, rx, rng


@dataclass
class Daemon:
    """One node: its config, store, authentication, instruments and link engine."""

    config: NodeConfig
    config_path: Path
    notifier: Notifier = field(default_factory=Notifier)
    post: PostProcessing | None = None
    events: LinkEvents = field(default_factory=LinkEvents)
    engine: LinkEngine | None = None
    _stopping: bool = False

    async def run(self) -> int:
        cfg = self.config
        try:
            store = StateStore.open(cfg.node.state_dir)
        except (StoreError, OSError) as exc:
            raise DaemonError(
                f"cannot open the state store in {cfg.node.state_dir}: {exc}"
            ) from None
        opened: list[OpenedInstrument] = []
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qkdd-post")
        session: AuthSession | None = None
        try:
            try:
                load_auth_state(store, role=cfg.node.role.value, link=cfg.node.link)
                session = AuthSession(store)
            except AuthError as exc:
                raise DaemonError(str(exc)) from None
            opened = await open_instruments(
                cfg.instruments, allow_simulated=cfg.node.allow_simulated
            )
            unusable = [f"{i.name}: {i.reason}" for i in opened if not i.usable]
            if unusable:
                raise DaemonError("instruments unusable: " + "; ".join(unusable))
            simulated = any(i.backend is BackendUsed.SIMULATED for i in opened)
            tx, rx, rng = quantum_path(cfg, opened)
            post = self.post
            if post is None:
                standard = StandardPostProcessing()
                missing = standard.check()
                if missing:
                    _log.error("post-processing incomplete: blocks cannot finish", missing=missing)
                post = standard
            if cfg.peer is None:
                raise DaemonError(f"{self.config_path}: peer: missing ([peer] is needed to run)")
            settings = EngineSettings(
                node_id=cfg.node.id,
                link=cfg.node.link,
                role=cfg.node.role.value,
                protocol=cfg.protocol,
                peer=cfg.peer,
                simulated=simulated,
            )
            keys = BlockKeys(store, session, link=cfg.node.link, slots=cfg.peer.consumer_slots)
            self.engine = LinkEngine(
                settings,
                session=session,
                keys=keys,
                post=post,
                random_bytes=rng.random_bytes,
                transmitter=tx,
                receiver=rx,
                events=self.events,
                executor=executor,
            )
            _log.info(
                "node starting",
                node=cfg.node.id,
                role=cfg.node.role.value,
                link=cfg.node.link,
                simulated=simulated,
                secret_id=session.secret_id,
            )
            self.events.on_transition.append(lambda t: self._status())
            self._install_signals()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._run_engine())
                group.create_task(self._watchdog())
                self.notifier.notify(ready=1, status=self._status_text())
        finally:
            self.notifier.notify(stopping=1, status="stopping")
            self._remove_signals()
            await close_instruments(opened)
            executor.shutdown(wait=True, cancel_futures=True)
            if session is not None:
                session.close()
            store.close()
        return 0

    async def _run_engine(self) -> None:
        assert self.engine is not None
        try:
            await self.engine.run()
        finally:
            self._stopping = True

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s
        while not self._stopping:
            if interval is not None:
                self.notifier.notify(watchdog=1)
            await asyncio.sleep(interval if interval is not None else 0.5)

    def _status_text(self) -> str:
        if self.engine is None:
            return "starting"
        s = self.engine.status()
        alarms = ",".join(s["alarms"]) or "none"
        return (
            f"{s['state']} keys={s['keys_stored']} blocks={s['blocks_committed']} alarms={alarms}"
        )

    def _status(self) -> None:
        self.notifier.notify(status=self._status_text())

    # -- signals ------------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _remove_signals(self) -> None:
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def stop(self, why: str = "stop") -> None:
        _log.info("stopping", signal=why)
        self.notifier.notify(stopping=1, status="stopping")
        if self.engine is not None:
            self.engine.request_stop()

    def reload(self) -> None:
        """SIGHUP: re-read the file, apply the log level, name everything ignored."""
        self.notifier.notify(reloading=1, status="reloading")
        try:
            fresh = load_config(self.config_path)
        except ConfigError as exc:
            _log.error("reload refused: the config file is invalid", error=str(exc))
            self.notifier.notify(ready=1, status=self._status_text())
            return
        configure_logging(fresh.logging.level, json=fresh.logging.json_lines)
        ignored = [
            name
            for name in ("node", "instruments", "protocol", "peer", "mqtt")
            if getattr(fresh, name) != getattr(self.config, name)
        ]
        self.config = self.config.model_copy(update={"logging": fresh.logging})
        _log.info(
            "configuration reloaded",
            applied="logging",
            ignored_changes=ignored or "none",
            note="protocol, peer, node and instrument settings apply at the next start",
        )
        self.notifier.notify(ready=1, status=self._status_text())


def run_node(config: NodeConfig, config_path: Path, **daemon_args: Any) -> int:
    """Run a node until SIGTERM; returns the exit code."""
    daemon = Daemon(config, config_path, **daemon_args)
    try:
        return asyncio.run(daemon.run())
    except DaemonError as exc:
        _log.error("node cannot run", error=str(exc))
        raise
