"""Forecast floors from history (pure, read-only): an hour-of-week profile of a region's load.

AWS's predictive scaling in ForecastOnly mode: the last weeks of load say what each hour
of the week usually needs, and :func:`suggest` turns that into a suggested floor for the
next hours, shown next to the configured windows. Nothing here changes capacity.

* **Load** of one clock hour: the region's mean total QPS and total CPU (in node units:
  3 nodes at 50 % = 1.5) over the hour, from the autoscaler's hourly rollup
  (:mod:`xplane.store.load_hours`, kept five weeks) or, for hours it lacks, from the
  heartbeat samples still kept (:func:`sample_hours`: one time slice per minute).
* **Profile**: per hour of the week (Monday 00:00 = 0 .. Sunday 23:00 = 167, in the
  given zone), the p90 of that hour's loads over the weeks seen (a busy Monday is not
  averaged away by a quiet one).
* **Suggested floor**: ``ceil(qps / target_qps_per_node)`` when the policy sets a QPS
  target, else ``ceil(cpu_nodes / target)`` with ``target_cpu`` (or ``scale_up_cpu``),
  within ``[min_nodes, max_nodes]``; an hour never seen suggests nothing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from xplane.autoscale.calendar import Lead, calendar_floor
from xplane.config.models import AutoscaleRegion

HOURS_PER_WEEK = 168


class HourLoad(BaseModel):
    qps: float | None  # total QPS of the region (None: no node reported QPS)
    cpu_nodes: float  # total CPU, in nodes
    hours: int  # clock hours of history behind this hour of the week


class ForecastHour(BaseModel):
    at: datetime  # the hour's start, in the forecast's zone
    suggested: int | None  # None: this hour of the week was never seen
    configured: int  # the configured windows' floor then (0: none)
    qps: float | None = None
    cpu_nodes: float | None = None
    basis: str = ""


def hour_of_week(at: datetime, tz: ZoneInfo) -> int:
    local = at.astimezone(tz)
    return local.weekday() * 24 + local.hour


def _p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


Load = tuple[float | None, float]  # (total QPS or None, total CPU in nodes)


class Sample(Protocol):
    """The fields of a stored heartbeat sample the hourly load reads."""

    @property
    def node_id(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def cpu(self) -> float: ...
    @property
    def qps(self) -> float | None: ...


def sample_hours(samples: Iterable[Sample]) -> dict[datetime, Load]:
    """Clock hour (UTC) -> (total QPS, total CPU in nodes), averaged over its minutes."""
    slices: dict[datetime, dict[str, Sample]] = defaultdict(dict)
    for s in samples:
        minute = s.at.replace(second=0, microsecond=0)
        slices[minute][s.node_id] = s  # a node's last sample in the minute
    per_hour: dict[datetime, list[tuple[float | None, float]]] = defaultdict(list)
    for minute, nodes in slices.items():
        qps = [n.qps for n in nodes.values() if n.qps is not None]
        total_qps = sum(qps) if qps else None
        per_hour[minute.replace(minute=0)].append((total_qps, sum(n.cpu for n in nodes.values())))
    out: dict[datetime, tuple[float | None, float]] = {}
    for hour, values in per_hour.items():
        qps_values = [q for q, _ in values if q is not None]
        out[hour] = (
            sum(qps_values) / len(qps_values) if qps_values else None,
            sum(c for _, c in values) / len(values),
        )
    return out


def profile(hours: Mapping[datetime, Load], tz: ZoneInfo) -> dict[int, HourLoad]:
    """Hour of the week -> the p90 load of that hour over the history (clock hour -> load:
    the store's hourly rollup, :mod:`xplane.store.load_hours`, or :func:`sample_hours`)."""
    by_slot: dict[int, list[Load]] = defaultdict(list)
    for hour, load in hours.items():
        by_slot[hour_of_week(hour, tz)].append(load)
    result: dict[int, HourLoad] = {}
    for slot, loads in by_slot.items():
        qps = [q for q, _ in loads if q is not None]
        result[slot] = HourLoad(
            qps=_p90(qps) if qps else None,
            cpu_nodes=_p90([c for _, c in loads]),
            hours=len(loads),
        )
    return result


def suggested_floor(load: HourLoad, policy: AutoscaleRegion) -> tuple[int, str]:
    if policy.target_qps_per_node and load.qps is not None:
        need = math.ceil(round(load.qps / policy.target_qps_per_node, 9))
        basis = f"p90 qps {load.qps:.0f} / {policy.target_qps_per_node:g} per node"
    else:
        target = policy.target_cpu or policy.scale_up_cpu
        need = math.ceil(round(load.cpu_nodes / target, 9))
        basis = f"p90 cpu {load.cpu_nodes:.2f} nodes / target {target:g}"
    return max(policy.min_nodes, min(policy.max_nodes, need)), basis


def suggest(
    history: dict[int, HourLoad],
    policy: AutoscaleRegion,
    start: datetime,
    hours: int,
    tz: ZoneInfo,
) -> list[ForecastHour]:
    """The next ``hours`` clock hours from ``start``: suggested and configured floors."""
    first = start.astimezone(tz).replace(minute=0, second=0, microsecond=0)
    if first < start.astimezone(tz):
        first += timedelta(hours=1)
    no_lead = Lead(seconds=0, reason="")
    rows: list[ForecastHour] = []
    for i in range(hours):
        at = (first + timedelta(hours=i)).astimezone(tz)
        configured = calendar_floor(policy.schedules, at, no_lead).floor
        load = history.get(hour_of_week(at, tz))
        if load is None:
            rows.append(ForecastHour(at=at, suggested=None, configured=configured))
            continue
        floor, basis = suggested_floor(load, policy)
        rows.append(
            ForecastHour(
                at=at,
                suggested=floor,
                configured=configured,
                qps=load.qps,
                cpu_nodes=load.cpu_nodes,
                basis=f"{basis} ({load.hours} h seen)",
            )
        )
    return rows
