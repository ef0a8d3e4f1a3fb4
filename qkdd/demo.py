"""``qkdd demo``: one simulated link, both roles in one process, a consumer at each end.

Everything is made fresh in a temporary directory: the authentication secret (as
``qkdd init-secret`` makes it), a consumer secret per end (as ``qkdd consumer add``),
the state stores. The two :class:`~qkdd.daemon.Daemon` objects are the ones ``qkdd
run`` uses, with MQTT wired the same way, on the broker given or on an embedded one
(a Mosquitto binary when one is installed, else amqtt on a thread of this process). A telemetry
subscriber feeds the view of ``qkdd watch``; at ``eve_at`` seconds the demo sends the
``eve`` command to Bob's node over MQTT, as any operator could.

Keys are simulated (``simulated: true`` everywhere) and the demo's broker has no
authentication: it listens on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from qkdd.auth.bootstrap import DEFAULT_UNITS_PER_DIRECTION, generate_secret, write_secret_file
from qkdd.config import NodeConfig, parse_config
from qkdd.daemon import Daemon
from qkdd.logging import configure_logging
from qkdd.mqtt.client import broker_session, link_topic
from qkdd.mqtt.config import MqttConfig
from qkdd.mqtt.consumer import ConsumerConfig, KeyConsumer, ReceivedKey
from qkdd.mqtt.messages import AlarmMessage, CommandReply, QberMessage
from qkdd.mqtt.publisher import consumer_secret_name
from qkdd.mqtt.watch import LinkBoard, render
from qkdd.physics.expected import LinkModel
from qkdd.postprocessing.finite_key import SecurityParameters
from qkdd.postprocessing.keyrate import ProtocolParameters, key_rate_curve
from qkdd.store import SecretStore, StateStore

LINK = "demo"
SLOT = "default"
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto")

# The example link of config/alice.toml and config/bob.toml (2 km, 1 GHz), with
# demo-sized blocks (DESIGN §7): 2.5·10^7 pulses in 10 frames of 2.5 ms, and p_K = 0.7
# so that the test basis bounds the phase error at n_K ≈ 4·10^5 sifted key bits
# (`qkdd keyrate` gives ~7·10^-3 secret bits per pulse: some hundreds of keys a block).
PROTOCOL: dict[str, Any] = {
    "slot_rate_hz": 1e9,
    "frame_duration_s": 0.0025,
    "block_pulses": 25_000_000,
    "p_key_basis": 0.7,
    "intensities": {"mu": [0.5, 0.1, 0.0002], "probabilities": [0.5, 0.3, 0.2]},
}
SIMULATION: dict[str, Any] = {
    "fibre": "unix",
    "channel": {
        "distance_km": 2.0,
        "attenuation_db_per_km": 0.2,
        "extra_loss_db": 0.0,
        "cable_offset_ns": 123.4,
        "misalignment": 0.005,
    },
    "receiver": {"basis_choice": "active", "optics_efficiency": 1.0},
    "detectors": {
        "efficiency": 0.2,
        "dark_count": 1e-7,
        "afterpulse": 0.0,
        "jitter_ps": 50.0,
        "dead_time_ns": 10.0,
    },
    "eavesdropper": {"model": "none"},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


# -- the embedded broker ---------------------------------------------------------------


class EmbeddedBroker:
    """A loopback broker for the demo only (anonymous: the one exception of DESIGN §5):
    Mosquitto as a child process when installed (``kind="auto"``), else amqtt here."""

    def __init__(self, workdir: Path, kind: str = "auto") -> None:
        self.workdir = workdir
        self.port = free_port()
        binary = find_mosquitto() if kind in ("auto", "mosquitto") else None
        if kind == "mosquitto" and binary is None:
            raise RuntimeError("no mosquitto binary found")
        self.binary = binary
        self.kind = "mosquitto" if binary else "amqtt"
        self._process: subprocess.Popen[bytes] | None = None
        self._amqtt: threading.Thread | None = None
        self._amqtt_loop: asyncio.AbstractEventLoop | None = None
        self._amqtt_stop: asyncio.Event | None = None

    @property
    def mqtt(self) -> MqttConfig:
        # amqtt speaks MQTT 3.1.1; Mosquitto speaks 5.
        protocol = "5" if self.kind == "mosquitto" else "3.1.1"
        return MqttConfig(host="127.0.0.1", port=self.port, protocol=protocol)

    @property
    def description(self) -> str:
        return f"embedded {self.kind} on 127.0.0.1:{self.port} (loopback, no authentication)"

    async def start(self) -> None:
        if self.binary is not None:
            conf = self.workdir / "mosquitto.conf"
            lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
            if os.geteuid() == 0:
                lines.insert(0, "user root")
            conf.write_text("\n".join(lines) + "\n")
            # Popen returns at once (no waiting on the child): fine on the event loop.
            self._process = subprocess.Popen(  # noqa: ASYNC220
                [self.binary, "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=(self.workdir / "mosquitto.log").open("wb"),
                # In the demo's process group, and told to die with the demo: a killed
                # demo never leaves its broker behind.
                # Started before the demo runs any thread, so preexec_fn is safe here.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
            await self._wait_listening()
            return
        # amqtt gets a thread and event loop of its own: on the demo's loop it would
        # queue telemetry behind the daemons' work and the view would lag by tens of seconds.
        started = threading.Event()
        failure: list[BaseException] = []
        self._amqtt = threading.Thread(
            target=self._amqtt_main, args=(started, failure), name="amqtt", daemon=True
        )
        self._amqtt.start()
        await asyncio.to_thread(started.wait, 10)
        if failure:
            raise RuntimeError(f"amqtt did not start: {failure[0]}")
        await self._wait_listening()

    def _amqtt_main(self, started: threading.Event, failure: list[BaseException]) -> None:
        from amqtt.broker import Broker  # type: ignore[import-untyped]  # noqa: PLC0415

        async def serve() -> None:
            broker = Broker(
                {
                    "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                    "plugins": {
                        "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                            "allow_anonymous": True
                        }
                    },
                }
            )
            try:
                await broker.start()
            except BaseException as exc:
                failure.append(exc)
                started.set()
                raise
            self._amqtt_loop = asyncio.get_running_loop()
            self._amqtt_stop = asyncio.Event()
            started.set()
            try:
                await self._amqtt_stop.wait()
            finally:
                with contextlib.suppress(Exception):
                    await broker.shutdown()

        with contextlib.suppress(BaseException):
            asyncio.run(serve())

    async def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError("mosquitto exited at start (see mosquitto.log)")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise RuntimeError("the embedded broker did not start")

    def kill(self) -> None:
        """SIGKILL the Mosquitto child (amqtt dies with this process)."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def stop(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            try:
                await asyncio.to_thread(self._process.wait, 10)
            except subprocess.TimeoutExpired:
                self.kill()
            self._process = None
        if self._amqtt is not None:
            if self._amqtt_loop is not None and self._amqtt_stop is not None:
                with contextlib.suppress(RuntimeError):
                    self._amqtt_loop.call_soon_threadsafe(self._amqtt_stop.set)
            await asyncio.to_thread(self._amqtt.join, 10)
            self._amqtt = None


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the demo's process dies."""
    with contextlib.suppress(Exception):
        import ctypes  # noqa: PLC0415

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# -- the link -------------------------------------------------------------------------


def node_config(
    role: str, workdir: Path, peer_port: int, mqtt: MqttConfig, seed: int
) -> NodeConfig:
    """One end of the demo link: simulated instruments, fresh state directory; ``seed``
    (the same at both ends, checked in the handshake) seeds the simulated physics."""
    instruments: dict[str, Any] = (
        {
            "laser": {"class": "laser", "backend": "simulated"},
            "encoder": {"class": "state_encoder", "backend": "simulated"},
            "qrng": {"class": "random_source", "backend": "simulated"},
        }
        if role == "alice"
        else {
            "spd": {"class": "detector", "backend": "simulated"},
            "tagger": {"class": "time_tagger", "backend": "simulated"},
            "qrng": {"class": "random_source", "backend": "simulated"},
        }
    )
    data: dict[str, Any] = {
        "node": {
            "id": role,
            "role": role,
            "link": LINK,
            "state_dir": str(workdir / role),
            "allow_simulated": True,
        },
        "instruments": instruments,
        "protocol": PROTOCOL,
        "peer": {"listen": role == "alice", "host": "127.0.0.1", "port": peer_port},
        "mqtt": mqtt.model_dump(mode="json", exclude_none=True),
        "consumers": [{"name": SLOT}],
        "simulation": {**SIMULATION, "seed": seed, "fibre_path": ""},
    }
    data["simulation"]["fibre_path"] = str(workdir / "fibre.sock")
    return parse_config(data, f"<demo {role}>")


def install_secrets(workdir: Path, configs: dict[str, NodeConfig]) -> dict[str, ConsumerConfig]:
    """The link's authentication secret (one copy per end) and a consumer secret per
    end; returns each end's consumer config."""
    bundle = generate_secret(LINK, DEFAULT_UNITS_PER_DIRECTION)
    try:
        for role, cfg in configs.items():
            write_secret_file(cfg.node.state_dir, bundle, role)
    finally:
        bundle.wipe()
    consumers = {}
    for role, cfg in configs.items():
        secret = bytearray(secrets.token_bytes(32))
        secret_id = str(uuid.uuid4())
        try:
            with StateStore.open(cfg.node.state_dir) as store:
                SecretStore(store).put(consumer_secret_name(SLOT), "consumer", secret_id, secret)
            consumers[role] = ConsumerConfig.model_validate(
                {
                    "consumer": {
                        "name": SLOT,
                        "node": cfg.node.id,
                        "link": LINK,
                        "secret_id": secret_id,
                        "secret": secret.hex(),
                        "state_dir": str(workdir / f"{role}-consumer"),
                    },
                    "mqtt": cfg.mqtt.model_dump(mode="json", exclude_none=True),
                    "output": {"kind": "none"},
                }
            )
        finally:
            secret[:] = bytes(len(secret))
    return consumers


def theory_bits_per_block(sifted_key_bits: int) -> float:
    """``qkdd keyrate``'s finite-key secret bits for one block of this link."""
    ch, det = SIMULATION["channel"], SIMULATION["detectors"]
    mu, probs = PROTOCOL["intensities"]["mu"], PROTOCOL["intensities"]["probabilities"]
    point = key_rate_curve(
        LinkModel(
            alpha_db_per_km=ch["attenuation_db_per_km"],
            eta_bob=det["efficiency"],
            dark_count=det["dark_count"],
            misalignment=ch["misalignment"],
        ),
        [ch["distance_km"]],
        ProtocolParameters(
            mu1=mu[0],
            mu2=mu[1],
            mu3=mu[2],
            p_mu1=probs[0],
            p_mu2=probs[1],
            p_key=PROTOCOL["p_key_basis"],
        ),
        block_size=max(sifted_key_bits, 1),
        security=SecurityParameters(1e-10, 1e-15, 0.15),
    )[0]
    return float(point.rate_per_pulse) * float(PROTOCOL["block_pulses"])


# -- what the demo saw ----------------------------------------------------------------


@dataclass
class EndKeys:
    """Keys one consumer handed over: counts and bits, and the ids not yet compared
    with the other end (their bytes kept only until compared, then wiped)."""

    count: int = 0
    bits: int = 0
    blocks: dict[int, int] = field(default_factory=dict)  # block → delivered bits
    unmatched: dict[str, bytearray] = field(default_factory=dict, repr=False)


@dataclass
class DemoState:
    started: float = field(default_factory=time.monotonic)
    ends: dict[str, EndKeys] = field(default_factory=lambda: {"alice": EndKeys(), "bob": EndKeys()})
    identical: int = 0
    different: int = 0
    alarms_seen: set[str] = field(default_factory=set)
    events: list[str] = field(default_factory=list)
    eve: str = "off"
    sifted_per_block: dict[int, int] = field(default_factory=dict)
    theory_bits: float | None = None
    theory_n_k: int | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def note(self, text: str, out: Callable[[str], None] | None) -> None:
        line = f"[{self.elapsed():6.1f} s] {text}"
        self.events.append(line)
        del self.events[:-6]
        if out is not None:
            out(line)

    def key(self, role: str, key: ReceivedKey) -> None:
        mine, other = self.ends[role], self.ends["bob" if role == "alice" else "alice"]
        mine.count += 1
        mine.bits += key.bits
        mine.blocks[key.block] = mine.blocks.get(key.block, 0) + key.bits
        theirs = other.unmatched.pop(key.key_id, None)
        if theirs is None:
            mine.unmatched[key.key_id] = bytearray(key.material)
            return
        if theirs == key.material:
            self.identical += 1
        else:
            self.different += 1
        theirs[:] = bytes(len(theirs))

    def bits_per_block(self) -> float | None:
        """Mean key bits delivered at Alice's end per complete block (all but the
        newest block, whose keys may still be arriving)."""
        blocks = sorted(self.ends["alice"].blocks.items())[:-1]
        return sum(bits for _, bits in blocks) / len(blocks) if blocks else None

    def summary(self) -> str:
        a, b = self.ends["alice"], self.ends["bob"]
        alarms = ",".join(sorted(self.alarms_seen)) or "none"
        return (
            f"delivered keys: alice={a.count} bob={b.count} identical={self.identical} "
            f"different={self.different}; alarms seen: {alarms}"
        )


def _panel(state: DemoState, broker: str) -> Table:
    a, b = state.ends["alice"], state.ends["bob"]
    table = Table(title="qkdd demo (SIMULATED link: these keys are not secure)", expand=True)
    table.add_column("what")
    table.add_column("value")
    table.add_row("broker", broker)
    table.add_row("elapsed", f"{state.elapsed():.1f} s; eavesdropper {state.eve}")
    table.add_row(
        "keys delivered",
        f"alice {a.count} ({a.bits} bits), bob {b.count} ({b.bits} bits); "
        f"identical at both ends {state.identical}, different {state.different}",
    )
    rate = a.bits / max(state.elapsed(), 1e-9)
    measured = state.bits_per_block()
    per_block = "-" if measured is None else f"{measured:.0f} bits/block"
    theory = (
        f"{state.theory_bits:.0f} bits/block (keyrate, n_K = {state.theory_n_k})"
        if state.theory_bits is not None
        else "after the first block"
    )
    table.add_row(
        "key rate",
        f"{rate:.0f} bit/s delivered; {per_block} delivered, theory {theory} "
        "(before the authentication refill)",
    )
    table.add_row("alarms seen", ", ".join(sorted(state.alarms_seen)) or "none")
    table.add_row("keys", "e: eavesdropper on/off at Bob   q: quit   (Ctrl-C also quits)")
    table.add_row("events", "\n".join(state.events) or "-")
    return table


# -- running it -----------------------------------------------------------------------


@dataclass
class DemoOptions:
    broker: MqttConfig | None = None  # None: an embedded broker
    embedded: str = "auto"  # auto | mosquitto | amqtt
    duration_s: float | None = None
    eve_at_s: float | None = None
    eve_model: str = "intercept-resend"
    live: bool = True
    workdir: Path | None = None  # kept when given (logs, stores); else a temporary one


async def run_demo(options: DemoOptions, console: Console) -> DemoState:
    """Run until ``duration_s`` (or cancelled); returns what was seen."""
    with contextlib.ExitStack() as stack:
        if options.workdir is not None:
            workdir = options.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qkdd-demo-")))
        return await _run(options, console, workdir)
    raise AssertionError("unreachable")  # pragma: no cover


async def _run(options: DemoOptions, console: Console, workdir: Path) -> DemoState:
    log_path = workdir / "demo.log"
    log_file: TextIO = log_path.open("a")
    # The daemons' logs go to a file: the terminal shows the view.
    configure_logging("info", json=True, stream=log_file)
    state = DemoState()
    stack_guard: list[threading.Timer] = []
    plain: Callable[[str], None] | None = None if options.live else _print
    embedded: EmbeddedBroker | None = None
    if options.broker is None:
        embedded = EmbeddedBroker(workdir, options.embedded)
        await embedded.start()
        mqtt, broker_text = embedded.mqtt, embedded.description
    else:
        mqtt, broker_text = options.broker, f"{options.broker.host}:{options.broker.port}"
    try:
        port = free_port()
        seed = secrets.randbits(63)
        configs = {role: node_config(role, workdir, port, mqtt, seed) for role in ("alice", "bob")}
        consumer_configs = install_secrets(workdir, configs)
        state.note(f"broker: {broker_text}; state and log in {workdir}", plain)
        daemons = {
            role: Daemon(cfg, workdir / f"{role}.toml", signals=False)
            for role, cfg in configs.items()
        }
        consumers = {
            role: KeyConsumer(cc, _sink(state, role)) for role, cc in consumer_configs.items()
        }
        async with asyncio.TaskGroup() as group:
            runs = [group.create_task(d.run()) for d in daemons.values()]
            cons = [group.create_task(c.run()) for c in consumers.values()]
            try:
                await _view(
                    options=options,
                    console=console,
                    state=state,
                    mqtt=mqtt,
                    broker_text=broker_text,
                    plain=plain,
                )
            finally:
                state.note("stopping: both nodes finish or abandon their block", plain)
                # --duration promises an exit: should a shutdown step hang (a thread
                # blocked in a simulated instrument), leave anyway once it is overdue.
                guard = threading.Timer(45, _overdue_exit, (state, embedded, workdir))
                guard.daemon = True
                guard.start()
                stack_guard.append(guard)
                for daemon in daemons.values():
                    daemon.stop("demo ending")
                await _settle(runs, 30)
                for consumer in consumers.values():
                    await consumer.stop()
                await _settle(cons, 10)
                for consumer in consumers.values():
                    consumer.close()
    finally:
        if embedded is not None:
            await embedded.stop()
        log_file.close()
        for guard in stack_guard:
            guard.cancel()
    return state


def _overdue_exit(state: DemoState, embedded: EmbeddedBroker | None, workdir: Path) -> None:
    if embedded is not None:
        embedded.kill()  # never leave the broker behind
    where = workdir / "shutdown-overdue.txt"
    with contextlib.suppress(OSError), where.open("w") as out:
        faulthandler.dump_traceback(out, all_threads=True)  # what held the exit, for a report
    print(
        f"demo: shutdown overdue; exiting without waiting further (stacks in {where})",
        file=sys.stderr,
        flush=True,
    )
    os._exit(0 if state.different == 0 else 1)


async def _settle(tasks: list[asyncio.Task[Any]], within_s: float) -> None:
    """Wait for tasks to end; cancel what has not ended by then (a bounded exit)."""
    _, pending = await asyncio.wait(tasks, timeout=within_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)


def _print(line: str) -> None:
    """Plain output: one line each, never wrapped (for logs and tests)."""
    print(line, flush=True)


def _sink(state: DemoState, role: str) -> Callable[[ReceivedKey], Any]:
    async def take(key: ReceivedKey) -> None:
        state.key(role, key)

    return take


async def _view(
    *,
    options: DemoOptions,
    console: Console,
    state: DemoState,
    mqtt: MqttConfig,
    broker_text: str,
    plain: Callable[[str], None] | None,
) -> None:
    board = LinkBoard()
    loop = asyncio.get_running_loop()
    bob_cmd = f"{link_topic(mqtt, 'bob', LINK)}/cmd"
    live = (
        Live(
            Group(render(board), _panel(state, broker_text)), console=console, refresh_per_second=4
        )
        if options.live
        else None
    )
    keys: asyncio.Queue[str] = asyncio.Queue()
    async with broker_session(mqtt, f"qkdd-demo-view-{os.getpid()}") as client:
        for kind in ("status", "qber", "alarm"):
            await client.subscribe(f"{mqtt.base_topic}/+/links/{LINK}/{kind}", qos=1)
        await client.subscribe(f"{bob_cmd}/reply", qos=1)
        eve_sent = False
        next_line = 0.0
        messages = aiter(client.messages)

        async def eve(model: str) -> None:
            command = {"command": "eve", "eve_model": model, "request_id": "demo-eve"}
            await client.publish(bob_cmd, json.dumps(command), qos=1)
            state.note(f"eve command sent to bob: {model}", plain)

        with (
            _keypresses(keys),
            _quit_on_signals(keys),
            live or contextlib.nullcontext(),
        ):
            while options.duration_s is None or state.elapsed() < options.duration_s:
                eve_due = options.eve_at_s is not None and state.elapsed() >= options.eve_at_s
                if eve_due and not eve_sent:
                    eve_sent = True
                    await eve(options.eve_model)
                pressed = "" if keys.empty() else keys.get_nowait()
                if pressed == "q":
                    break
                if pressed == "e":
                    await eve(options.eve_model if state.eve in ("off", "none") else "off")
                try:
                    message = await asyncio.wait_for(anext(messages), 0.25)
                except TimeoutError:
                    message = None
                if message is not None and isinstance(message.payload, bytes):
                    await _fold(
                        state=state,
                        board=board,
                        topic=message.topic.value,
                        payload=message.payload,
                        plain=plain,
                        loop=loop,
                    )
                if live is not None:
                    live.update(Group(render(board), _panel(state, broker_text)))
                elif state.elapsed() >= next_line:
                    next_line = state.elapsed() + 2.0
                    _print(_plain_line(state, board))
    _print(state.summary())


async def _fold(
    *,
    state: DemoState,
    board: LinkBoard,
    topic: str,
    payload: bytes,
    plain: Callable[[str], None] | None,
    loop: asyncio.AbstractEventLoop,
) -> None:
    kind = topic.rsplit("/", 1)[-1]
    if kind == "reply":
        with contextlib.suppress(ValidationError):
            reply = CommandReply.model_validate_json(payload)
            if reply.ok:
                state.eve = str(reply.result.get("eavesdropper", state.eve))
            state.note(f"bob answered {reply.command}: {reply.result or reply.error}", plain)
        return
    board.update(topic, payload)
    if kind == "alarm" and payload:
        with contextlib.suppress(ValidationError):
            alarm = AlarmMessage.model_validate_json(payload)
            kind_name = str(alarm.kind)
            if alarm.active and kind_name not in state.alarms_seen:
                state.alarms_seen.add(kind_name)
                state.note(f"alarm {kind_name} [{alarm.level}] at {alarm.node}", plain)
    if kind == "qber" and payload:
        with contextlib.suppress(ValidationError):
            qber = QberMessage.model_validate_json(payload)
            if qber.node == "alice" and qber.block is not None:
                total = state.sifted_per_block.get(qber.block, 0) + qber.sifted_bits
                state.sifted_per_block[qber.block] = total
                if state.theory_bits is None and len(state.sifted_per_block) >= 2:
                    # The first block is complete once the second one starts.
                    first = min(state.sifted_per_block)
                    state.theory_n_k = state.sifted_per_block[first]
                    state.theory_bits = await loop.run_in_executor(
                        None, theory_bits_per_block, state.theory_n_k
                    )


@contextlib.contextmanager
def _quit_on_signals(keys: asyncio.Queue[str]) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM end the demo as ``q`` does: both nodes stop cleanly
    and the summary is printed."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, keys.put_nowait, "q")
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def _keypresses(keys: asyncio.Queue[str]) -> Iterator[None]:
    """Single key presses when stdin is a terminal (cbreak mode, restored after); also
    with ``--plain``, whose output may go to a pipe while the keyboard stays."""
    if not sys.stdin.isatty():
        yield
        return
    import termios  # noqa: PLC0415
    import tty  # noqa: PLC0415

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def read() -> None:
        with contextlib.suppress(OSError):
            for char in os.read(fd, 32).decode(errors="ignore").lower():
                keys.put_nowait(char)

    tty.setcbreak(fd, termios.TCSANOW)  # keep keys typed ahead
    loop.add_reader(fd, read)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _plain_line(state: DemoState, board: LinkBoard) -> str:
    rows = {row.node: row for row in board.rows.values()}
    parts = [f"t={state.elapsed():.0f}s"]
    for node in ("alice", "bob"):
        row = rows.get(node)
        parts.append(f"{node}={row.state if row else '?'}")
    alice = rows.get("alice")
    if alice is not None and alice.qber is not None:
        parts.append(
            f"qber={100 * alice.qber:.2f}% (lower bound {100 * (alice.qber_bound or 0):.2f}%)"
        )
    a, b = state.ends["alice"], state.ends["bob"]
    parts.append(f"keys alice={a.count} bob={b.count} identical={state.identical}")
    measured = state.bits_per_block()
    if state.theory_bits is not None and measured is not None:
        parts.append(f"bits/block {measured:.0f} (theory {state.theory_bits:.0f})")
    parts.append("alarms=" + (",".join(sorted(state.alarms_seen)) or "none"))
    return " ".join(parts)
