"""Deliveries to Temporal, stored first: CI webhooks and registrations as an outbox.

A verified webhook (or a registration) is written here, with its payload, in the
request's own transaction, and acknowledged; :mod:`xplane.webhooks.dispatcher`
then signals Temporal until it succeeds, across API restarts. The delivery id is
the sender's (a retry finds the row and is told its real state), so a replay is
never acted on twice and a delivery is never reported done before it is.

States: ``pending`` (to be signalled), ``delivered``, ``undeliverable`` (Temporal
refused it ``max_refusals`` times, e.g. no such workflow: retrying cannot help).

Rows are kept for a retention (``XPLANE_WEBHOOK_DELIVERY_RETENTION``, default 7 days)
and then pruned by the API's pruning loop, pending ones never. The retention must
outlast every sender's retries and the signed-timestamp window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from xplane.store.db import Base, UTCDateTime, utcnow

DEFAULT_RETENTION = timedelta(days=7)
# Longer than the terraform webhook's timestamp window (5 minutes) with room to spare:
# a replay inside the window must still find its id.
MIN_RETENTION = timedelta(hours=1)
MAX_ID_LENGTH = 128

PENDING = "pending"
DELIVERED = "delivered"
UNDELIVERABLE = "undeliverable"


class WebhookDeliveryRow(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    delivery_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # Rows from before the outbox were acted on when received: they read as delivered.
    state: Mapped[str] = mapped_column(String(16), default=DELIVERED, server_default=DELIVERED)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer(), default=0, server_default="0")
    refusals: Mapped[int] = mapped_column(Integer(), default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The dispatcher working on it until then (another replica takes over after).
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(256), nullable=True)


@dataclass(frozen=True)
class Delivery:
    """A pending delivery, claimed by one dispatcher."""

    delivery_id: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    refusals: int


@dataclass(frozen=True)
class Lease:
    owner: str
    until: datetime


def record_delivery(
    session: Session,
    delivery_id: str,
    kind: str,
    payload: dict[str, Any],
    now: datetime | None = None,
    lease: Lease | None = None,
) -> str | None:
    """Store a new pending delivery; if ``delivery_id`` is known, its state instead.

    ``lease``: the caller delivers it itself first (no dispatcher takes it meanwhile).
    """
    now = now or utcnow()
    try:
        with session.begin_nested():
            session.add(
                WebhookDeliveryRow(
                    delivery_id=delivery_id,
                    kind=kind,
                    received_at=now,
                    state=PENDING,
                    payload=payload,
                    attempts=0,
                    refusals=0,
                    next_attempt_at=now,
                    lease_owner=lease.owner if lease else None,
                    lease_until=lease.until if lease else None,
                )
            )
        return None
    except IntegrityError:
        return delivery_state(session, delivery_id) or PENDING


def delivery_state(session: Session, delivery_id: str) -> str | None:
    return session.scalar(
        select(WebhookDeliveryRow.state).where(WebhookDeliveryRow.delivery_id == delivery_id)
    )


def release_delivery(session: Session, delivery_id: str) -> None:
    """Forget ``delivery_id`` (it was refused, not acted on): a redelivery may act."""
    session.execute(delete(WebhookDeliveryRow).where(WebhookDeliveryRow.delivery_id == delivery_id))


def claim_due(
    session: Session, kinds: list[str], lease: Lease, now: datetime, limit: int
) -> list[Delivery]:
    """Lease up to ``limit`` pending deliveries that are due and not leased by a live owner.

    PostgreSQL skips rows another replica is claiming (``FOR UPDATE SKIP LOCKED``);
    on both databases the conditional UPDATE is what makes a claim exclusive.
    """
    row = WebhookDeliveryRow
    free = or_(row.lease_until.is_(None), row.lease_until < now)
    query = (
        select(row.delivery_id)
        .where(row.state == PENDING, row.kind.in_(kinds), row.next_attempt_at <= now, free)
        .order_by(row.next_attempt_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    claimed = []
    for delivery_id in session.scalars(query).all():
        taken = session.execute(
            update(row)
            .where(row.delivery_id == delivery_id, row.state == PENDING, free)
            .values(lease_owner=lease.owner, lease_until=lease.until)
        )
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(delivery_id)
    rows = session.scalars(select(row).where(row.delivery_id.in_(claimed))).all()
    return [
        Delivery(r.delivery_id, r.kind, dict(r.payload or {}), r.attempts, r.refusals)
        for r in sorted(rows, key=lambda r: claimed.index(r.delivery_id))
    ]


def mark_delivered(session: Session, delivery_id: str, owner: str, now: datetime) -> bool:
    """Delivered (by the lease's owner); False if another owner took it over meanwhile."""
    row = WebhookDeliveryRow
    done = session.execute(
        update(row)
        .where(row.delivery_id == delivery_id, row.state == PENDING, row.lease_owner == owner)
        .values(
            state=DELIVERED,
            delivered_at=now,
            attempts=row.attempts + 1,
            lease_owner=None,
            lease_until=None,
            next_attempt_at=None,
            last_error=None,
        )
    )
    return done.rowcount == 1  # type: ignore[attr-defined]


def mark_failed(
    session: Session,
    delivery_id: str,
    owner: str,
    now: datetime,
    error: str,
    *,
    refused: bool,
    retry_in: timedelta,
    max_refusals: int,
) -> str | None:
    """Record a failed attempt; the delivery's new state (None: not ours any more).

    A refusal (Temporal answered no) counts toward ``max_refusals``, after which the
    delivery is undeliverable; anything else (Temporal unreachable) is retried forever.
    """
    row = session.get(WebhookDeliveryRow, delivery_id, with_for_update=True)
    if row is None or row.state != PENDING or row.lease_owner != owner:
        return None
    row.attempts += 1
    row.refusals += 1 if refused else 0
    row.last_error = error[:256]
    row.lease_owner = row.lease_until = None
    if row.refusals >= max_refusals:
        row.state, row.next_attempt_at = UNDELIVERABLE, None
    else:
        row.next_attempt_at = now + retry_in
    return row.state


def prune_deliveries(session: Session, older_than: datetime) -> int:
    """Delete deliveries received before ``older_than`` that are done; how many went.

    Pending ones stay, however old: they are still owed to Temporal.
    """
    result = session.execute(
        delete(WebhookDeliveryRow).where(
            WebhookDeliveryRow.received_at < older_than, WebhookDeliveryRow.state != PENDING
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
