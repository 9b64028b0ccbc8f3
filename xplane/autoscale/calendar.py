"""Scheduled capacity (pure): a region's floor at an instant, and how far ahead to commit it.

A region's ``schedules:`` (:class:`~xplane.config.models.ScheduleWindow`) raise its floor
while a window is open. XPlane scales by committing to Git and waiting for Terraform and
for the nodes, so a window's floor applies from ``opens - lead``:

* **lead** (:func:`lead_for`): the recent p95 of what XPlane measured for the region
  (commit -> Terraform success -> nodes active), never below the policy's ``lead_min``;
* **floor** (:func:`calendar_floor`): the largest ``min_nodes`` of the windows open now
  or opening within the lead (overlapping windows: the larger floor wins);
* **no scale-in inside a window**: while a window is open the region never shrinks,
  whatever the load says (the operator said a peak is coming; low load at 09:01 is
  the peak not having arrived yet);
* **late pre-warm** (:func:`is_late`): a window first seen with less time to its opening
  than the lead, while capacity is short, will open before its nodes are ready.

Windows entered through a Temporal Schedule's action (``temporal schedule trigger``,
backfill) come in as :class:`Entered` and count as open until they close.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from xplane.config.models import ScheduleWindow
from xplane.durations import format_duration
from xplane.windows import Occurrence, cron_occurrences

RECENT_LEADS = 20  # measurements the p95 is taken over (the recent ones)


class Entered(BaseModel):
    """A window an owner was told to enter (a Temporal Schedule's action), until it closes."""

    name: str
    opens: datetime
    closes: datetime


class WindowSignal(BaseModel):
    """What a window's Temporal Schedule tells the owning workflow (signal ``enter_window``)."""

    NAME: ClassVar[str] = "enter_window"

    kind: Literal["capacity", "maintenance"]
    name: str
    opens: datetime
    closes: datetime


class Lead(BaseModel):
    seconds: float
    reason: str


class Prewarm(BaseModel):
    """A window occurrence whose floor applies now (open, or opening within the lead)."""

    name: str
    key: str  # the occurrence's id: <name>@<opens>
    opens: datetime
    closes: datetime
    min_nodes: int
    left_seconds: float  # until it opens (<= 0: open)
    source: str = "config"  # config | schedule


class CalendarFloor(BaseModel):
    """What the calendar asks of a region at one instant (``floor`` 0: nothing)."""

    floor: int = 0
    reason: str = ""
    no_scale_in: bool = False  # a window is open now
    maintenance: str | None = None  # the maintenance window on the region now, if any
    lead_seconds: float = 0.0
    windows: list[Prewarm] = Field(default_factory=list)


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def lead_for(measured_seconds: Sequence[float], lead_min: timedelta) -> Lead:
    """The pre-warm lead: p95 of the recent measurements, at least ``lead_min``."""
    recent = list(measured_seconds)[-RECENT_LEADS:]
    floor = lead_min.total_seconds()
    measured = p95(recent)
    if not recent:
        return Lead(seconds=floor, reason=f"lead_min {format_duration(lead_min)} (no measurement)")
    text = f"p95 {_human(measured)} of {len(recent)} commit->active"
    if measured > floor:
        return Lead(seconds=measured, reason=text)
    return Lead(seconds=floor, reason=f"lead_min {format_duration(lead_min)} ({text})")


def _human(seconds: float) -> str:
    return format_duration(timedelta(seconds=round(max(0.0, seconds))))


def occurrences(
    windows: Iterable[ScheduleWindow], frm: datetime, to: datetime
) -> list[tuple[ScheduleWindow, Occurrence]]:
    """Each window's occurrences open at some instant of ``[frm, to]``."""
    return [
        (w, occ)
        for w in windows
        for occ in cron_occurrences(w.cron, w.timezone, w.duration, frm, to)
    ]


def calendar_floor(
    windows: Sequence[ScheduleWindow],
    now: datetime,
    lead: Lead,
    entered: Iterable[Entered] = (),
) -> CalendarFloor:
    """The floor the calendar sets at ``now`` (see the module docstring)."""
    ahead = now + timedelta(seconds=lead.seconds)
    found: list[Prewarm] = []
    for window, occ in occurrences(windows, now, ahead):
        found.append(_prewarm(window.name, occ, window.min_nodes, now, "config"))
    by_name = {w.name: w for w in windows}
    for entry in entered:
        known = by_name.get(entry.name)  # a window gone from config is not entered
        occ = Occurrence(entry.opens, entry.closes)
        if known is not None and occ.covers(now):
            found.append(_prewarm(known.name, occ, known.min_nodes, now, "schedule"))
    if not found:
        return CalendarFloor(lead_seconds=lead.seconds)
    best = max(found, key=lambda p: (p.min_nodes, -p.left_seconds))
    open_now = [p for p in found if p.left_seconds <= 0]
    if best.left_seconds <= 0:
        until = best.closes.astimezone(best.opens.tzinfo).strftime("%Y-%m-%d %H:%M %Z")
        why = f"window {best.name!r} open until {until}: floor {best.min_nodes}"
    else:
        why = (
            f"pre-warm for window {best.name!r} opening in {_human(best.left_seconds)}: "
            f"floor {best.min_nodes} (lead {_human(lead.seconds)}: {lead.reason})"
        )
    others = sorted({p.name for p in found} - {best.name})
    if others:
        why += f"; also {', '.join(repr(n) for n in others)}"
    return CalendarFloor(
        floor=best.min_nodes,
        reason=why,
        no_scale_in=bool(open_now),
        lead_seconds=lead.seconds,
        windows=sorted(found, key=lambda p: (p.opens, p.name)),
    )


def _prewarm(name: str, occ: Occurrence, min_nodes: int, now: datetime, source: str) -> Prewarm:
    return Prewarm(
        name=name,
        key=f"{name}@{occ.key}",
        opens=occ.opens,
        closes=occ.closes,
        min_nodes=min_nodes,
        left_seconds=(occ.opens - now).total_seconds(),
        source=source,
    )


def is_late(prewarm: Prewarm, lead_seconds: float, current: int, slack: timedelta) -> bool:
    """Whether a window first seen now will open before its capacity is ready.

    ``slack``: one loop tick (a window is first seen up to a tick after ``opens - lead``).
    A region already at the window's floor needs no pre-warm and is never late.
    """
    if current >= prewarm.min_nodes:
        return False
    return prewarm.left_seconds < lead_seconds - slack.total_seconds()
