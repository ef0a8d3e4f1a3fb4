"""What the link tells the rest of the node: the seam MQTT delivery and telemetry plug into.

Subscribers are plain callables run on the event loop; they must not block (the
MQTT publisher queues and returns). A subscriber that raises is logged and
skipped, never allowed to break the link.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qkdd.link.alarm_kinds import AlarmEvent
from qkdd.link.states import Transition
from qkdd.logging import get_logger
from qkdd.store import KeyMeta

_log = get_logger("link.events")


@dataclass(frozen=True)
class KeysCommitted:
    """A block's keys are committed at this end and the authentication streams are
    refilled: they may be delivered (metadata only; read material from the store)."""

    block_id: int
    keys: tuple[KeyMeta, ...]


@dataclass(frozen=True)
class FrameReport:
    """Per-frame telemetry (the ``qber`` topic): public numbers only."""

    block_id: int
    frame: int
    sifted_key_bits: int
    test_bits: int
    test_errors: int
    window_qber: float
    window_bound: float
    detections: int


@dataclass
class LinkEvents:
    """Fan-out of link events to subscribers (status publisher, key delivery, tests)."""

    on_transition: list[Callable[[Transition], Any]] = field(default_factory=list)
    on_alarm: list[Callable[[AlarmEvent], Any]] = field(default_factory=list)
    on_keys: list[Callable[[KeysCommitted], Any]] = field(default_factory=list)
    on_frame: list[Callable[[FrameReport], Any]] = field(default_factory=list)

    @staticmethod
    def _emit(subscribers: list[Callable[[Any], Any]], event: object) -> None:
        for subscriber in subscribers:
            try:
                subscriber(event)
            except Exception:  # a subscriber's bug must not stop the link
                _log.exception("event subscriber failed", event_type=type(event).__name__)

    def transition(self, event: Transition) -> None:
        self._emit(self.on_transition, event)

    def alarm(self, event: AlarmEvent) -> None:
        self._emit(self.on_alarm, event)

    def keys(self, event: KeysCommitted) -> None:
        self._emit(self.on_keys, event)

    def frame(self, event: FrameReport) -> None:
        self._emit(self.on_frame, event)
