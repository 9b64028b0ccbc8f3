"""Batched heartbeat writes: the node's latest heartbeat and one metric sample per beat.

The API's writer groups the heartbeats of many nodes into one transaction
(:func:`apply_heartbeats`); the status each beat answers with is derived by the
pure :func:`xplane.lifecycle.node_status.derive_status`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.orm import Session

from xplane.domain import NodeStatus
from xplane.lifecycle.node_status import HeartbeatAction, derive_status, heartbeat_action
from xplane.store import heartbeats_pg
from xplane.store.db import UTCDateTime
from xplane.store.driver_sql import DriverStatement
from xplane.store.node_tables import MetricSampleRow, NodeRow


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
    session: Session,
    beats: Sequence[Heartbeat],
    timeout: timedelta,
    *,
    synchronous_commit: bool = True,
) -> list[HeartbeatResult | None]:
    """Store a batch of heartbeats (one transaction is the caller's); results in input order.

    Three statements whatever the batch size: SELECT ... FOR UPDATE of the nodes
    (in id order, so concurrent batches on PostgreSQL lock alike and cannot
    deadlock), one UPDATE, one INSERT of samples (SQLite: executemany; PostgreSQL:
    ``unnest`` statements sent in one round trip, :mod:`xplane.store.heartbeats_pg`).
    A beat whose token hash is no longer the node's (re-registered, maybe on another
    replica) gets None, whatever any cache said; the UPDATE re-checks the hash.
    ``synchronous_commit=False``: PostgreSQL does not wait for the WAL flush at commit.
    """
    if not beats:
        return []
    # Core for the read, the driver for the writes: the ORM's bookkeeping, and then
    # SQLAlchemy's per-row parameter processing, cost more than the SQL itself.
    conn = session.connection()
    if conn.dialect.name == "postgresql":  # the whole batch in one round trip
        locked = heartbeats_pg.write_batch(conn, beats, synchronous_commit=synchronous_commit)
        return _results(beats, {row.id: row for row in locked}, timeout, rows=False)[0]
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
    results, updates, samples = _results(
        beats, {row.id: row for row in conn.execute(query)}, timeout
    )
    # Stable sort: two beats of one node in one batch land in arrival order.
    _UPDATE_NODE.executemany(conn, sorted(updates, key=lambda u: u["b_id"]))
    _INSERT_SAMPLE.executemany(conn, samples)
    return results


def _results(
    beats: Sequence[Heartbeat], current: Mapping[str, Any], timeout: timedelta, *, rows: bool = True
) -> tuple[list[HeartbeatResult | None], list[dict[str, Any]], list[dict[str, Any]]]:
    """What each beat answers (None: its token hash is not the node's) and, with ``rows``,
    the node updates and samples that store them (the generic path's executemany rows)."""
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
        if not rows:
            continue
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
    return results, updates, samples


@dataclass(frozen=True)
class _StatusView:
    drain_requested: bool
    reported_status: str | None
    last_heartbeat_at: datetime | None
    probes_ok: int | None
    probes_total: int | None
