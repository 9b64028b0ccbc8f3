"""Node pools as XPlane last committed them to Git (``infra/node-pool/<region>.tfvars``).

The autoscaler and the region lifecycle write here after each commit, so GTM
knows a region's desired node count and ``xplane status`` can show commits
still waiting for Terraform, without cloning the infra repo on every tick.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from xplane.domain import PoolSnapshot
from xplane.store.db import Base, UTCDateTime, utcnow


class NodePoolRow(Base):
    __tablename__ = "node_pools"

    service: Mapped[str] = mapped_column(String(128), primary_key=True)
    region: Mapped[str] = mapped_column(String(128), primary_key=True)
    node_count: Mapped[int] = mapped_column(Integer)
    last_scaled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    pending_commit: Mapped[str | None] = mapped_column(String(64))  # waiting for terraform
    last_terraform_status: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def set_pool(
    session: Session,
    service: str,
    region: str,
    node_count: int,
    *,
    at: datetime | None = None,
    pending_commit: str | None = None,
    scaled: bool = True,
) -> NodePoolRow:
    at = at or utcnow()
    row = session.get(NodePoolRow, (service, region))
    if row is None:
        row = NodePoolRow(service=service, region=region, node_count=node_count)
        session.add(row)
    row.node_count = node_count
    row.pending_commit = pending_commit
    row.updated_at = at
    if scaled:
        row.last_scaled_at = at
    return row


def finish_commit(session: Session, service: str, region: str, commit: str, status: str) -> bool:
    """Terraform finished ``commit``: clear it if it is the one pending. True if it was."""
    row = session.get(NodePoolRow, (service, region))
    if row is None or row.pending_commit != commit:
        return False
    row.pending_commit = None
    row.last_terraform_status = status
    row.updated_at = utcnow()
    return True


def list_pools(session: Session, service: str | None = None) -> list[NodePoolRow]:
    query = select(NodePoolRow)
    if service:
        query = query.where(NodePoolRow.service == service)
    return list(session.scalars(query.order_by(NodePoolRow.service, NodePoolRow.region)))


def pool_snapshots(session: Session, service: str | None = None) -> list[PoolSnapshot]:
    return [
        PoolSnapshot(
            service=r.service,
            region=r.region,
            node_count=r.node_count,
            last_scaled_at=r.last_scaled_at,
        )
        for r in list_pools(session, service)
    ]
