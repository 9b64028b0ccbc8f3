"""The heartbeats' metric samples, as the autoscaler's aggregator reads them, and their pruning."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from xplane.domain import StrictModel
from xplane.store.node_tables import MetricSampleRow


class Sample(StrictModel):
    """One heartbeat's metrics, for the autoscaler's aggregator."""

    node_id: str
    service: str
    region: str
    at: datetime
    cpu: float = Field(ge=0, le=1)
    rtt_ms: float = Field(ge=0)
    error_rate: float = Field(ge=0, le=1)
    qps: float | None = Field(default=None, ge=0)
    probes_ok: int = Field(default=0, ge=0)
    probes_total: int = Field(default=0, ge=0)


def prune_samples(session: Session, older_than: datetime) -> int:
    """Delete samples taken before ``older_than``; return how many."""
    result = session.execute(delete(MetricSampleRow).where(MetricSampleRow.at < older_than))
    return int(getattr(result, "rowcount", 0) or 0)


def metric_samples(session: Session, service: str, region: str, since: datetime) -> list[Sample]:
    query = (
        select(MetricSampleRow)
        .where(
            MetricSampleRow.service == service,
            MetricSampleRow.region == region,
            MetricSampleRow.at >= since,
        )
        .order_by(MetricSampleRow.at, MetricSampleRow.id)
    )
    return [
        Sample(
            node_id=r.node_id,
            service=r.service,
            region=r.region,
            at=r.at,
            cpu=r.cpu,
            rtt_ms=r.rtt_ms,
            error_rate=r.error_rate,
            qps=r.qps,
            probes_ok=r.probes_ok,
            probes_total=r.probes_total,
        )
        for r in session.scalars(query)
    ]


def count_samples(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(MetricSampleRow)) or 0)
