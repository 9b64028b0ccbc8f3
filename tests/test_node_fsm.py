"""The node lifecycle as a pure state machine: every transition, legal or not."""

from __future__ import annotations

import pytest

from xplane.domain import NodeState, NodeStatus
from xplane.lifecycle.node_fsm import (
    TRANSITIONS,
    IllegalTransition,
    NodeEvent,
    event_for,
    next_state,
)


@pytest.mark.parametrize(("state", "event"), sorted(TRANSITIONS, key=str))
def test_every_legal_transition(state: NodeState, event: NodeEvent) -> None:
    assert next_state(state, event) is TRANSITIONS[(state, event)]


ILLEGAL = [(s, e) for s in NodeState for e in NodeEvent if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), ILLEGAL)
def test_every_illegal_transition_is_refused(state: NodeState, event: NodeEvent) -> None:
    with pytest.raises(IllegalTransition, match=f"not allowed in state '{state.value}'"):
        next_state(state, event)


def test_delete_is_terminal() -> None:
    assert not [e for (s, e) in TRANSITIONS if s is NodeState.DELETE]


@pytest.mark.parametrize("status", list(NodeStatus))
def test_each_observed_status_is_the_event_of_its_name(status: NodeStatus) -> None:
    """A status change the world-state scan signals is one lifecycle event, never lost."""
    assert event_for(status) is NodeEvent(status.value)
    assert event_for(status) in {event for _, event in TRANSITIONS}
