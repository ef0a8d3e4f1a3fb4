"""``qkdd run``: one role of one link as a supervised asyncio process (DESIGN §1, §6).

A TaskGroup runs the link engine (which owns the peer channel and drives the
instruments through their interfaces), the sd_notify watchdog and the status
reporter; CPU-bound post-processing runs in a bounded executor. SIGTERM (and
SIGINT) abandon the block in progress cleanly — a participant that voted keeps
its pending keys for the coordinator's answer — and exit 0; SIGHUP reloads only
local settings (log level) and says what it ignored.

With an ``[mqtt]`` section the MQTT publisher runs as one more task: small adapters
(:class:`MqttWiring`) carry the engine's events (:class:`~qkdd.link.events.LinkEvents`)
to it, a full outbox pauses key production, and MQTT commands reach the engine. This
module is the only one that imports both ``qkdd.link`` and ``qkdd.mqtt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdd.auth import AuthSession, load_auth_state
from qkdd.auth.errors import AuthError
from qkdd.config import ConfigError, NodeConfig, load_config
from qkdd.health import HealthRecorder
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
from qkdd.instruments.twins.detection import SimulatedTimeTagger
from qkdd.instruments.twins.fibre import FibreError
from qkdd.instruments.twins.link import SimulatedLinkEnd, attach_simulated_link
from qkdd.link.alarm_kinds import AlarmEvent, AlarmKind
from qkdd.link.engine import EngineSettings, InstrumentSilent, LinkEngine
from qkdd.link.events import FrameReport, KeysCommitted, LinkEvents
from qkdd.link.keys import BlockKeys
from qkdd.link.messages import PROTOCOL_VERSION
from qkdd.link.postprocess import PostProcessing
from qkdd.link.quantum import (
    ChoiceProbabilities,
    FrameReceiver,
    FrameTransmitter,
    InstrumentReceiver,
    InstrumentTransmitter,
)
from qkdd.link.standard import StandardPostProcessing
from qkdd.link.states import Transition
from qkdd.logging import configure_logging, get_logger
from qkdd.metrics import MetricsServer, textfile_sink
from qkdd.mqtt.messages import CommandMessage
from qkdd.mqtt.publisher import DeliveryError, MqttPublisher
from qkdd.mqtt.seam import CommandRefused, FrameQber, LinkPublisher
from qkdd.physics.link import LinkParameters
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
    config: NodeConfig,
    opened: list[OpenedInstrument],
    basis_record: Callable[[], Any] | None = None,
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
    rx = InstrumentReceiver(
        tagger, rng, slot_rate_hz=p.slot_rate_hz, detectors=detectors, basis_record=basis_record
    )
    return None, rx, rng


class SimulatedLink:
    """This node's end of the simulated link (twins ↔ fibre), re-attached after a fault
    (the other end restarted, so the fibre connection is new)."""

    def __init__(self, config: NodeConfig, opened: list[OpenedInstrument]) -> None:
        assert config.simulation is not None
        self.config = config
        self.sim = config.simulation
        self.instruments = [i.instrument for i in opened if i.instrument is not None]
        p = config.protocol
        self.parameters = LinkParameters(
            slot_rate_hz=p.slot_rate_hz,
            p_key=p.p_key_basis,
            mu=p.intensities.mu,
            p_class=p.intensities.probabilities,
        )
        self.end: SimulatedLinkEnd | None = None
        self.receiver: InstrumentReceiver | None = None

    async def recover(self, exc: Exception) -> None:
        """After a fault: re-attach only if the fibre itself broke (the other end
        restarted); any other fault leaves it as it is."""
        if isinstance(exc, (OSError, StopAsyncIteration, FibreError, EOFError, InstrumentSilent)):
            _log.info("re-attaching the simulated fibre", error=type(exc).__name__)
            await self.attach()

    async def attach(self) -> None:
        if self.end is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.end.close(), 5)
            self.end = None
        self.end = await attach_simulated_link(
            self.config.node.role.value,
            self.instruments,
            self.sim,
            self.parameters,
            link_id=self.config.node.link,
            connect_timeout_s=60.0,
        )
        if self.receiver is not None:
            self.receiver.reset()

    def basis_record(self) -> Any:
        if self.end is None or self.end.receiver is None:
            raise DaemonError("no simulated receiver attached")
        return self.end.receiver.bob_basis_record()[1]

    @property
    def active_basis(self) -> bool:
        return self.sim.receiver.basis_choice.value == "active"

    def set_eavesdropper(self, spec: str) -> str:
        if self.end is None or self.end.receiver is None:
            raise ValueError("the eavesdropper acts on the light at Bob's receiver: use Bob's node")
        self.end.set_eavesdropper(spec)
        eve = self.end.receiver.eve
        return f"{eve.model.value}:{eve.fraction:g}"

    def set_tagger_silent(self, silent: bool) -> str:
        """Make Bob's simulated time tagger stop (or resume) answering: a device fault."""
        taggers = [i for i in self.instruments if isinstance(i, SimulatedTimeTagger)]
        if not taggers:
            raise ValueError("only Bob's node has the simulated time tagger")
        for tagger in taggers:
            tagger.silent = silent
        return "on" if silent else "off"

    async def close(self) -> None:
        if self.end is not None:
            await self.end.close()
            self.end = None


CONTROL_SOCKET = "control.sock"


class ControlServer:
    """A local control socket (0600, in the state directory), only for simulated links:
    ``eve MODEL[:f]`` switches the eavesdropper, ``silence on|off`` makes the simulated
    time tagger stop answering (a device fault, for tests), ``status`` answers the link
    status."""

    def __init__(self, path: Path, link: SimulatedLink, status: Callable[[], str]) -> None:
        self.path = path
        self.link = link
        self.status = status
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await asyncio.wait_for(reader.readline(), 5)).decode(errors="replace").strip()
            command, _, argument = line.partition(" ")
            if command == "eve":
                try:
                    now = self.link.set_eavesdropper(argument.strip() or "none")
                    _log.warning("eavesdropper switched", eavesdropper=now)
                    reply = f"ok eve {now}"
                except ValueError as exc:
                    reply = f"error {exc}"
            elif command == "status":
                reply = f"ok {self.status()}"
            elif command == "silence" and argument.strip() in ("on", "off"):
                try:
                    now = self.link.set_tagger_silent(argument.strip() == "on")
                    _log.warning("simulated time tagger silence", silence=now)
                    reply = f"ok silence {now}"
                except ValueError as exc:
                    reply = f"error {exc}"
            else:
                reply = "error commands: eve MODEL[:FRACTION] | silence on|off | status"
            writer.write(reply.encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# -- MQTT ---------------------------------------------------------------------------------


def delivery_slots(config: NodeConfig) -> tuple[str, ...]:
    """The link's consumer slots: ``[[consumers]]``, else ``peer.consumer_slots`` (both
    given must agree). The handshake checks them against the peer's."""
    assert config.peer is not None
    named = tuple(c.name for c in config.consumers)
    if not named:
        return tuple(config.peer.consumer_slots)
    if (
        "consumer_slots" in config.peer.model_fields_set
        and tuple(config.peer.consumer_slots) != named
    ):
        raise DaemonError(
            f"[[consumers]] {list(named)} and peer.consumer_slots "
            f"{list(config.peer.consumer_slots)} name different slots"
        )
    return named


_STORE_FULL = "store_full"
#: A stop that takes longer than this ends the process anyway, after writing every
#: thread's stack to stderr (the journal): each shutdown step is bounded, so an
#: overdue stop is a bug to report, and systemd's TimeoutStopSec (60 s) would
#: otherwise SIGKILL the node without saying where it hung.
STOP_DEADLINE_S = 45.0
_COMMAND = "command"


class MqttWiring:
    """Adapters from the link engine's events to a :class:`LinkPublisher`, and the
    command handler the publisher calls (DESIGN §5)."""

    def __init__(
        self,
        publisher: LinkPublisher,
        engine: LinkEngine,
        *,
        sim_link: SimulatedLink | None,
        allow_simulated: bool,
    ) -> None:
        self.publisher = publisher
        self.engine = engine
        self.sim_link = sim_link
        self.allow_simulated = allow_simulated
        self._started = time.monotonic()
        self._frame_s = engine.protocol.frame_duration_s

    def attach(self, events: LinkEvents) -> None:
        events.on_transition.append(self.transition)
        events.on_alarm.append(self.publisher.on_alarm)
        events.on_keys.append(self.keys)
        events.on_frame.append(self.frame)

    def transition(self, t: Transition) -> None:
        self.publisher.on_status(t.target, t.reason)

    def keys(self, event: KeysCommitted) -> None:
        self.publisher.on_keys_committed(event.block_id, event.keys)

    def frame(self, r: FrameReport) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self.publisher.on_frame_qber(
            FrameQber(
                frame=r.frame,
                qber=r.window_qber,
                qber_bound=r.window_bound,
                window_bits=self.engine.alarm_test.window_bits,
                sifted_bits=r.sifted_key_bits,
                block=r.block_id,
                test_bits=r.test_bits,
                test_errors=r.test_errors,
                detections=r.detections,
                rates={
                    # Detections per second of (simulated) light; secret bits per
                    # second of wall clock since the node started.
                    "detections": r.detections / self._frame_s,
                    "secret_bits": self.engine.key_bits_committed / elapsed,
                },
            )
        )

    def store_full(self, full: bool) -> None:
        """A full outbox pauses key production; keys are never dropped."""
        if full:
            self.engine.pause(_STORE_FULL)
        else:
            self.engine.resume(_STORE_FULL)

    async def command(self, command: CommandMessage) -> dict[str, Any]:
        """pause / resume / recalibrate / status / eve; :class:`CommandRefused` changes
        nothing."""
        engine, name = self.engine, command.command
        if name == "status":
            return {"link": engine.status()}
        if name in ("pause", "resume", "recalibrate") and not engine.alice:
            raise CommandRefused(f"Alice coordinates the link: send {name} to Alice's node")
        if name == "pause":
            engine.pause(_COMMAND)
            return {"paused": engine.status()["paused"]}
        if name == "resume":
            engine.resume(_COMMAND)
            return {"paused": engine.status()["paused"]}
        if name == "recalibrate":
            engine.request_recalibration()
            return {"recalibration": "before the next block"}
        if name == "eve":
            if not self.allow_simulated or self.sim_link is None:
                raise CommandRefused("eavesdropper control exists only on a simulated link")
            model = command.eve_model or "off"
            spec = "none" if model == "off" else f"{model}:{command.eve_fraction or 1.0:g}"
            try:
                now = self.sim_link.set_eavesdropper(spec)
            except ValueError as exc:
                raise CommandRefused(str(exc)) from None
            _log.warning("eavesdropper switched (MQTT command)", eavesdropper=now)
            return {"eavesdropper": now}
        raise CommandRefused(f"unknown command {name!r}")


@dataclass
class Daemon:
    """One node: its config, store, authentication, instruments and link engine."""

    config: NodeConfig
    config_path: Path
    notifier: Notifier = field(default_factory=Notifier)
    post: PostProcessing | None = None
    events: LinkEvents = field(default_factory=LinkEvents)
    engine: LinkEngine | None = None
    publisher: MqttPublisher | None = None
    health: HealthRecorder | None = None
    signals: bool = True  # False when several nodes share a process (qkdd demo)
    _stopping: bool = False
    _stop_guard: threading.Timer | None = None

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
        sim_link: SimulatedLink | None = None
        control: ControlServer | None = None
        metrics: MetricsServer | None = None
        try:
            try:
                load_auth_state(store, role=cfg.node.role.value, link=cfg.node.link)
                session = AuthSession(store)
            except AuthError as exc:
                raise DaemonError(str(exc)) from None
            # From here `qkdd status` sees the node, also while instruments open or the
            # simulated fibre waits for the other end (which can take a minute).
            self.health = self._health(cfg.simulated)
            self.health.startup("opening instruments")
            opened = await open_instruments(
                cfg.instruments, allow_simulated=cfg.node.allow_simulated
            )
            unusable = [f"{i.name}: {i.reason}" for i in opened if not i.usable]
            if unusable:
                raise DaemonError("instruments unusable: " + "; ".join(unusable))
            simulated = any(i.backend is BackendUsed.SIMULATED for i in opened)
            self.health.simulated = simulated  # "auto" is decided only now
            basis_record = None
            if cfg.simulation is not None and simulated:
                self.health.startup("waiting for the simulated fibre to the other end")
                sim_link = SimulatedLink(cfg, opened)
                await sim_link.attach()
                if sim_link.active_basis:
                    basis_record = sim_link.basis_record
            tx, rx, rng = quantum_path(cfg, opened, basis_record)
            if sim_link is not None and isinstance(rx, InstrumentReceiver):
                sim_link.receiver = rx
                control = ControlServer(
                    cfg.node.state_dir / CONTROL_SOCKET, sim_link, self._status_text
                )
                await control.start()
            post = self.post
            if post is None:
                standard = StandardPostProcessing()
                missing = standard.check()
                if missing:
                    _log.error("post-processing incomplete: blocks cannot finish", missing=missing)
                post = standard
            if cfg.peer is None:
                raise DaemonError(f"{self.config_path}: peer: missing ([peer] is needed to run)")
            slots = delivery_slots(cfg)
            peer = cfg.peer.model_copy(update={"consumer_slots": slots})
            settings = EngineSettings(
                node_id=cfg.node.id,
                link=cfg.node.link,
                role=cfg.node.role.value,
                protocol=cfg.protocol,
                peer=peer,
                simulated=simulated,
                simulation=(
                    cfg.simulation.model_dump(mode="json") if cfg.simulation is not None else None
                ),
            )
            keys = BlockKeys(store, session, link=cfg.node.link, slots=slots)
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
                on_fault=sim_link.recover if sim_link is not None else None,
            )
            _log.info(
                "node starting",
                node=cfg.node.id,
                role=cfg.node.role.value,
                link=cfg.node.link,
                simulated=simulated,
                secret_id=session.secret_id,
            )
            self.health.startup("instruments open; starting the link")
            if "mqtt" in cfg.model_fields_set:
                self.publisher = self._publisher(store, slots, simulated, sim_link)
            if cfg.metrics.listen is not None:
                metrics = MetricsServer(cfg.metrics.listen, self.health.snapshot)
                try:
                    await metrics.start()
                except OSError as exc:
                    raise DaemonError(f"metrics.listen {cfg.metrics.listen}: {exc}") from None
            self.events.on_transition.append(lambda t: self._status())
            self._install_signals()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._run_engine())
                group.create_task(self._watchdog())
                group.create_task(self.health.run(self._stop_requested))
                if self.publisher is not None:
                    group.create_task(self._run_publisher(self.publisher))
                self.notifier.notify(ready=1, status=self._status_text())
        except DaemonError as exc:
            if self.health is not None:
                self.health.startup(f"cannot run: {exc}")
            raise
        finally:
            self.notifier.notify(stopping=1, status="stopping")
            self._remove_signals()
            # Every step bounded: a peer or fibre that stopped reading must not hold
            # the process after SIGTERM.
            if self.health is not None:
                self.health.close()
            if metrics is not None:
                await _bounded(metrics.close())
            if control is not None:
                await _bounded(control.close())
            if sim_link is not None:
                await _bounded(sim_link.close())
            await _bounded(close_instruments(opened))
            # A reconciliation running in the worker cannot be interrupted; nothing in it
            # touches the store, so the process need not wait for it (see run_node).
            executor.shutdown(wait=False, cancel_futures=True)
            if session is not None:
                session.close()
            store.close()
        return 0

    def _health(self, simulated: bool) -> HealthRecorder:
        """The health snapshot (``qkdd status``) and the metrics built on it, fed by the
        same link events as MQTT."""
        cfg = self.config
        sinks = [textfile_sink(cfg.metrics.textfile)] if cfg.metrics.textfile else []
        recorder = HealthRecorder(
            cfg.node.state_dir,
            node=cfg.node.id,
            link=cfg.node.link,
            role=cfg.node.role.value,
            simulated=simulated,
            mqtt_connected=self._mqtt_connected if "mqtt" in cfg.model_fields_set else None,
            sinks=sinks,
        )
        recorder.attach(self.events)
        return recorder

    def _mqtt_connected(self) -> bool:
        return self.publisher is not None and self.publisher.connected.is_set()

    def _publisher(
        self,
        store: StateStore,
        slots: tuple[str, ...],
        simulated: bool,
        sim_link: SimulatedLink | None,
    ) -> MqttPublisher:
        cfg, engine = self.config, self.engine
        assert engine is not None
        allow_sim = cfg.node.allow_simulated and sim_link is not None
        wiring: MqttWiring | None = None

        def store_full(full: bool) -> None:
            # The publisher raises store_full itself (not through the link's events).
            if self.health is not None:
                self.health.alarm(AlarmEvent(AlarmKind.STORE_FULL, full))
            if wiring is not None:
                wiring.store_full(full)
            elif full:  # already full at start: pause before the first block
                engine.pause(_STORE_FULL)

        try:
            publisher = MqttPublisher(
                cfg.mqtt,
                store,
                node=cfg.node.id,
                link=cfg.node.link,
                role=cfg.node.role.value,
                slots=slots,
                simulated=simulated,
                allow_simulated=allow_sim,
                command_handler=lambda c: wiring.command(c) if wiring else _not_ready(),
                on_store_full=store_full,
                versions={"protocol": str(PROTOCOL_VERSION)},
            )
        except DeliveryError as exc:
            raise DaemonError(str(exc)) from None
        wiring = MqttWiring(publisher, engine, sim_link=sim_link, allow_simulated=allow_sim)
        wiring.attach(self.events)
        return publisher

    async def _run_publisher(self, publisher: MqttPublisher) -> None:
        """The publisher reconnects by itself; anything else it raises is logged and it
        starts again, so MQTT never stops key production (keys wait in the outbox)."""
        while not self._stopping:
            try:
                await publisher.run()
                return
            except Exception:
                _log.exception("MQTT publisher failed; restarting it")
                for _ in range(50):  # 5 s, but stop promptly
                    if self._stop_requested():
                        return
                    await asyncio.sleep(0.1)

    def _stop_requested(self) -> bool:
        return self._stopping

    async def _run_engine(self) -> None:
        assert self.engine is not None
        try:
            await self.engine.run()
        finally:
            self._stopping = True
            if self.publisher is not None:
                await self.publisher.stop()

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
        if not self.signals:
            return
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _remove_signals(self) -> None:
        if not self.signals:
            return
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def stop(self, why: str = "stop") -> None:
        _log.info("stopping", signal=why)
        self.notifier.notify(stopping=1, status="stopping")
        if self.signals and self._stop_guard is None:  # the process is ours to end
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            self._stop_guard = threading.Timer(STOP_DEADLINE_S, _stop_overdue, (loop,))
            self._stop_guard.daemon = True
            self._stop_guard.start()
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
            for name in ("node", "instruments", "protocol", "peer", "mqtt", "metrics")
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


async def _not_ready() -> dict[str, Any]:
    raise CommandRefused("the node is still starting")


async def _bounded(step: Awaitable[Any], seconds: float = 3.0) -> None:
    try:
        await asyncio.wait_for(step, seconds)
    except Exception as exc:  # shutting down: note it and go on
        _log.warning("shutdown step did not finish", error=f"{type(exc).__name__}: {exc}")


def run_node(config: NodeConfig, config_path: Path, **daemon_args: Any) -> int:
    """Run a node until SIGTERM; returns the exit code."""
    daemon = Daemon(config, config_path, **daemon_args)
    try:
        return asyncio.run(daemon.run())
    except DaemonError as exc:
        _log.error("node cannot run", error=str(exc))
        raise
    finally:
        if daemon._stop_guard is not None:
            daemon._stop_guard.cancel()


def _stop_overdue(loop: asyncio.AbstractEventLoop | None) -> None:
    _log.error(
        "shutdown overdue: exiting without waiting further; thread and task stacks follow "
        "on stderr",
        deadline_s=STOP_DEADLINE_S,
    )
    with contextlib.suppress(Exception):
        faulthandler.dump_traceback(sys.stderr, all_threads=True)
    # A loop idle in select() is waiting for some task: where each one waits.
    with contextlib.suppress(Exception):
        for task in asyncio.all_tasks(loop) if loop is not None else ():
            print(f"\nTask {task.get_name()} awaits:", file=sys.stderr)
            for line in _await_chain(task.get_coro()):
                print(f"  {line}", file=sys.stderr)
    exit_now(1)


def _await_chain(awaitable: object) -> list[str]:
    """Where a suspended coroutine waits: each coroutine (or generator) frame down its
    ``await`` chain, then what the innermost one awaits (task.print_stack shows only the
    outermost frame)."""
    lines: list[str] = []
    while awaitable is not None and len(lines) < 100:
        frame = next(
            (getattr(awaitable, a) for a in ("cr_frame", "gi_frame", "ag_frame")
             if getattr(awaitable, a, None) is not None),
            None,
        )  # fmt: skip
        if frame is None:
            lines.append(f"-> {awaitable!r}"[:300])
            break
        code = frame.f_code
        lines.append(f'File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        awaitable = next(
            (getattr(awaitable, a) for a in ("cr_await", "gi_yieldfrom", "ag_await")
             if getattr(awaitable, a, None) is not None),
            None,
        )  # fmt: skip
    return lines


def exit_now(code: int) -> None:
    """End the process without waiting for a post-processing thread still computing
    (the store is closed and every durable step is done: the work is thrown away)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
