"""The link's MQTT publisher (aiomqtt): status, QBER, alarms, commands and sealed keys.

Topics under ``<base_topic>/<node>/links/<link>`` (DESIGN §5):

========================  ===  ==============  ===========================================
topic                     QoS  retained        payload (``qkdd.mqtt.messages``)
========================  ===  ==============  ===========================================
``status``                1    yes             StatusMessage; the Last Will says offline
``qber``                  0    no              QberMessage, per frame
``alarm``                 1    while active    AlarmMessage; the last clear removes it
``keys/<slot>``           1    never           SealedKeyMessage (or PlaintextKeyMessage)
``keys/<slot>/ack``       1    (subscribed)    AckMessage from the consumer
``cmd``                   1    (subscribed)    CommandMessage; replies: CommandReply
``cmd/reply``             1    no              MQTT 3.1.1 replies (and v5 without a
                                               response topic), matched by request_id
========================  ===  ==============  ===========================================

A key is delivered only when its consumer's tagged acknowledgement arrives (never on
the broker's PUBACK, unless ``plaintext_keys_auto_ack``); until then its stored
message is republished, byte for byte, after every (re)connect and every
``republish_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from qkdd import __version__
from qkdd.cancellation import cancel_and_wait
from qkdd.link.alarms import AlarmEvent, AlarmKind
from qkdd.link.states import LinkState
from qkdd.logging import get_logger
from qkdd.mqtt.client import IN_FLIGHT, broker_session, keep_connected, link_topic
from qkdd.mqtt.config import MqttConfig
from qkdd.mqtt.messages import (
    SCHEMA_VERSION,
    AckMessage,
    ActiveAlarm,
    AlarmMessage,
    CommandMessage,
    CommandReply,
    KeyMetadata,
    PlaintextKeyMessage,
    QberMessage,
    StatusMessage,
    now_utc,
)
from qkdd.mqtt.sealing import SlotKey
from qkdd.mqtt.seam import CommandHandler, CommandRefused, FrameQber
from qkdd.store.db import StateStore
from qkdd.store.keys import KeyMeta, KeyStore, SecretStore
from qkdd.store.outbox import Outbox, OutboxEntry, OutboxState

_log = get_logger("mqtt")

BASIC_COMMANDS: Final = frozenset({"pause", "resume", "recalibrate", "status"})
SIMULATION_COMMANDS: Final = frozenset({"eve"})
_ACK_BATCH: Final = 256
#: "keys delivered" is logged at most this often (with the count since the last line).
DELIVERY_LOG_S: Final = 10.0


def consumer_secret_name(slot: str) -> str:
    """The ``SecretStore`` name of a slot's consumer secret."""
    return f"consumer:{slot}"


class DeliveryError(RuntimeError):
    """Key delivery cannot start (a slot without a consumer secret, ...)."""


class _Stopped(Exception):
    """Internal: the session ends because :meth:`MqttPublisher.stop` was called."""


class MqttPublisher:
    """Publishes one link's telemetry and keys; implements ``qkdd.mqtt.seam.LinkPublisher``.

    Run :meth:`run` as a task on the daemon's event loop (it reconnects with back-off
    until :meth:`stop`). The seam methods may be called before it connects.
    """

    def __init__(
        self,
        mqtt: MqttConfig,
        store: StateStore,
        *,
        node: str,
        link: str,
        role: str,
        slots: Sequence[str],
        simulated: bool,
        allow_simulated: bool = False,
        command_handler: CommandHandler | None = None,
        on_store_full: Callable[[bool], None] | None = None,
        versions: Mapping[str, str] | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.mqtt = mqtt
        self.store = store
        self.node, self.link, self.role = node, link, role
        self.slots = tuple(slots)
        self.simulated = simulated
        self.allow_simulated = allow_simulated
        self.command_handler = command_handler
        self.on_store_full = on_store_full
        self.versions = {"qkdd": __version__, "schema": str(SCHEMA_VERSION), **(versions or {})}
        self.topic = link_topic(mqtt, node, link)
        self.outbox = Outbox(store)
        self.keys = KeyStore(store)
        self._backoff = backoff
        self._slot_keys = self._load_slot_keys()
        self._state = LinkState.STARTING.value
        self._reason = ""
        self._active: dict[AlarmKind, ActiveAlarm] = {}
        # Telemetry (status, QBER, alarms) in order; keys apart, so that an alarm never
        # waits behind a block of keys (each key waits for its PUBACK and a store write).
        self._queue: deque[tuple[str, str, bytes, int, bool, Any]] = deque()
        self._key_batches: deque[set[str]] = deque()
        self._telemetry_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self._store_full = False
        self.allowed_commands = BASIC_COMMANDS | (
            SIMULATION_COMMANDS if allow_simulated else frozenset()
        )
        # Counters for tests and the status command (no key material).
        self.acks_accepted = 0
        self._key_expiry = self._expiry_properties()
        self._delivered_unlogged = 0
        self._delivered_logged_at = -DELIVERY_LOG_S  # the first delivery logs at once
        self.acks_rejected = 0
        self.connections = 0
        self._check_store_full()

    def __repr__(self) -> str:
        return f"MqttPublisher({self.topic!r}, slots={list(self.slots)})"

    # -- seam (called by the daemon) --------------------------------------------------

    def on_status(self, state: LinkState | str, reason: str = "") -> None:
        self._state = str(state)
        self._reason = reason
        self._push("status", "", b"", 1, retain=True)

    def on_frame_qber(self, report: FrameQber) -> None:
        if self._client is None:
            return  # QoS 0 telemetry: nobody is waiting for stale frames
        message = QberMessage(
            node=self.node,
            link=self.link,
            frame=report.frame,
            block=report.block,
            qber=report.qber,
            qber_bound=report.qber_bound,
            window_bits=report.window_bits,
            test_bits=report.test_bits,
            test_errors=report.test_errors,
            detections=report.detections,
            gains=dict(report.gains),
            sifted_bits=report.sifted_bits,
            rates=dict(report.rates),
            simulated=self.simulated,
        )
        self._push("qber", f"{self.topic}/qber", message.to_json(), 0, retain=False)

    def on_alarm(self, event: AlarmEvent) -> None:
        # An active alarm raised again (each frame or block while the cause lasts) is
        # republished with its new values but logged only when it starts or clears.
        news = event.active != (event.kind in self._active)
        if event.active:
            since = self._active[event.kind].since if event.kind in self._active else now_utc()
            self._active[event.kind] = ActiveAlarm(
                kind=event.kind, level=event.level, values=dict(event.values), since=since
            )
        else:
            self._active.pop(event.kind, None)
        message = self._alarm_message(event.kind, dict(event.values), active=event.active)
        topic = f"{self.topic}/alarm"
        if self._active:
            self._push("alarm", topic, message.to_json(), 1, retain=True)
        else:
            # The last alarm cleared: tell live subscribers, then drop the retained one.
            self._push("alarm", topic, message.to_json(), 1, retain=False)
            self._push("alarm", topic, b"", 1, retain=True)
        if news:
            _log.info(
                "alarm published" if event.active else "alarm clear published",
                kind=str(event.kind),
                alarm_level=str(event.level),
                values=dict(event.values),
            )

    def on_keys_committed(self, block_id: int, keys: Sequence[KeyMeta]) -> None:
        """Seal the block's committed keys into the outbox (durably) and queue them.
        Keys already in the outbox (sealed at a restart, or given twice) are skipped."""
        entries = [self._seal(meta) for meta in keys if self.outbox.get(meta.key_id) is None]
        self.outbox.enqueue(entries)
        self._push("keys", "", b"", 1, retain=False, extra=[e.key_id for e in entries])
        self._check_store_full()
        _log.info("keys queued", block_id=block_id, key_count=len(entries))

    @property
    def accepting_keys(self) -> bool:
        return not self._store_full

    # -- life cycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, reconnect with back-off; returns after :meth:`stop`."""
        self._seal_backlog()
        await keep_connected(
            self._connect_and_serve,
            stop=self._stop,
            connected=self.connected,
            backoff=self._backoff,
        )

    async def stop(self) -> None:
        """Publish ``online: false`` (state STOPPED) and disconnect; :meth:`run` returns."""
        self._state = LinkState.STOPPED.value
        self._stop.set()

    def _will(self) -> aiomqtt.Will:
        return aiomqtt.Will(
            f"{self.topic}/status",
            self._status(online=False, state="UNKNOWN", reason="connection lost (Last Will)"),
            qos=1,
            retain=True,
        )

    async def _connect_and_serve(self) -> None:
        identifier = self.mqtt.client_id or f"qkdd-{self.node}-{self.link}"
        try:
            async with broker_session(self.mqtt, identifier, will=self._will()) as client:
                self._client = client
                self.connections += 1
                await client.subscribe(f"{self.topic}/keys/+/ack", qos=1)
                await client.subscribe(f"{self.topic}/cmd", qos=1)
                # Stale status/QBER items, and key items (every queued key goes out below),
                # are superseded by what is published now; alarm events keep their order.
                self._queue = deque(i for i in self._queue if i[0] == "alarm")
                self._key_batches.clear()
                await self._publish_status(client)
                self.connected.set()
                _log.info("connected to broker", host=self.mqtt.host, port=self.mqtt.port)
                await self._serve(client)
        finally:
            self._client = None
            self.connected.clear()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Run the session's tasks until the connection drops (raises MqttError) or
        :meth:`stop` (returns)."""
        tasks = [
            asyncio.create_task(self._receive(client)),
            # The backlog goes out while commands and acknowledgements are served
            # (a large outbox once held off every command until it was all sent).
            asyncio.create_task(self._republish(client)),
            asyncio.create_task(self._send(client)),
            asyncio.create_task(self._periodic(client)),
            asyncio.create_task(self._until_stopped(client)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            # Not a TaskGroup: one of these can swallow its cancellation (see
            # qkdd.cancellation) and would hold the group, and the daemon, forever.
            await cancel_and_wait(tasks)
        failures = [exc for t in tasks if not t.cancelled() and (exc := t.exception()) is not None]
        for exc in failures:  # a bug surfaces, also while stopping
            if not isinstance(exc, (_Stopped, aiomqtt.MqttError)):
                raise exc
        if any(isinstance(exc, _Stopped) for exc in failures):
            return
        if failures:
            raise failures[0]

    async def _until_stopped(self, client: aiomqtt.Client) -> None:
        await self._stop.wait()
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await client.publish(
                f"{self.topic}/status", self._status(online=False), qos=1, retain=True, timeout=5
            )
        raise _Stopped

    # -- outgoing ---------------------------------------------------------------------

    def _push(
        self, kind: str, topic: str, payload: bytes, qos: int, *, retain: bool, extra: Any = None
    ) -> None:
        if kind == "keys":
            self._key_batches.append(set(extra))
        else:
            self._queue.append((kind, topic, payload, qos, retain, extra))
        self._wake.set()

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._send_telemetry(client)
            while self._key_batches:
                await self._publish_keys(client, self._key_batches[0])
                self._key_batches.popleft()  # only once sent: a lost connection retries it

    async def _send_telemetry(self, client: aiomqtt.Client) -> None:
        """Send queued status, QBER and alarm messages, in order, ahead of any key."""
        async with self._telemetry_lock:
            while self._queue:
                kind, topic, payload, qos, retain, _extra = self._queue[0]
                if kind == "status":
                    await self._publish_status(client)
                else:
                    await client.publish(topic, payload, qos=qos, retain=retain)
                self._queue.popleft()  # only once sent: a lost connection retries it

    def _status(
        self, *, online: bool, state: str | None = None, reason: str | None = None
    ) -> bytes:
        return StatusMessage(
            node=self.node,
            link=self.link,
            role=self.role,
            state=self._state if state is None else state,
            online=online,
            simulated=self.simulated,
            versions=self.versions,
            reason=self._reason if reason is None else reason,
            store_full=self._store_full,
        ).to_json()

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        # Once stopping, a status still queued (e.g. STOPPED) must not overwrite the
        # retained ``online: false`` that _until_stopped publishes.
        online = not self._stop.is_set()
        await client.publish(
            f"{self.topic}/status", self._status(online=online), qos=1, retain=True
        )

    async def _publish_keys(
        self,
        client: aiomqtt.Client,
        only: set[str] | None = None,
        unpublished_for_s: float | None = None,
    ) -> None:
        queued = self.outbox.queued(unpublished_for_s=unpublished_for_s)
        entries = [e for e in queued if only is None or e.key_id in only]
        for start in range(0, len(entries), IN_FLIGHT):
            batch = entries[start : start + IN_FLIGHT]
            # QoS 1, never retained; each call returns on the broker's PUBACK.
            await asyncio.gather(
                *(
                    client.publish(
                        e.topic, e.payload, qos=1, retain=False, properties=self._key_expiry
                    )
                    for e in batch
                )
            )
            self.outbox.mark_published([e.key_id for e in batch])
            await self._send_telemetry(client)  # telemetry raised meanwhile goes first
            if self.mqtt.plaintext_keys_auto_ack:
                for key_id in self.outbox.deliver_many([e.key_id for e in batch]):
                    _log.warning(
                        "plaintext key counted delivered on the broker's PUBACK "
                        "(plaintext_keys_auto_ack): no consumer confirmed it",
                        key_id=key_id,
                    )
                self._check_store_full()

    def _expiry_properties(self) -> Properties | None:
        """MQTT 5: a key message expires at the broker after two republish intervals.
        The daemon resends every unacknowledged key each interval, so a consumer away
        for hours finds about one copy of each key queued in its session, not one per
        interval. No key is lost by it: the outbox keeps every key until it is
        acknowledged and sends it again."""
        if self.mqtt.protocol != "5":
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.MessageExpiryInterval = math.ceil(2 * self.mqtt.republish_interval_s)
        return properties

    def _alarm_message(
        self, kind: AlarmKind, values: dict[str, float | int], *, active: bool
    ) -> AlarmMessage:
        """One alarm event, with every alarm of the link still active."""
        return AlarmMessage(
            node=self.node,
            link=self.link,
            kind=kind,
            level=kind.level,
            values=values,
            active=active,
            active_alarms=list(self._active.values()),
        )

    async def _republish(self, client: aiomqtt.Client) -> None:
        # Active alarms first (retained), then every unacknowledged key.
        if self._active:
            last = next(reversed(self._active.values()))
            message = self._alarm_message(last.kind, last.values, active=True)
            await client.publish(f"{self.topic}/alarm", message.to_json(), qos=1, retain=True)
        await self._publish_keys(client)

    async def _periodic(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.mqtt.republish_interval_s)
            self._seal_backlog()
            if self.outbox.count_queued():
                # Only what has waited a whole interval unacknowledged: a key sent a
                # moment ago is not resent (a slow consumer would otherwise keep the
                # connection busy with repeats of a growing backlog).
                await self._publish_keys(client, unpublished_for_s=self.mqtt.republish_interval_s)

    # -- sealing ----------------------------------------------------------------------

    def _seal_backlog(self) -> None:
        """Seal committed keys that have no message yet (committed just before a crash,
        or never handed to :meth:`on_keys_committed`)."""
        backlog = self.outbox.committed_without_message(self.link)
        if backlog:
            self.outbox.enqueue([self._seal(meta) for meta in backlog])
            self._check_store_full()
            _log.info("sealed committed keys that had no message", key_count=len(backlog))

    def _load_slot_keys(self) -> dict[str, SlotKey]:
        secrets = SecretStore(self.store)
        keys = {}
        for slot in self.slots:
            found = secrets.get(consumer_secret_name(slot))
            if found is None:
                if self.mqtt.plaintext_keys_auto_ack:
                    continue
                raise DeliveryError(
                    f"slot {slot!r} has no consumer secret: run "
                    f"`qkdd consumer add {slot} -c CONFIG` at this node"
                )
            material = found[1]
            try:
                keys[slot] = SlotKey.derive(material, self.link, slot)
            finally:
                material[:] = bytes(len(material))
        return keys

    def _seal(self, meta: KeyMeta) -> OutboxEntry:
        if meta.consumer_slot not in self.slots:
            raise DeliveryError(f"key {meta.key_id} is for unknown slot {meta.consumer_slot!r}")
        header = KeyMetadata(
            link=meta.link,
            slot=meta.consumer_slot,
            key_id=meta.key_id,
            bits=meta.bits,
            block=meta.block_id,
            qber=meta.qber,
            eps_total=meta.eps_total,
            simulated=meta.simulated,
            created=meta.created,
        )
        material = self.keys.material(meta.key_id)
        try:
            if self.mqtt.plaintext_keys:
                payload = PlaintextKeyMessage(
                    **header.model_dump(), key_hex=material.hex()
                ).to_json()
                mode = "plaintext"
            else:
                payload = self._slot_keys[meta.consumer_slot].seal(header, material).to_json()
                mode = "sealed"
        finally:
            material[:] = bytes(len(material))
        topic = f"{self.topic}/keys/{meta.consumer_slot}"
        return OutboxEntry(meta.key_id, meta.consumer_slot, topic, mode, payload)

    def _check_store_full(self) -> None:
        full = self.outbox.count_queued() >= self.mqtt.outbox_limit
        if full == self._store_full:
            return
        self._store_full = full
        self.on_alarm(
            AlarmEvent(
                AlarmKind.STORE_FULL,
                active=full,
                values={"queued": self.outbox.count_queued(), "limit": self.mqtt.outbox_limit},
            )
        )
        self.on_status(self._state, "outbox full: key production paused" if full else "")
        if self.on_store_full is not None:
            self.on_store_full(full)

    # -- incoming ---------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        messages = aiter(client.messages)
        ack_prefix = f"{self.topic}/keys/"
        while True:
            # Take what has arrived (up to a bound) so that the acknowledgements among it
            # cost one durable transaction and one checkpoint, not one each.
            batch = [await anext(messages)]
            while len(client.messages) and len(batch) < _ACK_BATCH:
                batch.append(await anext(messages))
            acks: list[tuple[str, bytes]] = []
            for message in batch:
                topic = message.topic.value
                payload = message.payload if isinstance(message.payload, bytes) else b""
                if topic == f"{self.topic}/cmd":
                    if message.retain:
                        # A retained command would run again at every reconnect: refuse it.
                        reply = self._error(
                            _request_id_of(payload), None, "retained commands are refused"
                        )
                        await client.publish(f"{self.topic}/cmd/reply", reply.to_json(), qos=1)
                        continue
                    await self._command(client, payload, message.properties)
                elif topic.startswith(ack_prefix) and topic.endswith("/ack"):
                    acks.append((topic[len(ack_prefix) : -len("/ack")], payload))
            if acks:
                self._acks(acks)

    def _acks(self, acks: list[tuple[str, bytes]]) -> None:
        """Check acknowledgements; deliver the valid ones together."""
        valid: list[str] = []
        for slot, payload in acks:
            key_id = self._check_ack(slot, payload)
            if key_id is not None and key_id not in valid:
                valid.append(key_id)
        if not valid:
            return
        delivered = self.outbox.deliver_many(valid)
        self.acks_accepted += len(delivered)
        for key_id in delivered:
            _log.debug("key delivered", key_id=key_id)
        self._delivered_unlogged += len(delivered)
        now = time.monotonic()
        if self._delivered_unlogged and now - self._delivered_logged_at >= DELIVERY_LOG_S:
            # One line per interval, not per acknowledgement batch (dozens a second).
            _log.info("keys delivered", count=self._delivered_unlogged, total=self.acks_accepted)
            self._delivered_unlogged, self._delivered_logged_at = 0, now
        self._check_store_full()

    def _check_ack(self, slot: str, payload: bytes) -> str | None:
        """The key id of a valid acknowledgement of a queued key, else None."""
        try:
            ack = AckMessage.model_validate_json(payload)
        except ValidationError:
            self.acks_rejected += 1
            _log.warning("malformed acknowledgement ignored", slot_name=slot)
            return None
        known = self.outbox.get(ack.key_id)
        slot_key = self._slot_keys.get(slot)
        if known is None or known[1] != slot or slot_key is None:
            self.acks_rejected += 1
            _log.warning("acknowledgement for no key of this slot", key_id=ack.key_id)
            return None
        if not slot_key.check_ack(ack.key_id, ack.tag):
            self.acks_rejected += 1
            _log.warning("forged acknowledgement ignored (bad tag)", key_id=ack.key_id)
            return None
        if known[0] is OutboxState.DELIVERED:
            return None  # a repeated acknowledgement of a duplicate: already done
        return ack.key_id

    async def _command(self, client: aiomqtt.Client, payload: bytes, props: Any) -> None:
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        request_id = _request_id_of(payload)
        name: str | None = None
        try:
            command = CommandMessage.model_validate_json(payload)
            request_id, name = command.request_id, command.command
            if name not in self.allowed_commands:
                raise CommandRefused(
                    f"command {name!r} is not allowed here"
                    + (" (simulation is not allowed)" if name in SIMULATION_COMMANDS else "")
                )
            result = await self._execute(command)
            reply = CommandReply(
                node=self.node,
                link=self.link,
                request_id=request_id,
                command=name,
                ok=True,
                result=result,
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
                for e in exc.errors()
            )
            reply = self._error(request_id, name, f"malformed command: {problems}")
        except CommandRefused as exc:
            reply = self._error(request_id, name, str(exc))
        except Exception:  # the daemon's handler failed: say so, keep running
            _log.exception("command failed", command=name)
            reply = self._error(request_id, name, "internal error (see the daemon's log)")
        _log.info("command", command=name, ok=reply.ok, error=reply.error)
        if response_topic:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if correlation is not None:
                properties.CorrelationData = correlation
            await client.publish(response_topic, reply.to_json(), qos=1, properties=properties)
        else:
            await client.publish(f"{self.topic}/cmd/reply", reply.to_json(), qos=1)

    def _error(self, request_id: str | None, name: str | None, error: str) -> CommandReply:
        return CommandReply(
            node=self.node,
            link=self.link,
            request_id=request_id,
            command=name,
            ok=False,
            error=error,
        )

    async def _execute(self, command: CommandMessage) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if command.command == "status":
            result = {
                "state": self._state,
                "queued_keys": self.outbox.count_queued(),
                "store_full": self._store_full,
                "active_alarms": [str(k) for k in self._active],
            }
        if self.command_handler is None:
            if command.command == "status":
                return result
            raise CommandRefused("this node has no link engine attached")
        return {**result, **await self.command_handler(command)}


def _request_id_of(payload: bytes) -> str | None:
    """The request id of a possibly malformed command, so its error reply can be matched."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("request_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and len(value) <= 128 else None
