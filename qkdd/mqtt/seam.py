"""The seam between the key-exchange daemon and MQTT: what the daemon calls, and what it
provides.

The daemon (link engine) holds one :class:`LinkPublisher` (``qkdd.mqtt.publisher.
MqttPublisher`` in production, anything with these methods in tests) and calls it
from its event loop:

* :meth:`LinkPublisher.on_status` on every state transition;
* :meth:`LinkPublisher.on_frame_qber` once per frame;
* :meth:`LinkPublisher.on_alarm` for every alarm raised or cleared;
* :meth:`LinkPublisher.on_keys_committed` right after a block's keys are durably
  committed in the state store (``KeyStore.commit_block``); the publisher seals them
  into the outbox before it returns, so a crash after it loses nothing;
* :attr:`LinkPublisher.accepting_keys` before starting a block: False means the outbox
  is full (``store_full`` is raised), so the engine pauses key production.

All methods are synchronous and non-blocking (the publishing happens on the
publisher's own task). The daemon provides a :data:`CommandHandler` that carries out
``pause``/``resume``/``recalibrate``/``status``/``eve`` and raises
:class:`CommandRefused` for anything it will not do (nothing changes then).

Slot assignment: key ``i`` of a block goes to :func:`slot_for_index` ``(i, slots)``,
the same rule at both ends (``NewKey.consumer_slot``).

Wiring, in the daemon (same event loop and the same ``StateStore`` as the engine,
since the store is single-threaded)::

    publisher = MqttPublisher(
        config.mqtt, store, node=config.node.id, link=config.node.link,
        role=config.node.role.value, slots=[c.name for c in config.consumers],
        simulated=config.simulated, allow_simulated=config.node.allow_simulated,
        command_handler=engine.handle_command, on_store_full=engine.set_store_full,
        versions={"protocol": PROTOCOL_VERSION},
    )
    task_group.create_task(publisher.run())   # ... and ``await publisher.stop()`` at exit

With an engine that fans out events as callbacks (transition, alarm, keys committed,
frame report), each is a one-line adapter: ``on_status(t.target, t.reason)``,
``on_alarm(event)``, ``on_keys_committed(e.block_id, e.keys)`` and
``on_frame_qber(FrameQber(...))`` from the frame's numbers. Keys committed but never
handed to ``on_keys_committed`` (a crash in between, a subscriber that raised) are
still sealed: the publisher seals every committed key without a message at start and
at each republish tick.

The constructor raises ``DeliveryError`` when a slot has no consumer secret
(``qkdd consumer add``); the daemon should exit 2 with that message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from qkdd.link.alarms import AlarmEvent
from qkdd.link.states import LinkState
from qkdd.mqtt.messages import CommandMessage
from qkdd.store.keys import KeyMeta


def slot_for_index(index: int, slots: Sequence[str]) -> str:
    """The consumer slot of key number ``index`` of a block: slot ``index mod len(slots)``."""
    if not slots:
        raise ValueError("the link has no consumer slots")
    if index < 0:
        raise ValueError("key index is non-negative")
    return slots[index % len(slots)]


@dataclass(frozen=True)
class FrameQber:
    """What one frame contributes to the QBER telemetry."""

    frame: int
    qber: float  # window QBER (test basis, vacuum class excluded)
    qber_bound: float  # one-sided lower confidence bound of the alarm test
    window_bits: int
    sifted_bits: int
    block: int | None = None
    test_bits: int | None = None  # test-basis bits of this frame (all revealed)
    test_errors: int | None = None
    detections: int | None = None
    gains: Mapping[str, float] = field(default_factory=dict)
    rates: Mapping[str, float] = field(default_factory=dict)


class CommandRefused(Exception):
    """The daemon will not carry out a command; the message goes into the error reply."""


CommandHandler = Callable[[CommandMessage], Awaitable[dict[str, Any]]]
"""The daemon's command handler: returns a result for the reply or raises
:class:`CommandRefused`. Only validated, authorised commands reach it."""


class LinkPublisher(Protocol):
    """What the daemon calls (see the module docstring)."""

    def on_status(self, state: LinkState | str, reason: str = "") -> None: ...

    def on_frame_qber(self, report: FrameQber) -> None: ...

    def on_alarm(self, event: AlarmEvent) -> None: ...

    def on_keys_committed(self, block_id: int, keys: Sequence[KeyMeta]) -> None: ...

    @property
    def accepting_keys(self) -> bool: ...
