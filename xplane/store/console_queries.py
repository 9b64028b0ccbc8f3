"""Per-region aggregates of the nodes (the console's overview, the GTM weights) and the
events the console charts.

Neither must scale with the node count: :func:`region_tallies` lets the database group
the nodes (one row per service, region and lifecycle state), so the API reads
~regions x states rows, never one per node; :func:`gtm_aggregates` gives the GTM
formula its per-region counts the same way, plus the one thing that is per node (the
ready nodes' addresses, each a DNS record). What "ready" means here is the GTM
formula's (:mod:`xplane.gtm.weights`), expressed in SQL, and both read the same median.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, func, literal, not_, or_, select
from sqlalchemy.orm import Session

from xplane.domain import NodeState, NodeStatus
from xplane.gate import GateTrust
from xplane.gtm.weights import RegionAggregate
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
    # coalesce: a node that never reported a status is not draining; NULL would make
    # not_(...) NULL, and the node count as neither registered nor ready.
    return or_(
        NodeRow.drain_requested.is_(True),
        func.coalesce(NodeRow.reported_status, "") == NodeStatus.DRAIN,
    )


def _status_up(fresh_after: datetime) -> ColumnElement[bool]:
    """``derive_status`` == up, in SQL."""
    probes_failing = and_(NodeRow.probes_total > 0, func.coalesce(NodeRow.probes_ok, 0) == 0)
    return and_(
        not_(_status_drain()),
        NodeRow.last_heartbeat_at.is_not(None),
        NodeRow.last_heartbeat_at >= fresh_after,
        not_(func.coalesce(probes_failing, False)),
    )


def _ready(
    fresh_after: datetime,
    max_error_rates: Mapping[str, float],
    trust: GateTrust | None = None,
) -> ColumnElement[bool]:
    """GTM's ready: active, up, fresh, error rate within the service's limit, check not failing.

    With the gate's ``trust`` (:func:`xplane.gate.trusted_view`'s two rules): a node
    silent past the timeout but last recorded up by the world-state scan counts as up
    and fresh, and in a held region a failing check does not count.
    """
    default = 0.5  # GtmPolicy.max_error_rate's default, for nodes of a service without one
    limit = (
        case(dict(max_error_rates), value=NodeRow.service, else_=default)
        if max_error_rates
        else literal(default)
    )
    up = _status_up(fresh_after)
    check_ok = or_(NodeRow.health_check_ok.is_(None), NodeRow.health_check_ok.is_(True))
    if trust is not None and trust.silence_unconfirmed:
        silent = or_(NodeRow.last_heartbeat_at.is_(None), NodeRow.last_heartbeat_at < fresh_after)
        unconfirmed = and_(
            not_(_status_drain()), silent, NodeRow.recorded_status == NodeStatus.UP.value
        )
        up = or_(up, unconfirmed)
    if trust is not None and trust.checks_untrusted:
        check_ok = or_(check_ok, NodeRow.region.in_(sorted(trust.checks_untrusted)))
    return and_(
        NodeRow.state == NodeState.ACTIVE,
        up,
        check_ok,
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
    session: Session, ready: ColumnElement[bool], service: str | None = None
) -> dict[tuple[str, str], float | None]:
    """The median RTT of each region's ready nodes, computed by the database.

    Ranked and averaged (the middle one or two) on both engines, the way
    ``statistics.median`` does it: ``percentile_cont`` interpolates as a + 0.5 (b - a),
    which can differ from (a + b) / 2 in the last bit, and the weights must not.
    """
    measured = and_(ready, NodeRow.rtt_ms.is_not(None))
    if service is not None:
        measured = and_(measured, NodeRow.service == service)
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


def gtm_aggregates(
    session: Session,
    service: str,
    region_names: Collection[str],
    now: datetime,
    timeout: timedelta,
    max_error_rate: float,
    trust: GateTrust | None = None,
) -> tuple[dict[str, RegionAggregate], list[str]]:
    """``service``'s nodes per region as the GTM formula counts them, and the unready
    addresses (what :func:`xplane.gtm.weights.compute_weights_and_unready` gives from
    every node): for :func:`xplane.gtm.weights.compute_weights_from_aggregates`.
    ``trust``: the self-health gate's, so the counts are those of the nodes as
    :func:`xplane.gate.trusted_view` shows them.

    A grouped count, the ready nodes' (id, address, RTT) and the distinct addresses of
    the others: no row per node that is not ready, nothing per node in Python beyond
    the records to publish (and their RTTs' median).
    """
    names = sorted(region_names)
    ready = _ready(now - timeout, {service: max_error_rate}, trust)
    mine = and_(NodeRow.service == service, NodeRow.region.in_(names))
    gone = NodeRow.state == NodeState.DELETE
    registered = and_(not_(gone), NodeRow.state != NodeState.DRAIN, not_(_status_drain()))
    counts = (
        select(
            NodeRow.region,
            _count(not_(gone)),
            _count(registered),
            _count(ready),
        )
        .where(mine)
        .group_by(NodeRow.region)
    )
    out: dict[str, RegionAggregate] = {}
    for region, alive, n_registered, n_ready in session.execute(counts):
        out[region] = RegionAggregate(
            registered=int(n_registered or 0), alive=int(alive or 0), ready=int(n_ready or 0)
        )
    # The ready nodes are read anyway (each is a record): their RTTs come along, and the
    # median of them costs less than the database's window sort (800 ms at 100k on SQLite).
    listed = select(NodeRow.region, NodeRow.id, NodeRow.address, NodeRow.rtt_ms)
    rtts: dict[str, list[float]] = {}
    for region, node_id, address, rtt in session.execute(
        listed.where(mine, ready).order_by(NodeRow.id)
    ):
        agg = out[region]
        agg.ready_ids.append(node_id)
        agg.ready_addresses.append(address)
        if rtt is not None:
            rtts.setdefault(region, []).append(rtt)
    for region, values in rtts.items():
        out[region].median_rtt_ms = statistics.median(values)
    # Unready: the addresses of the service's nodes that are not ready (in a named
    # region), less those another, ready node also has. A case, not not_(): NULLs.
    published = case((and_(ready, NodeRow.region.in_(names)), 1), else_=0)
    others = select(NodeRow.address).where(NodeRow.service == service, published == 0)
    ready_addresses = {a for agg in out.values() for a in agg.ready_addresses}
    # Sorted here, not by the database: its collation need not be Python's order.
    return out, sorted(set(session.scalars(others.distinct())) - ready_addresses)


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
