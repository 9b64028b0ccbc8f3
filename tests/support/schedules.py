"""A stand-in for the Schedules reconciler on the time-skipping server, which has no
Schedules API (tests/test_schedules.py runs the real one on the dev server)."""

from __future__ import annotations

from temporalio import activity

from activities.schedules import ScheduleSync


@activity.defn(name="reconcile_schedules")
async def no_schedules() -> ScheduleSync:
    return ScheduleSync()
