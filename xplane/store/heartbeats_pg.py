"""Heartbeat writes on PostgreSQL: one ``unnest`` statement per batch, not one per row.

``executemany`` sends N UPDATEs and N INSERTs (pipelined, but still parsed, planned
and executed N times each); at 1,000 beats/s that per-row server work was most of
what ingest cost on PostgreSQL. Here the batch travels as one array per column and
the server joins it in a single UPDATE ... FROM unnest(...) and a single INSERT ...
SELECT FROM unnest(...). Same rows, same guards as the generic path
(:mod:`xplane.store.heartbeats`): the token hash is re-checked and a heartbeat
never moves ``last_heartbeat_at`` back in time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

from sqlalchemy import Connection

_NODE_COLUMNS = (
    ("b_id", "varchar"),
    ("b_hash", "varchar"),
    ("b_at", "timestamptz"),
    ("reported_status", "varchar"),
    ("cpu", "float8"),
    ("rtt_ms", "float8"),
    ("error_rate", "float8"),
    ("qps", "float8"),
    ("probes_ok", "int4"),
    ("probes_total", "int4"),
)
_SAMPLE_COLUMNS = (
    ("node_id", "varchar"),
    ("service", "varchar"),
    ("region", "varchar"),
    ("at", "timestamptz"),
    ("cpu", "float8"),
    ("rtt_ms", "float8"),
    ("error_rate", "float8"),
    ("qps", "float8"),
    ("probes_ok", "int4"),
    ("probes_total", "int4"),
)


def _unnest(columns: tuple[tuple[str, str], ...]) -> str:
    arrays = ", ".join(f"%({name})s::{kind}[]" for name, kind in columns)
    return f"unnest({arrays}) AS v({', '.join(name for name, _ in columns)})"


UPDATE_NODES = (
    "UPDATE nodes AS n SET last_heartbeat_at = v.b_at, reported_status = v.reported_status, "
    "cpu = v.cpu, rtt_ms = v.rtt_ms, error_rate = v.error_rate, qps = v.qps, "
    "probes_ok = v.probes_ok, probes_total = v.probes_total "
    f"FROM {_unnest(_NODE_COLUMNS)} "
    "WHERE n.id = v.b_id AND n.token_hash = v.b_hash "
    "AND (n.last_heartbeat_at IS NULL OR n.last_heartbeat_at <= v.b_at)"
)
INSERT_SAMPLES = (
    "INSERT INTO node_metric_samples (node_id, service, region, at, cpu, rtt_ms, error_rate, "
    "qps, probes_ok, probes_total) "
    f"SELECT v.node_id, v.service, v.region, v.at, v.cpu, v.rtt_ms, v.error_rate, v.qps, "
    f"v.probes_ok, v.probes_total FROM {_unnest(_SAMPLE_COLUMNS)}"
)


def latest_per_node(updates: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One update per node, the last given (arrival order): an UPDATE ... FROM applies one
    source row per target row, so two beats of a node in one batch must become one.
    The result is what applying them in order leaves: the latest beat's values."""
    latest: dict[str, dict[str, Any]] = {}
    for update in updates:
        latest[update["b_id"]] = update
    return [latest[key] for key in sorted(latest)]


def _columns(
    rows: Sequence[dict[str, Any]], columns: tuple[tuple[str, str], ...]
) -> dict[str, Any]:
    out: dict[str, list[Any]] = {name: [] for name, _ in columns}
    for row in rows:
        for name, _ in columns:
            out[name].append(row[name])
    for name, kind in columns:
        if kind == "timestamptz":
            out[name] = [v.astimezone(UTC) for v in out[name]]
    return out


def write_batch(
    conn: Connection, updates: Sequence[dict[str, Any]], samples: Sequence[dict[str, Any]]
) -> None:
    """The node updates and the samples of one batch, two statements in all."""
    if updates:
        conn.exec_driver_sql(UPDATE_NODES, _columns(latest_per_node(updates), _NODE_COLUMNS))
    if samples:
        conn.exec_driver_sql(INSERT_SAMPLES, _columns(samples, _SAMPLE_COLUMNS))
