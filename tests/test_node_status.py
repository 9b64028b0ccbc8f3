"""The node status rules (pure): status, readiness and liveness from a node's facts.

The rules read a protocol, not a store row: plain dataclasses stand in for nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from xplane.domain import NodeStatus
from xplane.lifecycle.node_status import (
    derive_status,
    heartbeat_action,
    is_coming_up,
    is_healthy_snapshot,
    is_held,
    is_live,
    is_serving,
    serves,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TIMEOUT = timedelta(seconds=30)
JUST_OVER = TIMEOUT + timedelta(milliseconds=1)


@dataclass(frozen=True)
class View:
    drain_requested: bool = False
    reported_status: str | None = None
    last_heartbeat_at: datetime | None = T0
    probes_ok: int | None = None
    probes_total: int | None = None


@pytest.mark.parametrize(
    ("view", "now", "expected"),
    [
        (View(), T0 + TIMEOUT, NodeStatus.UP),  # exactly at the timeout: still up
        (View(), T0 + TIMEOUT + timedelta(milliseconds=1), NodeStatus.DOWN),
        (View(last_heartbeat_at=None), T0, NodeStatus.DOWN),
        (View(probes_ok=0, probes_total=3), T0, NodeStatus.DOWN),
        (View(probes_ok=1, probes_total=3), T0, NodeStatus.UP),
        (View(probes_ok=0, probes_total=0), T0, NodeStatus.UP),  # no probes reported
        (View(reported_status="drain"), T0, NodeStatus.DRAIN),
        (View(drain_requested=True, last_heartbeat_at=None), T0, NodeStatus.DRAIN),
        (View(drain_requested=True, probes_ok=0, probes_total=1), T0, NodeStatus.DRAIN),
    ],
)
def test_derive_status(view: View, now: datetime, expected: NodeStatus) -> None:
    assert derive_status(view, now, TIMEOUT) is expected


def test_heartbeat_action() -> None:
    assert heartbeat_action("active", False) == "none"
    assert heartbeat_action("active", True) == "drain"
    assert heartbeat_action("drain", False) == "drain"
    assert heartbeat_action("delete", True) == "deregister"


@dataclass(frozen=True)
class Node:
    """Every fact the readiness rules read; by default active, up and just heard from."""

    state: str = "active"
    drain_requested: bool = False
    reported_status: str | None = None
    last_heartbeat_at: datetime | None = T0
    probes_ok: int | None = None
    probes_total: int | None = None
    registered_at: datetime | None = T0 - timedelta(hours=1)
    recorded_status: str | None = None


@pytest.mark.parametrize(
    ("node", "now", "expected"),
    [
        (Node(), T0 + TIMEOUT, True),
        (Node(), T0 + JUST_OVER, False),  # silent: down
        (Node(probes_ok=0, probes_total=2), T0, False),  # every probe failed: down
        (Node(drain_requested=True), T0, False),
        (Node(reported_status="drain"), T0, False),
        (Node(state="warm"), T0, False),  # up, but not active yet
        (Node(state="idle"), T0, False),
        (Node(state="drain"), T0, False),
    ],
)
def test_is_serving_is_active_and_up(node: Node, now: datetime, expected: bool) -> None:
    assert is_serving(node, now, TIMEOUT) is expected


@pytest.mark.parametrize(
    ("node", "now", "expected"),
    [
        (Node(state="warm"), T0, True),
        # Warm and silent: still coming (the lifecycle leaves warm once it sees it down).
        (Node(state="warm", last_heartbeat_at=None), T0 + JUST_OVER, True),
        (Node(state="idle"), T0, True),  # up, about to be moved to warm
        (Node(state="idle", last_heartbeat_at=None, registered_at=T0), T0 + TIMEOUT, True),
        (Node(state="idle", last_heartbeat_at=None, registered_at=T0), T0 + JUST_OVER, False),
        (Node(state="idle", recorded_status="down"), T0, False),  # seen down: lost
        (Node(state="idle", recorded_status="up"), T0, True),
        (Node(state="idle"), T0 + JUST_OVER, False),  # gone silent
        (Node(state="active"), T0, False),  # serving, not coming
        (Node(state="drain"), T0, False),
        (Node(state="delete"), T0, False),
    ],
)
def test_is_coming_up_is_warm_or_a_live_idle_node_not_seen_down(
    node: Node, now: datetime, expected: bool
) -> None:
    assert is_coming_up(node, now, TIMEOUT) is expected


@pytest.mark.parametrize(
    ("node", "now", "expected"),
    [
        (Node(), T0 + TIMEOUT, True),
        (Node(), T0 + JUST_OVER, False),
        (Node(probes_ok=0, probes_total=3), T0, True),  # failing probes: still running
        (Node(drain_requested=True), T0, True),  # draining: still running
        (Node(state="delete"), T0, False),  # being deleted, however fresh
        # Before the first heartbeat the registration counts.
        (Node(last_heartbeat_at=None, registered_at=T0), T0 + TIMEOUT, True),
        (Node(last_heartbeat_at=None, registered_at=T0), T0 + JUST_OVER, False),
        (Node(last_heartbeat_at=None, registered_at=None), T0, False),
        # Once it has heartbeated, the heartbeat counts, not a later registration.
        (Node(last_heartbeat_at=T0 - JUST_OVER, registered_at=T0), T0, False),
    ],
)
def test_is_live_unless_deleted_or_silent(node: Node, now: datetime, expected: bool) -> None:
    assert is_live(node, now, TIMEOUT) is expected


UP, DOWN, DRAIN = NodeStatus.UP, NodeStatus.DOWN, NodeStatus.DRAIN


@pytest.mark.parametrize(
    ("state", "status", "expected"),
    [("active", UP, True), ("active", DOWN, False), ("active", DRAIN, False), ("warm", UP, False)],
)
def test_serves_is_is_serving_from_a_derived_status(
    state: str, status: NodeStatus, expected: bool
) -> None:
    assert serves(state, status) is expected


@pytest.mark.parametrize(
    ("state", "status", "healthy", "expected"),
    [
        ("active", DOWN, False, True),  # down within its grace: held, not replaced
        ("warm", DOWN, False, True),
        ("idle", DOWN, False, True),
        ("active", UP, True, False),  # healthy: nothing to hold
        ("active", DRAIN, False, False),  # leaving on purpose
        ("drain", DOWN, False, False),
        ("delete", DOWN, False, False),  # given up
    ],
)
def test_is_held_is_unhealthy_not_given_up_not_draining(
    state: str, status: NodeStatus, healthy: bool, expected: bool
) -> None:
    assert is_held(state, status, healthy) is expected


@pytest.mark.parametrize(
    ("state", "status", "check", "expected"),
    [
        ("active", UP, None, True),  # not checked yet
        ("active", UP, True, True),
        ("active", UP, False, False),  # its active check fails
        ("active", DOWN, None, False),
        ("warm", UP, False, True),  # warming with good heartbeats
        ("idle", UP, None, True),
        ("warm", DOWN, None, False),
        ("drain", UP, None, False),
        ("delete", UP, None, False),
    ],
)
def test_is_healthy_snapshot(
    state: str, status: NodeStatus, check: bool | None, expected: bool
) -> None:
    assert is_healthy_snapshot(state, status, check) is expected
