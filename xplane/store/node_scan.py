"""The world-state scan in the store: counts per region and only the nodes that changed.

:func:`xplane.store.nodes.scan_nodes` builds every node in Python each tick (10,000
ORM rows a second at fleet size) when the gate only needs counts per region and
the signals only the nodes whose status moved. Here the status rule of
:func:`xplane.lifecycle.node_status.derive_status` is one SQL ``CASE``, so the
database counts with ``GROUP BY`` and returns just the changed rows: the Python
work is proportional to the changes, and an idle fleet costs two small queries.
``tests/test_node_scan.py`` holds the SQL rule to the Python one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, bindparam, case, func, literal, or_, select
from sqlalchemy.orm import Session

from xplane.domain import NodeState, NodeStatus
from xplane.gate import RegionInput
from xplane.store.db import UTCDateTime
from xplane.store.node_tables import NodeRow
from xplane.store.nodes import NodeObservation


@dataclass(frozen=True)
class ScanView:
    total: int  # every node in the store
    regions: list[RegionInput]  # the gate's inputs, by (service, region)
    changed: list[NodeObservation]  # status now != status recorded, not deleted


def status_expression(now: datetime, timeout: timedelta) -> ColumnElement[str]:
    """``derive_status`` as SQL: drain, else down (no or a stale heartbeat, or every
    reported probe failed), else up."""
    cutoff = bindparam("status_cutoff", now - timeout, type_=UTCDateTime())
    return case(
        (
            or_(NodeRow.drain_requested.is_(True), NodeRow.reported_status == "drain"),
            literal(NodeStatus.DRAIN.value),
        ),
        (
            or_(NodeRow.last_heartbeat_at.is_(None), NodeRow.last_heartbeat_at < cutoff),
            literal(NodeStatus.DOWN.value),
        ),
        (
            and_(
                func.coalesce(NodeRow.probes_total, 0) != 0,
                func.coalesce(NodeRow.probes_ok, 0) == 0,
            ),
            literal(NodeStatus.DOWN.value),
        ),
        else_=literal(NodeStatus.UP.value),
    )


def scan_changes(
    session: Session, now: datetime, timeout: timedelta, silent_after: timedelta
) -> ScanView:
    """Per-region counts and the changed nodes, as ``region_inputs(scan_nodes(...))``
    and the scan's transition filter would give them; ``silent`` counts the nodes that
    should beat and have had no heartbeat for longer than ``silent_after``."""
    status = status_expression(now, timeout)
    silent_cutoff = bindparam("silent_cutoff", now - silent_after, type_=UTCDateTime())
    gone = or_(
        NodeRow.state.in_((NodeState.DRAIN.value, NodeState.DELETE.value)),
        status == NodeStatus.DRAIN.value,
    )
    counted = case((gone, 0), else_=1)
    down = case((and_(~gone, status == NodeStatus.DOWN.value), 1), else_=0)
    should_beat = and_(
        ~gone,
        or_(
            NodeRow.recorded_status.is_(None),
            NodeRow.recorded_status != NodeStatus.DOWN.value,
        ),
    )
    beating = case((should_beat, 1), else_=0)
    missed = or_(NodeRow.last_heartbeat_at.is_(None), NodeRow.last_heartbeat_at < silent_cutoff)
    silent = case((and_(should_beat, missed), 1), else_=0)
    grouped = session.execute(
        select(
            NodeRow.service,
            NodeRow.region,
            func.count(),
            func.sum(counted),
            func.sum(down),
            func.sum(beating),
            func.sum(silent),
        )
        .group_by(NodeRow.service, NodeRow.region)
        .order_by(NodeRow.service, NodeRow.region)
    ).all()
    regions = [
        RegionInput(
            service=s,
            region=r,
            nodes=int(n or 0),
            unready=int(u or 0),
            beating=int(b or 0),
            silent=int(q or 0),
        )
        for s, r, _, n, u, b, q in grouped
    ]
    total = sum(int(row[2]) for row in grouped)
    rows = session.execute(
        select(
            NodeRow.id,
            NodeRow.service,
            NodeRow.region,
            NodeRow.state,
            status.label("status"),
            NodeRow.recorded_status,
        )
        .where(
            NodeRow.state != NodeState.DELETE.value,
            or_(NodeRow.recorded_status.is_(None), NodeRow.recorded_status != status),
        )
        .order_by(NodeRow.service, NodeRow.region, NodeRow.id)
    ).all()
    changed = [
        NodeObservation(
            node_id=row.id,
            service=row.service,
            region=row.region,
            state=NodeState(row.state),
            status=NodeStatus(row.status),
            recorded_status=NodeStatus(row.recorded_status) if row.recorded_status else None,
        )
        for row in rows
    ]
    return ScanView(total=total, regions=regions, changed=changed)
