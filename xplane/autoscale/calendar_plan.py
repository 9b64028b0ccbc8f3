"""The calendar what-if (pure): every region's floor, lead and desired count at an instant.

``xplane autoscale plan --at 2026-12-07T09:00+09:00`` asks what the autoscaler would
decide at that moment given a WORLD.json: the scheduled floor (windows open then, or
opening within the lead), the lead itself, maintenance on the region, and the
resulting decision with its reason. A WORLD.json carries no measured leads, so the
lead is ``lead_min`` unless the caller passes measurements (``leads``: region ->
seconds of recent scale-ups).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import BaseModel, Field

from xplane.autoscale.calendar import Prewarm, calendar_floor, lead_for
from xplane.autoscale.metrics import as_utc
from xplane.autoscale.what_if import decide_region
from xplane.config.models import ConfigTree
from xplane.domain import WorldSnapshot
from xplane.gtm.maintenance import maintenance_factors


class CalendarRegionPlan(BaseModel):
    current: int
    desired: int
    reason: str
    floor: int  # the scheduled floor then (0: no window)
    min_nodes: int  # the policy's own floor
    lead_seconds: float
    lead: str  # where the lead comes from
    windows: list[Prewarm] = Field(default_factory=list)
    maintenance: str | None = None
    no_scale_in: bool = False


class CalendarPlan(BaseModel):
    at: datetime
    services: dict[str, dict[str, CalendarRegionPlan]]


def calendar_plan(
    config: ConfigTree,
    world: WorldSnapshot,
    at: datetime,
    leads: Mapping[str, Sequence[float]] | None = None,
) -> CalendarPlan:
    """Every autoscale region's calendar and decision at ``at`` (sorted by service, region)."""
    at = as_utc(at)
    services: dict[str, dict[str, CalendarRegionPlan]] = {}
    for service in sorted(config.autoscale):
        policy = config.autoscale[service]
        gtm = config.gtm.get(service)
        factors = maintenance_factors(gtm, at) if gtm else {}
        regions = services.setdefault(service, {})
        for region in sorted(policy.regions):
            entry = policy.regions[region]
            lead = lead_for((leads or {}).get(region, []), policy.lead_min)
            floor = calendar_floor(entry.schedules, at, lead)
            factor = factors.get(region)
            if factor is not None:
                why = f"maintenance {factor.name!r} until {factor.closes.isoformat()}"
                floor = floor.model_copy(
                    update={
                        "no_scale_in": True,
                        "maintenance": factor.name,
                        "reason": f"{floor.reason}; {why}" if floor.reason else why,
                    }
                )
            decision = decide_region(config, service, region, world, at, calendar=floor)
            regions[region] = CalendarRegionPlan(
                current=decision.current,
                desired=decision.desired,
                reason=decision.reason,
                floor=floor.floor,
                min_nodes=entry.min_nodes,
                lead_seconds=lead.seconds,
                lead=lead.reason,
                windows=floor.windows,
                maintenance=floor.maintenance,
                no_scale_in=floor.no_scale_in,
            )
    return CalendarPlan(at=at, services=services)
