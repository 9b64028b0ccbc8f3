"""Metrics of one service in one region over the autoscale window (pure).

The autoscaler never looks at a single heartbeat: it decides on a window
(``global.cpu_window``) of samples, reduced here to one :class:`RegionMetrics`.

Aggregation rules (each chosen so a node that reports more often than its
neighbours does not weigh more):

* ``cpu`` and ``error_rate``: mean of each node's mean over the window;
* ``qps_total``: sum of each node's mean QPS; ``qps_per_node``: that total
  divided by the nodes that reported QPS;
* ``rtt_p50_ms`` / ``rtt_p90_ms``: percentiles of every RTT sample in the
  window (pooled: tail latency is what users see, whichever node served them),
  by linear interpolation between closest ranks (numpy's default method);
* samples older than ``now - window`` or newer than ``now`` are ignored (a
  replayed world must not see its own future).

:func:`prometheus_region_metrics` (in :mod:`xplane.probes.prometheus`) is an
optional second source producing the same model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from statistics import fmean

from pydantic import BaseModel, Field


class Sample(BaseModel):
    """One node's report at one time (a heartbeat row, adapted by the caller)."""

    node_id: str
    at: datetime
    cpu: float | None = Field(default=None, ge=0, le=1)
    rtt_ms: float | None = Field(default=None, ge=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    qps: float | None = Field(default=None, ge=0)


class RegionMetrics(BaseModel):
    """A region's load over one window; ``None`` fields had no samples."""

    cpu: float | None = None
    rtt_p50_ms: float | None = None
    rtt_p90_ms: float | None = None
    error_rate: float | None = None
    qps_total: float | None = None
    qps_per_node: float | None = None
    nodes_reporting: int = 0
    samples: int = 0
    oldest_at: datetime | None = None
    newest_at: datetime | None = None

    def is_fresh(self, now: datetime, window: timedelta) -> bool:
        """True when some node reported within ``window`` of ``now``."""
        return (
            self.nodes_reporting > 0
            and self.newest_at is not None
            and as_utc(now) - as_utc(self.newest_at) <= window
        )

    def summary(self) -> dict[str, float | int]:
        """The known numbers, rounded, for commit messages and events."""
        fields = ("cpu", "rtt_p50_ms", "rtt_p90_ms", "error_rate", "qps_total", "qps_per_node")
        out: dict[str, float | int] = {"nodes_reporting": self.nodes_reporting}
        for name in fields:
            value = getattr(self, name)
            if value is not None:
                out[name] = round(value, 4)
        return out


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are read as UTC (what the store and WORLD.json files hold)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation between closest ranks.

    ``percentile([10, 20, ..., 100], 0.9) == 91.0``; ``values`` must not be empty.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be within [0, 1], not {q}")
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _mean_of_node_means(per_node: dict[str, list[float]]) -> float | None:
    means = [fmean(values) for values in per_node.values() if values]
    return fmean(means) if means else None


def aggregate(samples: Iterable[Sample], now: datetime, window: timedelta) -> RegionMetrics:
    """Reduce one region's samples to :class:`RegionMetrics` over ``[now - window, now]``."""
    now = as_utc(now)
    start = now - window
    kept = [s for s in samples if start <= as_utc(s.at) <= now]
    if not kept:
        return RegionMetrics()

    cpu: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[float]] = defaultdict(list)
    qps: dict[str, list[float]] = defaultdict(list)
    rtts: list[float] = []
    for sample in kept:
        if sample.cpu is not None:
            cpu[sample.node_id].append(sample.cpu)
        if sample.error_rate is not None:
            errors[sample.node_id].append(sample.error_rate)
        if sample.qps is not None:
            qps[sample.node_id].append(sample.qps)
        if sample.rtt_ms is not None:
            rtts.append(sample.rtt_ms)

    qps_total = sum(fmean(values) for values in qps.values()) if qps else None
    times = [as_utc(s.at) for s in kept]
    return RegionMetrics(
        cpu=_mean_of_node_means(cpu),
        rtt_p50_ms=percentile(rtts, 0.5) if rtts else None,
        rtt_p90_ms=percentile(rtts, 0.9) if rtts else None,
        error_rate=_mean_of_node_means(errors),
        qps_total=qps_total,
        qps_per_node=qps_total / len(qps) if qps_total is not None else None,
        nodes_reporting=len({s.node_id for s in kept}),
        samples=len(kept),
        oldest_at=min(times),
        newest_at=max(times),
    )
