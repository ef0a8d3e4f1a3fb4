"""The link's state machine: an explicit transition table, every transition with a reason.

DESIGN §4: STARTING → CONNECTING → CALIBRATING → RUNNING{TRANSMIT → SIFT →
ESTIMATE → RECONCILE → VERIFY → AMPLIFY → COMMIT}, plus ALARM, FAULT (retry
with back-off), PAUSED and STOPPING. A transition not in the table is a bug,
and raises; listeners (the status publisher, the log) see every transition.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class LinkState(enum.StrEnum):
    STARTING = "STARTING"
    CONNECTING = "CONNECTING"
    CALIBRATING = "CALIBRATING"
    TRANSMIT = "TRANSMIT"
    SIFT = "SIFT"
    ESTIMATE = "ESTIMATE"
    RECONCILE = "RECONCILE"
    VERIFY = "VERIFY"
    AMPLIFY = "AMPLIFY"
    COMMIT = "COMMIT"
    ALARM = "ALARM"
    FAULT = "FAULT"
    PAUSED = "PAUSED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"

    @property
    def running(self) -> bool:
        """One of the RUNNING sub-states (a block is in progress or starting)."""
        return self in RUNNING


S = LinkState
RUNNING = frozenset({S.TRANSMIT, S.SIFT, S.ESTIMATE, S.RECONCILE, S.VERIFY, S.AMPLIFY, S.COMMIT})
# Wherever the link is doing something, these can interrupt it.
_INTERRUPTS = frozenset({S.ALARM, S.FAULT, S.PAUSED, S.STOPPING, S.CONNECTING})

TRANSITIONS: dict[LinkState, frozenset[LinkState]] = {
    S.STARTING: frozenset({S.CONNECTING, S.FAULT, S.STOPPING}),
    S.CONNECTING: frozenset({S.CALIBRATING, S.FAULT, S.PAUSED, S.STOPPING}),
    S.CALIBRATING: frozenset({S.TRANSMIT}) | _INTERRUPTS,
    # Between blocks Alice may recalibrate (asked to, or after a pause); Bob follows.
    S.TRANSMIT: frozenset({S.SIFT, S.CALIBRATING}) | _INTERRUPTS,
    # After sifting a frame: the next frame, or the block of N pulses is complete.
    S.SIFT: frozenset({S.TRANSMIT, S.ESTIMATE, S.CALIBRATING}) | _INTERRUPTS,
    # After the last frame a block may still be abandoned without an alarm (the
    # reconciled keys differ, the peer gave up): straight to a fresh block.
    S.ESTIMATE: frozenset({S.RECONCILE, S.TRANSMIT}) | _INTERRUPTS,
    S.RECONCILE: frozenset({S.VERIFY, S.TRANSMIT}) | _INTERRUPTS,
    S.VERIFY: frozenset({S.AMPLIFY, S.TRANSMIT}) | _INTERRUPTS,
    S.AMPLIFY: frozenset({S.COMMIT, S.TRANSMIT}) | _INTERRUPTS,
    S.COMMIT: frozenset({S.TRANSMIT, S.CALIBRATING}) | _INTERRUPTS,
    # ALARM clears into a fresh block, or recalibrates.
    S.ALARM: frozenset({S.TRANSMIT, S.CALIBRATING, S.CONNECTING, S.FAULT, S.PAUSED, S.STOPPING}),
    S.FAULT: frozenset({S.CONNECTING, S.STOPPING}),
    S.PAUSED: frozenset({S.CONNECTING, S.CALIBRATING, S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.STOPPED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A transition the table does not allow: a bug in the engine, never ignored."""


@dataclass(frozen=True)
class Transition:
    source: LinkState
    target: LinkState
    reason: str
    at: float  # time.time()


Listener = Callable[[Transition], None]


class LinkStateMachine:
    """Holds the current state and applies table-checked transitions."""

    def __init__(self, initial: LinkState = LinkState.STARTING) -> None:
        self._state = initial
        self._listeners: list[Listener] = []
        self.history: list[Transition] = []

    @property
    def state(self) -> LinkState:
        return self._state

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def can(self, target: LinkState) -> bool:
        return target in TRANSITIONS[self._state]

    def to(self, target: LinkState, reason: str) -> Transition:
        """Move to ``target``; ``reason`` says why (it is logged and published)."""
        if not reason:
            raise ValueError("every transition needs a reason")
        if target not in TRANSITIONS[self._state]:
            raise IllegalTransition(f"{self._state} -> {target} is not allowed ({reason})")
        transition = Transition(self._state, target, reason, time.time())
        self._state = target
        self.history.append(transition)
        del self.history[:-256]  # a bounded record for status queries
        for listener in self._listeners:
            listener(transition)
        return transition
