"""Nodes as the loops read and update them: lists, snapshots, summaries, lifecycle writes.

The world-state loop, the GTM loop and the autoscaler read through
:func:`scan_nodes`, :func:`world_snapshot` and :func:`list_nodes`; status is
derived at read time (:mod:`xplane.lifecycle.node_status`), never stored as the
truth. ``recorded_status`` is only the world-state loop's memory of what it last
saw, so it can signal on transitions. Registration is
:mod:`xplane.store.registration`, heartbeats :mod:`xplane.store.heartbeats`, the
tables :mod:`xplane.store.node_tables`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from xplane.domain import NodeSnapshot, NodeState, NodeStatus, StrictModel, WorldSnapshot
from xplane.lifecycle.node_status import derive_status
from xplane.store.db import utcnow
from xplane.store.events import record_event
from xplane.store.node_tables import NodeRow


class NodeNotFound(LookupError):
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(f"node {node_id!r} is not registered")


class NodeObservation(StrictModel):
    """One node as the world-state loop scans it: status now vs last recorded."""

    node_id: str
    service: str
    region: str
    state: NodeState
    status: NodeStatus
    recorded_status: NodeStatus | None = None


# ------------------------------------------------------------------ reads
def list_nodes(
    session: Session,
    *,
    service: str | None = None,
    region: str | None = None,
    state: NodeState | str | None = None,
) -> list[NodeRow]:
    query = select(NodeRow)
    if service:
        query = query.where(NodeRow.service == service)
    if region:
        query = query.where(NodeRow.region == region)
    if state:
        query = query.where(NodeRow.state == str(state))
    return list(session.scalars(query.order_by(NodeRow.service, NodeRow.region, NodeRow.id)))


def service_regions(session: Session, service: str) -> list[str]:
    """The regions ``service`` has nodes in (any state), sorted."""
    query = select(NodeRow.region).where(NodeRow.service == service).distinct()
    return sorted(session.scalars(query))


class ProbeCandidate(NamedTuple):
    """What the GTM's active checks read of a node (a row of columns, not an ORM object:
    loading 10,000 of those each tick cost most of the tick)."""

    id: str
    address: str
    port: int | None
    state: str
    drain_requested: bool
    last_heartbeat_at: datetime | None


def probe_candidates(session: Session, service: str) -> list[ProbeCandidate]:
    """``service``'s nodes that are not deleted, by id."""
    query = (
        select(
            NodeRow.id,
            NodeRow.address,
            NodeRow.port,
            NodeRow.state,
            NodeRow.drain_requested,
            NodeRow.last_heartbeat_at,
        )
        .where(NodeRow.service == service, NodeRow.state != NodeState.DELETE.value)
        .order_by(NodeRow.region, NodeRow.id)
    )
    return [ProbeCandidate(*row) for row in session.execute(query)]


def get_node(session: Session, node_id: str) -> NodeRow:
    row = session.get(NodeRow, node_id)
    if row is None:
        raise NodeNotFound(node_id)
    return row


def count_nodes(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(NodeRow)) or 0)


def scan_nodes(session: Session, now: datetime, timeout: timedelta) -> list[NodeObservation]:
    """Every node with its status now and the status last recorded (world-state loop)."""
    return [
        NodeObservation(
            node_id=row.id,
            service=row.service,
            region=row.region,
            state=NodeState(row.state),
            status=derive_status(row, now, timeout),
            recorded_status=NodeStatus(row.recorded_status) if row.recorded_status else None,
        )
        for row in list_nodes(session)
    ]


def to_snapshot(row: NodeRow, now: datetime, timeout: timedelta) -> NodeSnapshot:
    age = None
    if row.last_heartbeat_at is not None:
        age = max(0.0, (now - row.last_heartbeat_at).total_seconds())
    return NodeSnapshot(
        id=row.id,
        service=row.service,
        region=row.region,
        address=row.address,
        state=NodeState(row.state),
        status=derive_status(row, now, timeout),
        rtt_ms=row.rtt_ms,
        error_rate=row.error_rate,
        cpu=row.cpu,
        qps=row.qps,
        heartbeat_age_seconds=age,
        health_check_ok=row.health_check_ok,
        registered_at=row.registered_at,
    )


def world_snapshot(
    session: Session, now: datetime, timeout: timedelta, service: str | None = None
) -> WorldSnapshot:
    """Nodes as the loops observe them (pools come from the infra repo, not from here)."""
    rows = list_nodes(session, service=service)
    return WorldSnapshot(now=now, nodes=[to_snapshot(r, now, timeout) for r in rows])


class RegionSummary(StrictModel):
    service: str
    region: str
    nodes: int = 0
    by_state: dict[str, int] = Field(default_factory=dict)
    by_status: dict[str, int] = Field(default_factory=dict)
    # up nodes / registered nodes that are not drained (status or lifecycle); 0 when none.
    health: float = 0.0


def region_summaries(
    rows: Iterable[NodeRow],
    now: datetime,
    timeout: timedelta,
    known: dict[str, set[str]] | None = None,
) -> list[RegionSummary]:
    """Counts per (service, region); configured regions without nodes are listed too."""
    out: dict[tuple[str, str], RegionSummary] = {}
    for service, regions in (known or {}).items():
        for region in regions:
            out[(service, region)] = RegionSummary(service=service, region=region)
    counted: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        key = (row.service, row.region)
        summary = out.setdefault(key, RegionSummary(service=row.service, region=row.region))
        status = derive_status(row, now, timeout)
        summary.nodes += 1
        summary.by_state[row.state] = summary.by_state.get(row.state, 0) + 1
        summary.by_status[status.value] = summary.by_status.get(status.value, 0) + 1
        up_total = counted.setdefault(key, [0, 0])
        drained = status is NodeStatus.DRAIN or row.state in (
            NodeState.DRAIN.value,
            NodeState.DELETE.value,
        )
        if not drained:
            up_total[1] += 1
            up_total[0] += status is NodeStatus.UP
    for key, (up, total) in counted.items():
        out[key].health = up / total if total else 0.0
    return [out[k] for k in sorted(out)]


# ----------------------------------------------------------------- writes
def record_status(session: Session, node_id: str, status: NodeStatus, at: datetime) -> None:
    """Remember the status the world-state loop acted on (no event: the caller records it)."""
    row = get_node(session, node_id)
    row.recorded_status, row.recorded_status_at = NodeStatus(status).value, at


def set_lifecycle_state(
    session: Session, node_id: str, state: NodeState, reason: str, at: datetime
) -> None:
    row = get_node(session, node_id)
    row.state, row.state_reason, row.state_changed_at = NodeState(state).value, reason, at


def request_drain(
    session: Session, node_id: str, by: str, reason: str, at: datetime | None = None
) -> NodeRow:
    """Set the node's desired status to drain and log a ``node.drain_requested`` event."""
    row = get_node(session, node_id)
    at = at or utcnow()
    row.drain_requested, row.drain_requested_by = True, by
    row.drain_reason, row.drain_requested_at = reason, at
    record_event(
        session,
        "node.drain_requested",
        f"drain of {node_id} requested by {by}: {reason}",
        source=by,
        service=row.service,
        region=row.region,
        node_id=node_id,
        at=at,
        data={"reason": reason},
    )
    return row


def withdraw_drain(session: Session, node_id: str) -> None:
    """Undrain: the agent is no longer told to drain (the lifecycle logs the transition)."""
    row = get_node(session, node_id)
    row.drain_requested, row.drain_requested_by = False, None
    row.drain_reason, row.drain_requested_at = None, None


def record_health_check(session: Session, node_id: str, ok: bool, at: datetime) -> None:
    row = get_node(session, node_id)
    row.health_check_ok, row.health_checked_at = ok, at
