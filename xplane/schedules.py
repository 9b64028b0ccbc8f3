"""The Temporal Schedules a config tree asks for (pure): one per calendar window.

* a capacity window (``autoscale/<service>.yaml``, ``regions.<r>.schedules[]``) is
  ``xplane-window-<service>-<region>-<name>``; its action tells the region's autoscale
  workflow to enter the window;
* a maintenance window (``gtm/<service>.yaml``, ``maintenance[]``) is
  ``xplane-maint-<service>-<name>``; its action tells the service's GTM loop and the
  region's autoscale workflow (which then replaces no drained node and does not scale in).

A schedule only *tells*: its action runs :class:`WindowAction` (a tiny workflow, see
``workflows/window_action.py``) that signals the owners; the owners stay the single
writers. Each desired schedule carries a digest of everything it is made of; the
reconciler (``activities/schedules.py``) stores it in the schedule's memo and leaves a
schedule whose digest is unchanged alone.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from xplane.config.models import ConfigTree
from xplane.windows import fixed_occurrence

PREFIX = "xplane-"
DIGEST_MEMO = "xplane_spec_digest"
WINDOW_ACTION = "WindowActionWorkflow"


def capacity_schedule_id(service: str, region: str, name: str) -> str:
    return f"{PREFIX}window-{service}-{region}-{name}"


def maintenance_schedule_id(service: str, name: str) -> str:
    return f"{PREFIX}maint-{service}-{name}"


class Owner(BaseModel):
    """A workflow the action signals (started first if it is not running)."""

    workflow_type: str
    workflow_id: str
    start_arg: dict[str, Any] = Field(default_factory=dict)
    service: str | None = None
    region: str | None = None


class WindowAction(BaseModel):
    """The action's input: which window opened, for how long, and whom to tell."""

    kind: Literal["capacity", "maintenance"]
    schedule_id: str
    name: str
    duration_seconds: float
    end: datetime | None = None  # a one-off window closes here (not opens + duration)
    owners: list[Owner]


class DesiredSchedule(BaseModel):
    id: str
    cron: str | None = None
    start: datetime | None = None  # a one-off window: fires once, at start
    timezone: str
    action: WindowAction
    digest: str = ""

    def with_digest(self) -> DesiredSchedule:
        body = self.model_dump(mode="json", exclude={"digest"})
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return self.model_copy(update={"digest": hashlib.sha256(text.encode()).hexdigest()[:32]})


def desired_schedules(
    config: ConfigTree, *, autoscale_type: str, autoscale_id: Any, gtm_type: str, gtm_id: Any
) -> dict[str, DesiredSchedule]:
    """Schedule id -> the schedule ``config`` asks for. Owners are named by the caller's
    workflow types and id functions (``xplane.ids``)."""

    def autoscale_owner(service: str, region: str) -> Owner:
        return Owner(
            workflow_type=autoscale_type,
            workflow_id=autoscale_id(service, region),
            start_arg={"service": service, "region": region},
            service=service,
            region=region,
        )

    found: dict[str, DesiredSchedule] = {}
    for service, policy in sorted(config.autoscale.items()):
        for region, entry in sorted(policy.regions.items()):
            for window in entry.schedules:
                sid = capacity_schedule_id(service, region, window.name)
                found[sid] = DesiredSchedule(
                    id=sid,
                    cron=window.cron,
                    timezone=window.timezone,
                    action=WindowAction(
                        kind="capacity",
                        schedule_id=sid,
                        name=window.name,
                        duration_seconds=window.duration.total_seconds(),
                        owners=[autoscale_owner(service, region)],
                    ),
                ).with_digest()
    for service, gtm in sorted(config.gtm.items()):
        for index, m in enumerate(gtm.maintenance):
            name = m.label(index)
            sid = maintenance_schedule_id(service, name)
            owners = [
                Owner(
                    workflow_type=gtm_type,
                    workflow_id=gtm_id(service),
                    start_arg={"service": service},
                    service=service,
                )
            ]
            if service in config.autoscale and m.region in config.autoscale[service].regions:
                owners.append(autoscale_owner(service, m.region))
            end = None
            start = None
            if m.start is not None:
                stop = m.end if m.end is not None else m.start + (m.duration or timedelta(0))
                occ = fixed_occurrence(m.start, stop, m.timezone)
                start, end = occ.opens, occ.closes
            found[sid] = DesiredSchedule(
                id=sid,
                cron=m.cron,
                start=start,
                timezone=m.timezone,
                action=WindowAction(
                    kind="maintenance",
                    schedule_id=sid,
                    name=name,
                    duration_seconds=(m.duration.total_seconds() if m.duration else 0.0),
                    end=end,
                    owners=owners,
                ),
            ).with_digest()
    return found
