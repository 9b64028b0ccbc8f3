"""Delivery ids already seen: a replayed webhook is acknowledged but not acted on twice."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from xplane.store.db import Base, UTCDateTime, utcnow


class WebhookDeliveryRow(Base):
    __tablename__ = "webhook_deliveries"

    delivery_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


def claim_delivery(session: Session, delivery_id: str, kind: str) -> bool:
    """Record ``delivery_id``; False if it was seen before (a replay)."""
    try:
        with session.begin_nested():
            session.add(
                WebhookDeliveryRow(delivery_id=delivery_id, kind=kind, received_at=utcnow())
            )
        return True
    except IntegrityError:
        return False


def prune_deliveries(session: Session, older_than: datetime) -> int:
    result = session.execute(
        delete(WebhookDeliveryRow).where(WebhookDeliveryRow.received_at < older_than)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
