"""The event log: every decision and change, so an operator can follow an incident.

Events are linked by ``correlation_id`` (one incident: node down -> DNS apply ->
autoscale commit -> terraform -> new node active) and filterable by service,
region and node (``xplane events --region jp``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from xplane.store.db import Base, UTCDateTime, utcnow


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_region_time", "region", "at"),
        Index("ix_events_service_time", "service", "at"),
        Index("ix_events_correlation", "correlation_id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)  # e.g. dns.applied, node.down
    source: Mapped[str] = mapped_column(String(128))  # workflow id or component
    service: Mapped[str | None] = mapped_column(String(128))
    region: Mapped[str | None] = mapped_column(String(128))
    node_id: Mapped[str | None] = mapped_column(String(128))
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def record_event(
    session: Session,
    kind: str,
    message: str,
    *,
    source: str,
    service: str | None = None,
    region: str | None = None,
    node_id: str | None = None,
    correlation_id: str | None = None,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> EventRow:
    row = EventRow(
        kind=kind,
        message=message,
        source=source,
        service=service,
        region=region,
        node_id=node_id,
        correlation_id=correlation_id,
        data=data or {},
        at=at or utcnow(),
    )
    session.add(row)
    return row


def list_events(
    session: Session,
    *,
    service: str | None = None,
    region: str | None = None,
    node_id: str | None = None,
    kind_prefix: str | None = None,
    since: datetime | None = None,
    limit: int = 200,
) -> list[EventRow]:
    query = select(EventRow)
    if service:
        query = query.where(EventRow.service == service)
    if region:
        query = query.where(EventRow.region == region)
    if node_id:
        query = query.where(EventRow.node_id == node_id)
    if kind_prefix:
        query = query.where(EventRow.kind.startswith(kind_prefix))
    if since:
        query = query.where(EventRow.at >= since)
    return list(session.scalars(query.order_by(EventRow.id.desc()).limit(limit)))


AUDIT_PREFIX = "audit."


def prune_events(session: Session, older_than: datetime) -> int:
    """Delete events older than ``older_than``, never an audit event (``audit.*``)."""
    result = session.execute(
        delete(EventRow).where(EventRow.at < older_than, ~EventRow.kind.startswith(AUDIT_PREFIX))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
