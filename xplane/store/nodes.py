"""Nodes, their latest state and metric samples.

The API writes here (registration, batched heartbeats); the world-state loop,
the GTM loop and the autoscaler read through :func:`scan_nodes`,
:func:`world_snapshot` and :func:`metric_samples`. Status (up/down/drain) is
never stored as the truth: it is derived from the row at read time by the pure
:func:`derive_status`, so every reader with the same clock agrees.
``recorded_status`` is only the world-state loop's memory of what it last saw,
so it can signal on transitions.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import Field
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    String,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from xplane.domain import NodeSnapshot, NodeState, NodeStatus, StrictModel, WorldSnapshot
from xplane.store.db import Base, UTCDateTime, utcnow
from xplane.store.driver_sql import DriverStatement
from xplane.store.events import record_event

HeartbeatAction = Literal["none", "drain", "deregister"]


class NodeRow(Base):
    __tablename__ = "nodes"
    __table_args__ = (Index("ix_nodes_service_region", "service", "region"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    service: Mapped[str] = mapped_column(String(128))
    region: Mapped[str] = mapped_column(String(128))
    address: Mapped[str] = mapped_column(String(64))
    port: Mapped[int | None] = mapped_column(Integer)
    hostname: Mapped[str | None] = mapped_column(String(255))
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    agent_version: Mapped[str | None] = mapped_column(String(64))
    # sha256 hex of the node's bearer token; the token itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Lifecycle (owned by the node's lifecycle workflow).
    state: Mapped[str] = mapped_column(String(16), default=NodeState.IDLE.value)
    state_reason: Mapped[str | None] = mapped_column(String(512))
    state_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Desired drain, set by an operator, the autoscaler or the lifecycle.
    drain_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    drain_requested_by: Mapped[str | None] = mapped_column(String(128))
    drain_reason: Mapped[str | None] = mapped_column(String(512))
    drain_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Latest heartbeat.
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reported_status: Mapped[str | None] = mapped_column(String(16))  # up | drain (agent's own)
    cpu: Mapped[float | None] = mapped_column(Float)
    rtt_ms: Mapped[float | None] = mapped_column(Float)
    error_rate: Mapped[float | None] = mapped_column(Float)
    qps: Mapped[float | None] = mapped_column(Float)
    probes_ok: Mapped[int | None] = mapped_column(Integer)
    probes_total: Mapped[int | None] = mapped_column(Integer)
    # XPlane's own active check against the node (None = not checked yet).
    health_check_ok: Mapped[bool | None] = mapped_column(Boolean)
    health_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # What the world-state loop last recorded, to detect transitions.
    recorded_status: Mapped[str | None] = mapped_column(String(16))
    recorded_status_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class MetricSampleRow(Base):
    __tablename__ = "node_metric_samples"
    __table_args__ = (Index("ix_samples_service_region_at", "service", "region", "at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    node_id: Mapped[str] = mapped_column(String(128))  # never searched by: no index to maintain
    service: Mapped[str] = mapped_column(String(128))
    region: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    cpu: Mapped[float] = mapped_column(Float)
    rtt_ms: Mapped[float] = mapped_column(Float)
    error_rate: Mapped[float] = mapped_column(Float)
    qps: Mapped[float | None] = mapped_column(Float)
    probes_ok: Mapped[int] = mapped_column(Integer, default=0)
    probes_total: Mapped[int] = mapped_column(Integer, default=0)


# ------------------------------------------------------------------ models
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


class Sample(StrictModel):
    """One heartbeat's metrics, for the autoscaler's aggregator."""

    node_id: str
    service: str
    region: str
    at: datetime
    cpu: float = Field(ge=0, le=1)
    rtt_ms: float = Field(ge=0)
    error_rate: float = Field(ge=0, le=1)
    qps: float | None = Field(default=None, ge=0)
    probes_ok: int = Field(default=0, ge=0)
    probes_total: int = Field(default=0, ge=0)


class StatusInputs(Protocol):
    """What :func:`derive_status` reads (a :class:`NodeRow` has all of it)."""

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


# ------------------------------------------------------------- pure logic
def derive_status(node: StatusInputs, now: datetime, timeout: timedelta) -> NodeStatus:
    """The node's status at ``now``.

    drain wins: a drained node is out of traffic on purpose, and one that then
    stops (the normal way out) must not look like a failure to recover from.
    Otherwise down when it never heartbeated, its last heartbeat is older than
    ``timeout``, or every probe it reported failed; else up.
    """
    if node.drain_requested or node.reported_status == NodeStatus.DRAIN.value:
        return NodeStatus.DRAIN
    if node.last_heartbeat_at is None or now - node.last_heartbeat_at > timeout:
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


def is_serving(node: NodeRow, now: datetime, timeout: timedelta) -> bool:
    """Lifecycle ``active`` and status ``up``: what the autoscaler and regions count as ready."""
    return (
        node.state == NodeState.ACTIVE.value and derive_status(node, now, timeout) is NodeStatus.UP
    )


def is_coming_up(node: NodeRow, now: datetime, timeout: timedelta) -> bool:
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


def is_live(node: NodeRow, now: datetime, timeout: timedelta) -> bool:
    """May the node still be running at its address? (Another address for its id is a 409.)

    Yes unless it is being deleted or has gone silent: a fresh heartbeat (even
    with failing probes) or, before the first heartbeat, a registration younger
    than ``timeout``.
    """
    if node.state == NodeState.DELETE.value:
        return False
    seen = node.last_heartbeat_at or node.registered_at
    return seen is not None and now - seen <= timeout


# ------------------------------------------------------------ registration
@dataclass(frozen=True)
class Registration:
    node_id: str
    service: str
    region: str
    address: str
    token_hash: str
    port: int | None = None
    hostname: str | None = None
    labels: dict[str, str] | None = None
    agent_version: str | None = None


ConflictField = Literal["service", "region", "address"]


class RegistrationConflict(Exception):
    """The node id is another node's: ``field`` names what differs, never its value."""

    def __init__(self, node_id: str, field: ConflictField) -> None:
        self.node_id, self.field = node_id, field
        super().__init__(f"node {node_id!r} is registered with another {field}")


class RegistrationRefused(Exception):
    """The caller may not re-register (or create) this node id."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(f"not allowed to register node {node_id!r}")


# Decides, with the node as stored (None: no such node yet), whether the caller may
# register this id. The API's answer depends on the caller's token (routes_nodes).
Authorize = Callable[[NodeRow | None], bool]


def only_new_nodes(existing: NodeRow | None) -> bool:
    """The default :data:`Authorize`: create new nodes, never re-register an existing one."""
    return existing is None


def registration_conflict(
    existing: NodeRow, reg: Registration, now: datetime, timeout: timedelta
) -> RegistrationConflict | None:
    """Why ``reg`` may not re-register ``existing``, or None (pure).

    A node never moves to another service or region, whatever its state: an id is
    only ever re-registered where it lives. Another address is refused while the
    node is live (the node at the old address is still running).
    """
    if existing.service != reg.service:
        return RegistrationConflict(reg.node_id, "service")
    if existing.region != reg.region:
        return RegistrationConflict(reg.node_id, "region")
    if existing.address != reg.address and is_live(existing, now, timeout):
        return RegistrationConflict(reg.node_id, "address")
    return None


def register_node(
    session: Session,
    reg: Registration,
    now: datetime,
    timeout: timedelta,
    *,
    authorize: Authorize = only_new_nodes,
) -> tuple[NodeRow, bool]:
    """Insert or refresh a node; return (row, created).

    ``authorize`` is asked first, with the locked row (or None):
    :class:`RegistrationRefused` when it says no. Then
    :func:`registration_conflict` (:class:`RegistrationConflict`). Same id and
    address: the same node again (fresh token, metadata refreshed, lifecycle
    kept). Another address of a node no longer live, or a node given up: the id
    starts a new life (lifecycle back to idle).
    """
    row = session.get(NodeRow, reg.node_id, with_for_update=True)
    if not authorize(row):
        raise RegistrationRefused(reg.node_id)
    created = row is None
    if row is None:
        row = NodeRow(id=reg.node_id, registered_at=now, state=NodeState.IDLE.value)
        session.add(row)
    else:
        conflict = registration_conflict(row, reg, now, timeout)
        if conflict is not None:
            raise conflict
        if row.address != reg.address or row.state == NodeState.DELETE.value:
            _reset(row, now)  # silent elsewhere, or given up and come back: a new life
    row.service, row.region, row.address = reg.service, reg.region, reg.address
    row.port, row.hostname, row.agent_version = reg.port, reg.hostname, reg.agent_version
    row.labels = dict(reg.labels or {})
    row.token_hash = reg.token_hash
    return row, created


def _reset(row: NodeRow, now: datetime) -> None:
    row.registered_at, row.state, row.state_reason = now, NodeState.IDLE.value, "re-registered"
    row.state_changed_at = now
    row.drain_requested, row.drain_requested_by, row.drain_reason = False, None, None
    row.drain_requested_at = None
    row.last_heartbeat_at = row.reported_status = None
    row.cpu = row.rtt_ms = row.error_rate = row.qps = None
    row.probes_ok = row.probes_total = None
    row.health_check_ok, row.health_checked_at = None, None
    row.recorded_status, row.recorded_status_at = None, None


def revoke_token(session: Session, node_id: str) -> None:
    """The node's token stops working: its next heartbeat is refused (401) and the agent
    registers again, which gives a node that was given up a new life (see register_node)."""
    row = get_node(session, node_id)
    row.token_hash = f"revoked-{uuid.uuid4().hex}"  # unique, and no sha256 hex digest


def node_for_token(session: Session, token_hash: str) -> str | None:
    return session.scalar(select(NodeRow.id).where(NodeRow.token_hash == token_hash))


# --------------------------------------------------------------- heartbeats
@dataclass(frozen=True)
class Heartbeat:
    node_id: str
    token_hash: str
    at: datetime
    cpu: float
    rtt_ms: float
    error_rate: float
    qps: float | None
    probes_ok: int
    probes_total: int
    reported_status: str | None  # None = keep what the agent said last


@dataclass(frozen=True)
class HeartbeatResult:
    """The node after the write; None in :func:`apply_heartbeats` = token no longer valid."""

    node_id: str
    state: str
    status: NodeStatus
    action: HeartbeatAction
    service: str = ""
    region: str = ""


_METRICS = ("cpu", "rtt_ms", "error_rate", "qps", "probes_ok", "probes_total")
_NODE = NodeRow.__table__.c
_UPDATE_NODE = DriverStatement(
    update(NodeRow)
    .where(
        _NODE.id == bindparam("b_id"),
        _NODE.token_hash == bindparam("b_hash"),
        # Concurrent batches (PostgreSQL) may commit out of order: never go back in time.
        or_(
            _NODE.last_heartbeat_at.is_(None),
            _NODE.last_heartbeat_at <= bindparam("b_at", type_=UTCDateTime()),
        ),
    )
    .values({name: bindparam(name) for name in ("last_heartbeat_at", "reported_status", *_METRICS)})
)
_INSERT_SAMPLE = DriverStatement(
    insert(MetricSampleRow)
    .values({name: bindparam(name) for name in ("node_id", "service", "region", "at", *_METRICS)})
    .inline()  # no RETURNING of the new ids (PostgreSQL): nothing reads them
)


def apply_heartbeats(
    session: Session, beats: Sequence[Heartbeat], timeout: timedelta
) -> list[HeartbeatResult | None]:
    """Store a batch of heartbeats (one transaction is the caller's); results in input order.

    Three statements whatever the batch size: SELECT ... FOR UPDATE of the nodes
    (in id order, so concurrent batches on PostgreSQL lock alike and cannot
    deadlock), one executemany UPDATE, one executemany INSERT of samples. A beat
    whose token hash is no longer the node's (re-registered, maybe on another
    replica) gets None, whatever any cache said; the UPDATE re-checks the hash.
    """
    if not beats:
        return []
    # Core for the read, the driver for the writes: the ORM's bookkeeping, and then
    # SQLAlchemy's per-row parameter processing, cost more than the SQL itself.
    conn = session.connection()
    query = (
        select(
            _NODE.id,
            _NODE.token_hash,
            _NODE.service,
            _NODE.region,
            _NODE.state,
            _NODE.drain_requested,
            _NODE.reported_status,
        )
        .where(_NODE.id.in_({b.node_id for b in beats}))
        .order_by(_NODE.id)
        .with_for_update()
    )
    current = {row.id: row for row in conn.execute(query)}
    reported: dict[str, str | None] = {k: r.reported_status for k, r in current.items()}
    results: list[HeartbeatResult | None] = []
    updates: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for beat in beats:
        row = current.get(beat.node_id)
        if row is None or row.token_hash != beat.token_hash:
            results.append(None)
            continue
        # A beat without status keeps what the agent said last (maybe earlier in this batch).
        reported[beat.node_id] = beat.reported_status or reported[beat.node_id]
        view = _StatusView(
            row.drain_requested, reported[beat.node_id], beat.at, beat.probes_ok, beat.probes_total
        )
        results.append(
            HeartbeatResult(
                node_id=beat.node_id,
                state=row.state,
                status=derive_status(view, beat.at, timeout),
                action=heartbeat_action(row.state, row.drain_requested),
                service=row.service,
                region=row.region,
            )
        )
        metrics = {
            "cpu": beat.cpu,
            "rtt_ms": beat.rtt_ms,
            "error_rate": beat.error_rate,
            "qps": beat.qps,
            "probes_ok": beat.probes_ok,
            "probes_total": beat.probes_total,
        }
        updates.append(
            {
                "b_id": beat.node_id,
                "b_hash": beat.token_hash,
                "b_at": beat.at,
                "last_heartbeat_at": beat.at,
                "reported_status": reported[beat.node_id],
                **metrics,
            }
        )
        samples.append(
            {"node_id": beat.node_id, "service": row.service, "region": row.region, "at": beat.at}
            | metrics
        )
    # Stable sort: two beats of one node in one batch land in arrival order.
    _UPDATE_NODE.executemany(conn, sorted(updates, key=lambda u: u["b_id"]))
    _INSERT_SAMPLE.executemany(conn, samples)
    return results


@dataclass(frozen=True)
class _StatusView:
    drain_requested: bool
    reported_status: str | None
    last_heartbeat_at: datetime | None
    probes_ok: int | None
    probes_total: int | None


def prune_samples(session: Session, older_than: datetime) -> int:
    """Delete samples taken before ``older_than``; return how many."""
    result = session.execute(delete(MetricSampleRow).where(MetricSampleRow.at < older_than))
    return int(getattr(result, "rowcount", 0) or 0)


def metric_samples(session: Session, service: str, region: str, since: datetime) -> list[Sample]:
    query = (
        select(MetricSampleRow)
        .where(
            MetricSampleRow.service == service,
            MetricSampleRow.region == region,
            MetricSampleRow.at >= since,
        )
        .order_by(MetricSampleRow.at, MetricSampleRow.id)
    )
    return [
        Sample(
            node_id=r.node_id,
            service=r.service,
            region=r.region,
            at=r.at,
            cpu=r.cpu,
            rtt_ms=r.rtt_ms,
            error_rate=r.error_rate,
            qps=r.qps,
            probes_ok=r.probes_ok,
            probes_total=r.probes_total,
        )
        for r in session.scalars(query)
    ]


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


def get_node(session: Session, node_id: str) -> NodeRow:
    row = session.get(NodeRow, node_id)
    if row is None:
        raise NodeNotFound(node_id)
    return row


def count_nodes(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(NodeRow)) or 0)


def count_samples(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(MetricSampleRow)) or 0)


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
