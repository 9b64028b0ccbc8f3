"""Hourly load per service and region: what ``xplane autoscale forecast`` fits.

Heartbeat samples are pruned after minutes (they drive the autoscaler's window, not
history), so the autoscaler adds each tick's aggregate to its clock hour's row here:
``ticks``, the sum of the region's total QPS (over the ticks that had QPS) and of its
CPU in node units. An hour's load is the sums over the ticks. Rows older than
``KEEP`` are pruned by the same writer. One writer per (service, region): its
autoscale workflow.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Float, Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from xplane.store.db import Base, UTCDateTime

KEEP = timedelta(days=35)  # five weeks: a 14-day fit and then some


class RegionLoadHourRow(Base):
    __tablename__ = "region_load_hours"

    service: Mapped[str] = mapped_column(String(128), primary_key=True)
    region: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    ticks: Mapped[int] = mapped_column(Integer, default=0)
    qps_ticks: Mapped[int] = mapped_column(Integer, default=0)
    qps_sum: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_nodes_sum: Mapped[float] = mapped_column(Float, default=0.0)


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def add_load(
    session: Session,
    service: str,
    region: str,
    at: datetime,
    *,
    qps_total: float | None,
    cpu_nodes: float,
) -> None:
    """Add one tick's region load to its hour (and prune what is older than KEEP)."""
    hour = _hour(at)
    row = session.get(RegionLoadHourRow, (service, region, hour))
    if row is None:
        row = RegionLoadHourRow(
            service=service,
            region=region,
            hour=hour,
            ticks=0,
            qps_ticks=0,
            qps_sum=0.0,
            cpu_nodes_sum=0.0,
        )
        session.add(row)
        session.execute(
            delete(RegionLoadHourRow).where(
                RegionLoadHourRow.service == service,
                RegionLoadHourRow.region == region,
                RegionLoadHourRow.hour < hour - KEEP,
            )
        )
    row.ticks += 1
    row.cpu_nodes_sum += cpu_nodes
    if qps_total is not None:
        row.qps_ticks += 1
        row.qps_sum += qps_total


def hourly_loads(
    session: Session, service: str, region: str, since: datetime
) -> dict[datetime, tuple[float | None, float]]:
    """Clock hour (UTC) -> (mean total QPS, mean CPU in nodes) since ``since``."""
    query = select(RegionLoadHourRow).where(
        RegionLoadHourRow.service == service,
        RegionLoadHourRow.region == region,
        RegionLoadHourRow.hour >= _hour(since),
    )
    return {
        row.hour: (
            row.qps_sum / row.qps_ticks if row.qps_ticks else None,
            row.cpu_nodes_sum / row.ticks if row.ticks else 0.0,
        )
        for row in session.scalars(query)
        if row.ticks
    }
