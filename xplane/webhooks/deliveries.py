"""Delivery ids already seen: a replayed webhook is acknowledged but not acted on twice.

Rows are kept for a retention (``XPLANE_WEBHOOK_DELIVERY_RETENTION``, default 7 days)
and then pruned by the API's pruning loop, so the table does not grow forever. The
retention must outlast every sender's retries and the signed-timestamp window.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import String, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from xplane.store.db import Base, UTCDateTime, utcnow

DEFAULT_RETENTION = timedelta(days=7)
# Longer than the terraform webhook's timestamp window (5 minutes) with room to spare:
# a replay inside the window must still find its id.
MIN_RETENTION = timedelta(hours=1)
MAX_ID_LENGTH = 128


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


def release_delivery(session: Session, delivery_id: str) -> None:
    """Forget ``delivery_id`` (it was claimed but not acted on): a redelivery may act."""
    session.execute(delete(WebhookDeliveryRow).where(WebhookDeliveryRow.delivery_id == delivery_id))


def prune_deliveries(session: Session, older_than: datetime) -> int:
    """Delete deliveries received before ``older_than``; how many went."""
    result = session.execute(
        delete(WebhookDeliveryRow).where(WebhookDeliveryRow.received_at < older_than)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
