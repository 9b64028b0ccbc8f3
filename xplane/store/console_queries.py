"""The console's reads: per-region aggregates of the nodes and the events it charts.

The overview must not scale with the node count: :func:`region_tallies` lets the
database group the nodes (one row per service, region and lifecycle state), so the
API reads ~regions x states rows, never one per node. What "ready" means here is the
GTM formula's (:mod:`xplane.gtm.weights`), expressed in SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, func, literal, not_, or_, select
from sqlalchemy.orm import Session

from xplane.domain import NodeState, NodeStatus
from xplane.store.events import EventRow
from xplane.store.node_tables import NodeRow

DNS_APPLIED = "dns.applied"


@dataclass
class RegionTally:
    """One (service, region)'s nodes, counted the way GTM counts them."""

    service: str
    region: str
    by_state: dict[str, int] = field(default_factory=dict)
    alive: int = 0  # not deleted
    registered: int = 0  # not draining nor deleted
    ready: int = 0
    up: int = 0
    down: int = 0
    draining: int = 0
    median_rtt_ms: float | None = None  # of the ready nodes that report one

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


def _status_drain() -> ColumnElement[bool]:
    return or_(NodeRow.drain_requested.is_(True), NodeRow.reported_status == NodeStatus.DRAIN)


def _status_up(fresh_after: datetime) -> ColumnElement[bool]:
    """``derive_status`` == up, in SQL."""
    probes_failing = and_(NodeRow.probes_total > 0, func.coalesce(NodeRow.probes_ok, 0) == 0)
    return and_(
        not_(_status_drain()),
        NodeRow.last_heartbeat_at.is_not(None),
        NodeRow.last_heartbeat_at >= fresh_after,
        not_(func.coalesce(probes_failing, False)),
    )


def _ready(fresh_after: datetime, max_error_rates: Mapping[str, float]) -> ColumnElement[bool]:
    """GTM's ready: active, up, fresh, error rate within the service's limit, check not failing."""
    default = 0.5  # GtmPolicy.max_error_rate's default, for nodes of a service without one
    limit = (
        case(dict(max_error_rates), value=NodeRow.service, else_=default)
        if max_error_rates
        else literal(default)
    )
    return and_(
        NodeRow.state == NodeState.ACTIVE,
        _status_up(fresh_after),
        or_(NodeRow.health_check_ok.is_(None), NodeRow.health_check_ok.is_(True)),
        or_(NodeRow.error_rate.is_(None), NodeRow.error_rate <= limit),
    )


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def region_tallies(
    session: Session,
    now: datetime,
    timeout: timedelta,
    max_error_rates: Mapping[str, float],
) -> dict[tuple[str, str], RegionTally]:
    """(service, region) -> its tally; ``max_error_rates``: service -> GTM policy's limit."""
    fresh_after = now - timeout
    ready = _ready(fresh_after, max_error_rates)
    up = _status_up(fresh_after)
    drain = _status_drain()
    query = select(
        NodeRow.service,
        NodeRow.region,
        NodeRow.state,
        func.count(),
        _count(ready),
        _count(up),
        _count(drain),
    ).group_by(NodeRow.service, NodeRow.region, NodeRow.state)
    out: dict[tuple[str, str], RegionTally] = {}
    for service, region, state, n, n_ready, n_up, n_drain in session.execute(query):
        tally = out.setdefault((service, region), RegionTally(service=service, region=region))
        tally.by_state[state] = tally.by_state.get(state, 0) + int(n)
        if state == NodeState.DELETE:
            continue
        tally.alive += int(n)
        tally.ready += int(n_ready or 0)
        tally.up += int(n_up or 0)
        tally.draining += int(n_drain or 0)
        tally.down += int(n) - int(n_up or 0) - int(n_drain or 0)
        if state != NodeState.DRAIN:
            tally.registered += int(n) - int(n_drain or 0)
    for key, rtt in _median_rtts(session, ready).items():
        if key in out:
            out[key].median_rtt_ms = rtt
    return out


def _median_rtts(
    session: Session, ready: ColumnElement[bool]
) -> dict[tuple[str, str], float | None]:
    """The median RTT of each region's ready nodes, computed by the database."""
    measured = and_(ready, NodeRow.rtt_ms.is_not(None))
    if session.get_bind().dialect.name == "postgresql":
        median = func.percentile_cont(0.5).within_group(NodeRow.rtt_ms)
        query = (
            select(NodeRow.service, NodeRow.region, median)
            .where(measured)
            .group_by(NodeRow.service, NodeRow.region)
        )
        return {(s, r): float(m) if m is not None else None for s, r, m in session.execute(query)}
    # SQLite has no percentile: rank the values per region, average the middle one or two.
    region = (NodeRow.service, NodeRow.region)
    ranked = (
        select(
            NodeRow.service,
            NodeRow.region,
            NodeRow.rtt_ms.label("rtt"),
            func.row_number().over(partition_by=region, order_by=NodeRow.rtt_ms).label("rn"),
            func.count().over(partition_by=region).label("n"),
        )
        .where(measured)
        .subquery()
    )
    middle = or_(ranked.c.rn == (ranked.c.n + 1) / 2, ranked.c.rn == (ranked.c.n + 2) / 2)
    query = (
        select(ranked.c.service, ranked.c.region, func.avg(ranked.c.rtt))
        .where(middle)
        .group_by(ranked.c.service, ranked.c.region)
    )
    return {(s, r): float(m) if m is not None else None for s, r, m in session.execute(query)}


def latest_by_source(session: Session, sources: set[str], window: int) -> dict[str, EventRow]:
    """Each source's newest event among the last ``window`` events (a primary-key range:
    the events table has no index on ``source``)."""
    if not sources:
        return {}
    newest = last_event_id(session)
    ids = (
        select(func.max(EventRow.id))
        .where(EventRow.id > newest - window, EventRow.source.in_(sorted(sources)))
        .group_by(EventRow.source)
    )
    rows = session.scalars(select(EventRow).where(EventRow.id.in_(ids)))
    return {row.source: row for row in rows}


def latest_dns_applies(
    session: Session, service: str | None = None, limit: int = 50
) -> list[EventRow]:
    """The newest ``dns.applied`` events (newest first): the last one per provider is in it."""
    query = select(EventRow).where(EventRow.kind == DNS_APPLIED)
    if service is not None:
        query = query.where(EventRow.service == service)
    return list(session.scalars(query.order_by(EventRow.id.desc()).limit(limit)))


def events_since(
    session: Session,
    since: datetime,
    kinds: tuple[str, ...],
    *,
    service: str | None = None,
    region: str | None = None,
    limit: int = 20_000,
) -> list[EventRow]:
    """Events of the given kind prefixes at or after ``since``, oldest first."""
    query = select(EventRow).where(
        EventRow.at >= since, or_(*(EventRow.kind.startswith(k) for k in kinds))
    )
    if service is not None:
        query = query.where(EventRow.service == service)
    if region is not None:
        query = query.where(EventRow.region == region)
    return list(session.scalars(query.order_by(EventRow.id).limit(limit)))


def events_after(
    session: Session,
    after_id: int,
    *,
    kind_prefix: str | None = None,
    service: str | None = None,
    region: str | None = None,
    node_id: str | None = None,
    limit: int = 200,
) -> list[EventRow]:
    """Events with an id above ``after_id``, oldest first (the live stream's poll)."""
    query = select(EventRow).where(EventRow.id > after_id)
    if kind_prefix:
        query = query.where(EventRow.kind.startswith(kind_prefix))
    if service:
        query = query.where(EventRow.service == service)
    if region:
        query = query.where(EventRow.region == region)
    if node_id:
        query = query.where(EventRow.node_id == node_id)
    return list(session.scalars(query.order_by(EventRow.id).limit(limit)))


def last_event_id(session: Session) -> int:
    return int(session.scalar(select(func.max(EventRow.id))) or 0)


def node_events(session: Session, node_id: str, limit: int = 500) -> list[EventRow]:
    """A node's events, oldest first (its timeline)."""
    query = select(EventRow).where(EventRow.node_id == node_id)
    rows = list(session.scalars(query.order_by(EventRow.id.desc()).limit(limit)))
    rows.reverse()
    return rows
