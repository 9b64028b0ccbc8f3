"""The ``nodes`` table (registration, lifecycle, latest heartbeat) and the heartbeats'
metric samples (``node_metric_samples``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from xplane.domain import NodeState
from xplane.store.db import Base, UTCDateTime, utcnow


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
