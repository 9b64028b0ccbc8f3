"""A node's status and readiness, derived from what is known of it (pure).

Status (up/down/drain) is never stored as the truth: every reader derives it
from the node's facts at read time with :func:`derive_status`, so every reader
with the same clock agrees. The rules read fields through the protocols below,
not a storage class: a store row, a heartbeat batch's view or a test's
dataclass all qualify.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, Protocol

from xplane.domain import NodeState, NodeStatus

HeartbeatAction = Literal["none", "drain", "deregister"]
# Lifecycle states of a node not given up: if it is silent, its lifecycle's down grace
# decides (drain and delete are on their way out).
HELD_STATES = (NodeState.IDLE.value, NodeState.WARM.value, NodeState.ACTIVE.value)


class StatusInputs(Protocol):
    """What :func:`derive_status` reads."""

    @property
    def drain_requested(self) -> bool: ...
    @property
    def reported_status(self) -> str | None: ...
    @property
    def last_heartbeat_at(self) -> datetime | None: ...
    @property
    def probes_ok(self) -> int | None: ...
    @property
    def probes_total(self) -> int | None: ...


class LivenessInputs(Protocol):
    """What :func:`is_live` reads."""

    @property
    def state(self) -> str: ...
    @property
    def last_heartbeat_at(self) -> datetime | None: ...
    @property
    def registered_at(self) -> datetime | None: ...


class NodeFacts(StatusInputs, LivenessInputs, Protocol):
    """What :func:`is_serving` and :func:`is_coming_up` read: status, lifecycle and
    the status the world-state loop last recorded."""

    @property
    def recorded_status(self) -> str | None: ...


def heartbeat_is_fresh(
    last_heartbeat_at: datetime | None, now: datetime, timeout: timedelta
) -> bool:
    """Has the node beaten within ``timeout`` of ``now``? (Never beaten: no.)"""
    return last_heartbeat_at is not None and now - last_heartbeat_at <= timeout


def derive_status(node: StatusInputs, now: datetime, timeout: timedelta) -> NodeStatus:
    """The node's status at ``now``.

    drain wins: a drained node is out of traffic on purpose, and one that then
    stops (the normal way out) must not look like a failure to recover from.
    Otherwise down when it never heartbeated, its last heartbeat is older than
    ``timeout``, or every probe it reported failed; else up.
    """
    if node.drain_requested or node.reported_status == NodeStatus.DRAIN.value:
        return NodeStatus.DRAIN
    if not heartbeat_is_fresh(node.last_heartbeat_at, now, timeout):
        return NodeStatus.DOWN
    if node.probes_total and not node.probes_ok:
        return NodeStatus.DOWN
    return NodeStatus.UP


def heartbeat_action(state: str, drain_requested: bool) -> HeartbeatAction:
    """What the agent should do next: ``deregister`` | ``drain`` | ``none``."""
    if state == NodeState.DELETE.value:
        return "deregister"
    if drain_requested or state == NodeState.DRAIN.value:
        return "drain"
    return "none"


def is_serving(node: NodeFacts, now: datetime, timeout: timedelta) -> bool:
    """Lifecycle ``active`` and status ``up``: what the autoscaler and regions count as ready."""
    return serves(node.state, derive_status(node, now, timeout))


def serves(state: str, status: NodeStatus) -> bool:
    """:func:`is_serving` from a status already derived."""
    return state == NodeState.ACTIVE.value and status is NodeStatus.UP


def is_coming_up(node: NodeFacts, now: datetime, timeout: timedelta) -> bool:
    """Not serving yet but healthy on its way: what the autoscaler must not replace.

    ``warm`` (the lifecycle leaves warm as soon as the node is seen down), or
    ``idle`` and live without having been seen down: just registered, or up
    and about to be moved to warm. An ``idle`` node the world-state loop saw go
    down is lost, not coming.
    """
    if node.state == NodeState.WARM.value:
        return True
    return (
        node.state == NodeState.IDLE.value
        and node.recorded_status != NodeStatus.DOWN.value
        and is_live(node, now, timeout)
    )


def is_live(node: LivenessInputs, now: datetime, timeout: timedelta) -> bool:
    """May the node still be running at its address? (Another address for its id is a 409.)

    Yes unless it is being deleted or has gone silent: a fresh heartbeat (even
    with failing probes) or, before the first heartbeat, a registration younger
    than ``timeout``.
    """
    if node.state == NodeState.DELETE.value:
        return False
    seen = node.last_heartbeat_at or node.registered_at
    return seen is not None and now - seen <= timeout


def is_held(state: str, status: NodeStatus, healthy: bool) -> bool:
    """Not healthy, yet neither given up by its lifecycle nor leaving on purpose (drain):
    down or silent within its lifecycle's down grace. The autoscaler never replaces a
    held node on silence alone."""
    return not healthy and state in HELD_STATES and status is not NodeStatus.DRAIN


def is_healthy_snapshot(state: str, status: NodeStatus, health_check_ok: bool | None) -> bool:
    """Healthy (not a node to replace) judged from a status already derived, without the
    heartbeat times :func:`is_coming_up` reads (a what-if's WORLD.json): serving with an
    active check that did not fail, or ``idle``/``warm`` and up (warming with good
    heartbeats)."""
    if state == NodeState.ACTIVE.value:
        return serves(state, status) and health_check_ok is not False
    return state in (NodeState.IDLE.value, NodeState.WARM.value) and status is NodeStatus.UP
