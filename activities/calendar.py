"""The calendar's store side: measured pre-warm leads, window events, a region's calendar.

Thin over the pure rules (:mod:`xplane.autoscale.calendar`, :mod:`xplane.gtm.maintenance`):

* when a scale-up's nodes become active, the autoscale workflow records how long it
  took (commit -> Terraform success -> nodes active) as an ``autoscale.nodes_active``
  event; the recent p95 of those, per region, is the pre-warm lead;
* :func:`region_calendar` (called by ``decide_autoscale``) reads the leads, computes
  the floor and records, once per window occurrence, ``autoscale.window_prewarm`` or
  ``autoscale.window_late`` (the pre-warm cannot finish before the window opens).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity

from xplane import ids
from xplane.autoscale.calendar import CalendarFloor, Entered, calendar_floor, is_late, lead_for
from xplane.config.models import AutoscalePolicy, ConfigTree
from xplane.durations import format_duration
from xplane.gtm.maintenance import MaintenanceFactor, maintenance_factors
from xplane.store.db import transaction
from xplane.store.events import list_events, record_event

log = logging.getLogger(__name__)

NODES_ACTIVE = "autoscale.nodes_active"
WINDOW_PREWARM = "autoscale.window_prewarm"
WINDOW_LATE = "autoscale.window_late"


class NodesActive(BaseModel):
    """One measured scale-up of a region: the lead a window needs."""

    service: str
    region: str
    commit: str
    count: int
    committed_at: datetime
    terraform_at: datetime
    active_at: datetime


class RegionCalendar(BaseModel):
    calendar: CalendarFloor
    maintenance: MaintenanceFactor | None = None


def measured_leads(session: Session, service: str, region: str) -> list[float]:
    """Seconds commit -> nodes active of the region's recent scale-ups, oldest first."""
    rows = list_events(session, service=service, region=region, kind_prefix=NODES_ACTIVE, limit=20)
    rows = sorted(rows, key=lambda e: e.at)
    values = [e.data.get("seconds") for e in rows]
    return [float(v) for v in values if isinstance(v, int | float)]


def region_calendar(
    session: Session,
    config: ConfigTree,
    policy: AutoscalePolicy,
    service: str,
    region: str,
    now: datetime,
    current: int,
    *,
    windows: list[Entered] | None = None,
    maintenance: list[Entered] | None = None,
) -> RegionCalendar:
    """The floor the calendar sets for ``region`` now, and its maintenance (if any).

    Records the pre-warm of each window occurrence once (its event is the memory:
    a retried or repeated tick finds it and records nothing).
    """
    region_policy = policy.regions[region]
    lead = lead_for(measured_leads(session, service, region), policy.lead_min)
    floor = calendar_floor(region_policy.schedules, now, lead, windows or [])
    gtm = config.gtm.get(service)
    factor = maintenance_factors(gtm, now, maintenance or []).get(region) if gtm else None
    if factor is not None:
        # The region's traffic is held down on purpose: its low load and the nodes drained
        # for the work are no reason to scale in or to replace.
        why = f"maintenance {factor.name!r} until {factor.closes.isoformat()}"
        reason = f"{floor.reason}; {why}" if floor.reason else why
        floor = floor.model_copy(
            update={"no_scale_in": True, "reason": reason, "maintenance": factor.name}
        )
    if floor.windows:
        _record_prewarms(session, floor, policy, service, region, now, current)
    return RegionCalendar(calendar=floor, maintenance=factor)


def _record_prewarms(
    session: Session,
    floor: CalendarFloor,
    policy: AutoscalePolicy,
    service: str,
    region: str,
    now: datetime,
    current: int,
) -> None:
    seen = {
        e.data.get("key")
        for e in list_events(
            session, service=service, region=region, kind_prefix="autoscale.window_", limit=100
        )
    }
    source = ids.autoscale_id(service, region)
    for window in floor.windows:
        if window.key in seen:
            continue
        late = is_late(window, floor.lead_seconds, current, policy.interval + policy.jitter)
        left = format_duration(timedelta(seconds=round(max(0.0, window.left_seconds))))
        lead = format_duration(timedelta(seconds=round(floor.lead_seconds)))
        opens = window.opens.isoformat()
        if late:
            message = (
                f"{region}: window {window.name!r} opens at {opens}, {left} from now, but the "
                f"pre-warm lead is {lead}: {window.min_nodes} nodes (from {current}) may not "
                "be ready when it opens"
            )
            log.warning("%s", message)
        else:
            message = (
                f"{region}: pre-warm for window {window.name!r} (opens {opens}, in {left}; "
                f"lead {lead}): floor {window.min_nodes}"
            )
        record_event(
            session,
            WINDOW_LATE if late else WINDOW_PREWARM,
            message,
            source=source,
            service=service,
            region=region,
            correlation_id=window.key,
            data={
                "key": window.key,
                "window": window.name,
                "opens": opens,
                "left_seconds": window.left_seconds,
                "lead_seconds": floor.lead_seconds,
                "min_nodes": window.min_nodes,
                "current": current,
            },
            at=now,
        )


class CalendarActivities:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    @activity.defn(name="record_nodes_active")
    def record_nodes_active(self, measured: NodesActive) -> None:
        """Keep one scale-up's commit -> Terraform -> nodes active durations (the lead)."""
        total = (measured.active_at - measured.committed_at).total_seconds()
        to_terraform = (measured.terraform_at - measured.committed_at).total_seconds()
        with transaction(self._sessions) as session:
            done = list_events(
                session,
                service=measured.service,
                region=measured.region,
                kind_prefix=NODES_ACTIVE,
                limit=20,
            )
            if any(e.data.get("commit") == measured.commit for e in done):
                return  # a retried attempt records once
            record_event(
                session,
                NODES_ACTIVE,
                f"{measured.region}: {measured.count} nodes active {round(total)}s after commit "
                f"{measured.commit[:8]} (terraform {round(to_terraform)}s)",
                source=ids.autoscale_id(measured.service, measured.region),
                service=measured.service,
                region=measured.region,
                data={
                    "commit": measured.commit,
                    "seconds": total,
                    "commit_to_terraform_seconds": to_terraform,
                    "terraform_to_active_seconds": total - to_terraform,
                },
                at=measured.active_at,
            )
