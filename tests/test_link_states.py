"""The link state machine follows its table and reports every transition with a reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qkdd.link.states import (
    RUNNING,
    TRANSITIONS,
    IllegalTransition,
    LinkState,
    LinkStateMachine,
    Transition,
)

S = LinkState


def test_happy_path_through_a_block() -> None:
    machine = LinkStateMachine()
    seen: list[Transition] = []
    machine.subscribe(seen.append)
    path = [
        S.CONNECTING,
        S.CALIBRATING,
        S.TRANSMIT,
        S.SIFT,
        S.TRANSMIT,
        S.SIFT,
        S.ESTIMATE,
        S.RECONCILE,
        S.VERIFY,
        S.AMPLIFY,
        S.COMMIT,
        S.TRANSMIT,
    ]
    for target in path:
        machine.to(target, f"go {target}")
    assert [t.target for t in seen] == path
    assert seen[0].source is S.STARTING and seen[0].reason == "go CONNECTING"


def test_illegal_transition_raises_and_keeps_state() -> None:
    machine = LinkStateMachine()
    with pytest.raises(IllegalTransition, match="STARTING -> COMMIT"):
        machine.to(S.COMMIT, "skip ahead")
    assert machine.state is S.STARTING
    with pytest.raises(ValueError):
        machine.to(S.CONNECTING, "")


def test_every_state_can_stop_and_stopped_is_final() -> None:
    for state, targets in TRANSITIONS.items():
        if state not in (S.STOPPING, S.STOPPED):
            assert S.STOPPING in targets, state
    assert TRANSITIONS[S.STOPPED] == frozenset()


def test_abort_level_alarm_reachable_from_every_running_state_and_clears_to_fresh_block() -> None:
    for state in RUNNING | {S.CALIBRATING}:
        assert S.ALARM in TRANSITIONS[state]
        assert S.FAULT in TRANSITIONS[state]
    assert S.TRANSMIT in TRANSITIONS[S.ALARM]  # cleared: a fresh block starts
    assert S.COMMIT not in TRANSITIONS[S.ALARM]  # nothing of the aborted block survives


@given(st.lists(st.sampled_from(list(LinkState)), max_size=60))
def test_random_walks_obey_the_table(targets: list[LinkState]) -> None:
    machine = LinkStateMachine()
    for target in targets:
        allowed = machine.can(target)
        before = machine.state
        if allowed:
            machine.to(target, "walk")
            assert machine.state is target
        else:
            with pytest.raises(IllegalTransition):
                machine.to(target, "walk")
            assert machine.state is before
    assert len(machine.history) <= 256


def test_abandoned_block_after_the_frames_starts_afresh() -> None:
    from qkdd.link.states import LinkState as S
    from qkdd.link.states import LinkStateMachine

    for stage in (S.ESTIMATE, S.RECONCILE, S.VERIFY, S.AMPLIFY):
        m = LinkStateMachine(stage)
        m.to(S.TRANSMIT, "verification failed: fresh block")
        assert m.state is S.TRANSMIT
