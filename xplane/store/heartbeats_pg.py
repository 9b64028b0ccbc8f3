"""Heartbeat writes on PostgreSQL: one round trip per batch, whatever its size.

A batch is three statements sent together in psycopg's pipeline mode, so the
writer waits on the server once, not once per statement:

1. ``SELECT ... FOR UPDATE`` of the batch's nodes, in id order (concurrent
   batches lock alike and cannot deadlock; what it returns is what the beats
   answer with);
2. one ``UPDATE nodes ... FROM unnest(...)``: each node's latest beat of the
   batch, only where the token hash is still the node's and never back in time;
3. one ``INSERT INTO node_metric_samples ... SELECT FROM unnest(...) JOIN nodes``:
   a sample for every beat whose token hash is the node's, service and region
   read from the node row.

The batch travels as one array per column and the server joins it once, instead
of parsing, planning and executing a statement per row; psycopg prepares the
three statements on the server after their first few uses. Statements 2 and 3
decide in SQL which beats they store, by the same test the caller applies to the
rows of statement 1 (token hash equal, under the lock that statement took): a
beat answered is a beat stored, and a refused one stores nothing.

``synchronous_commit=False`` adds ``SET LOCAL synchronous_commit = off`` to the
batch's transaction (see ``heartbeat_synchronous_commit`` in docs/deploy.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from psycopg.rows import namedtuple_row
from sqlalchemy import Connection

if TYPE_CHECKING:
    from xplane.store.heartbeats import Heartbeat

_METRIC_COLUMNS = (
    ("cpu", "float8"),
    ("rtt_ms", "float8"),
    ("error_rate", "float8"),
    ("qps", "float8"),
    ("probes_ok", "int4"),
    ("probes_total", "int4"),
)
_BEAT_COLUMNS = (
    ("node_id", "varchar"),
    ("token_hash", "varchar"),
    ("at", "timestamptz"),
    ("reported_status", "varchar"),
    *_METRIC_COLUMNS,
)
_METRICS = tuple(name for name, _ in _METRIC_COLUMNS)


def _unnest(columns: tuple[tuple[str, str], ...]) -> str:
    arrays = ", ".join(f"%({name})s::{kind}[]" for name, kind in columns)
    return f"unnest({arrays}) AS v({', '.join(name for name, _ in columns)})"


LOCK_NODES = (
    "SELECT id, token_hash, service, region, state, drain_requested, reported_status "
    "FROM nodes WHERE id = ANY(%(ids)s::varchar[]) ORDER BY id FOR UPDATE"
)
UPDATE_NODES = (
    "UPDATE nodes AS n SET last_heartbeat_at = v.at, "
    "reported_status = COALESCE(v.reported_status, n.reported_status), "
    + ", ".join(f"{m} = v.{m}" for m in _METRICS)
    + f" FROM {_unnest(_BEAT_COLUMNS)} "
    "WHERE n.id = v.node_id AND n.token_hash = v.token_hash "
    "AND (n.last_heartbeat_at IS NULL OR n.last_heartbeat_at <= v.at)"
)
INSERT_SAMPLES = (
    "INSERT INTO node_metric_samples (node_id, service, region, at, "
    + ", ".join(_METRICS)
    + ") SELECT v.node_id, n.service, n.region, v.at, "
    + ", ".join(f"v.{m}" for m in _METRICS)
    + f" FROM {_unnest(_BEAT_COLUMNS)} "
    "JOIN nodes AS n ON n.id = v.node_id AND n.token_hash = v.token_hash"
)


def latest_per_node(beats: Sequence[Heartbeat]) -> list[Heartbeat]:
    """One beat per node and token hash, the last given (arrival order), in id order.

    An UPDATE ... FROM applies one source row per target row, so two beats of a node
    in one batch must become one: the latest, carrying the last status reported in
    the batch (a beat without status keeps what the agent said last). Beats of one
    node under two token hashes stay apart: at most one hash is the node's.
    """
    latest: dict[tuple[str, str], Heartbeat] = {}
    for beat in beats:
        key = (beat.node_id, beat.token_hash)
        before = latest.get(key)
        if before is not None and beat.reported_status is None and before.reported_status:
            beat = replace(beat, reported_status=before.reported_status)
        latest[key] = beat
    return [latest[key] for key in sorted(latest)]


def _columns(beats: Sequence[Heartbeat]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name, _ in _BEAT_COLUMNS}
    for beat in beats:
        for name, _ in _BEAT_COLUMNS:
            out[name].append(getattr(beat, name))
    out["at"] = [_utc(at) for at in out["at"]]
    return out


def _utc(at: datetime) -> datetime:
    return at.astimezone(UTC)


def write_batch(
    conn: Connection, beats: Sequence[Heartbeat], *, synchronous_commit: bool = True
) -> list[Any]:
    """Lock the batch's nodes, update them and insert the samples, in one round trip.

    Returns the locked node rows (id, token_hash, service, region, state,
    drain_requested, reported_status as they were before this batch), in id order.
    The transaction is the caller's (open on ``conn``), and so is its commit.
    """
    raw = conn.connection.driver_connection
    assert raw is not None  # a checked-out connection
    ids = sorted({b.node_id for b in beats})
    with raw.cursor(row_factory=namedtuple_row) as lock, raw.cursor() as cur:
        with raw.pipeline():  # sent together, then one wait for all three results
            lock.execute(LOCK_NODES, {"ids": ids})
            if not synchronous_commit:
                cur.execute("SET LOCAL synchronous_commit = off")
            cur.execute(UPDATE_NODES, _columns(latest_per_node(beats)))
            cur.execute(INSERT_SAMPLES, _columns(beats))
        return lock.fetchall()
