"""The node lifecycle as a pure state machine (`docs/roadmap.md` phase 3.2).

idle -> warm -> active -> drain -> delete.

``down`` is not a state: a node that stops answering is taken out of service
by moving it back to ``idle`` (GTM only counts ``active``), and either comes
back through ``warm`` within the grace period or is given up (``delete``).

==========  ==============  =========  ==========================================
from        event           to         why
==========  ==============  =========  ==========================================
idle        up              warm       healthy heartbeats and probes
idle        grace_expired   delete     down for longer than the grace period
warm        warmed          active     warm-up period passed while healthy
warm        down            idle       out of service at once
active      down            idle       out of service at once (GTM signalled)
idle/warm/  drain           drain      operator, autoscaler scale-down, the node
active                                 itself, or a down node given up
drain       drained         delete     DNS TTL + drain timeout elapsed
drain       undrain         idle       an operator withdrew the drain in time; the
                                       node comes back through warm when healthy
any but     deregistered    delete     the node left (pool shrank, operator)
delete
==========  ==============  =========  ==========================================

Everything else is refused (:class:`IllegalTransition`): the workflow logs it
and stays where it is.
"""

from __future__ import annotations

from enum import StrEnum

from xplane.domain import NodeState, NodeStatus


class NodeEvent(StrEnum):
    UP = "up"
    DOWN = "down"
    WARMED = "warmed"
    DRAIN = "drain"
    DRAINED = "drained"
    DEREGISTERED = "deregistered"
    GRACE_EXPIRED = "grace_expired"
    UNDRAIN = "undrain"


TRANSITIONS: dict[tuple[NodeState, NodeEvent], NodeState] = {
    (NodeState.IDLE, NodeEvent.UP): NodeState.WARM,
    (NodeState.IDLE, NodeEvent.GRACE_EXPIRED): NodeState.DELETE,
    (NodeState.WARM, NodeEvent.WARMED): NodeState.ACTIVE,
    (NodeState.WARM, NodeEvent.DOWN): NodeState.IDLE,
    (NodeState.ACTIVE, NodeEvent.DOWN): NodeState.IDLE,
    (NodeState.IDLE, NodeEvent.DRAIN): NodeState.DRAIN,
    (NodeState.WARM, NodeEvent.DRAIN): NodeState.DRAIN,
    (NodeState.ACTIVE, NodeEvent.DRAIN): NodeState.DRAIN,
    (NodeState.DRAIN, NodeEvent.DRAINED): NodeState.DELETE,
    (NodeState.DRAIN, NodeEvent.UNDRAIN): NodeState.IDLE,
    (NodeState.IDLE, NodeEvent.DEREGISTERED): NodeState.DELETE,
    (NodeState.WARM, NodeEvent.DEREGISTERED): NodeState.DELETE,
    (NodeState.ACTIVE, NodeEvent.DEREGISTERED): NodeState.DELETE,
    (NodeState.DRAIN, NodeEvent.DEREGISTERED): NodeState.DELETE,
}

# An observed status change (the world-state scan) is the lifecycle event of its name.
STATUS_EVENTS: dict[NodeStatus, NodeEvent] = {
    NodeStatus.UP: NodeEvent.UP,
    NodeStatus.DOWN: NodeEvent.DOWN,
    NodeStatus.DRAIN: NodeEvent.DRAIN,
}


def event_for(status: NodeStatus) -> NodeEvent:
    """The lifecycle event a change to the observed ``status`` is."""
    return STATUS_EVENTS[status]


class IllegalTransition(ValueError):
    def __init__(self, state: NodeState, event: NodeEvent) -> None:
        super().__init__(f"event {event.value!r} is not allowed in state {state.value!r}")
        self.state = state
        self.event = event


def next_state(state: NodeState, event: NodeEvent) -> NodeState:
    """The state after ``event``, or :class:`IllegalTransition`."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def operator_refusal(node_id: str, state: NodeState, event: NodeEvent) -> str | None:
    """Why an operator's ``drain`` / ``undrain`` of a node in ``state`` is refused (None: it
    is not). The message is the Workflow Update validator's answer to the caller."""
    if state is NodeState.DELETE:
        return f"node {node_id} is already deleted"
    if event is NodeEvent.DRAIN and state is NodeState.DRAIN:
        return f"node {node_id} is already draining"
    if event is NodeEvent.UNDRAIN and state is not NodeState.DRAIN:
        return f"node {node_id} is not draining (state {state.value})"
    if (state, event) not in TRANSITIONS:
        return f"node {node_id}: {IllegalTransition(state, event)}"
    return None


def in_service(state: NodeState) -> bool:
    """Whether GTM may send traffic to a node in this state."""
    return state is NodeState.ACTIVE
