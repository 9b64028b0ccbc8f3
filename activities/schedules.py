"""Activities of the calendar's Temporal Schedules: reconcile them with the config, and
deliver a window's opening to its owners.

``reconcile_schedules`` (run by the GitOps sync after a revision is applied) lists the
schedules with the ``xplane-`` prefix and makes them match :func:`desired_schedules`:
missing ones are created, removed ones deleted, changed ones (their spec digest, kept in
the schedule's memo, differs) recreated with their paused state and note carried over,
and unchanged ones are not touched. The memo cannot be updated in place (Temporal's
schedule update takes the schedule, not its memo), so a change is delete + create.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
)

from xplane import ids
from xplane.autoscale.calendar import WindowSignal
from xplane.schedules import (
    DIGEST_MEMO,
    PREFIX,
    WINDOW_ACTION,
    DesiredSchedule,
    Owner,
    desired_schedules,
)
from xplane.store import config_store
from xplane.temporal.client import signal_with_start
from xplane.windows import zone

# A window's action that could not run in time (worker down) is still worth running
# while the window is open; after that, entering it would be wrong.
MIN_CATCHUP = timedelta(minutes=1)


class WindowDelivery(BaseModel):
    signal: WindowSignal
    owners: list[Owner]


class ScheduleSync(BaseModel):
    created: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)


def build_schedule(desired: DesiredSchedule, task_queue: str, paused: bool = False) -> Schedule:
    """The Temporal Schedule of one window: its spec, and an action that tells the owners."""
    if desired.cron is not None:
        spec = ScheduleSpec(cron_expressions=[desired.cron], time_zone_name=desired.timezone)
    else:
        assert desired.start is not None
        at = desired.start.astimezone(zone(desired.timezone))
        spec = ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    second=[ScheduleRange(at.second)],
                    minute=[ScheduleRange(at.minute)],
                    hour=[ScheduleRange(at.hour)],
                    day_of_month=[ScheduleRange(at.day)],
                    month=[ScheduleRange(at.month)],
                    year=[ScheduleRange(at.year)],
                    comment="one-off window",
                )
            ],
            time_zone_name=desired.timezone,
        )
    action = desired.action
    span = timedelta(seconds=action.duration_seconds)
    if action.end is not None and desired.start is not None:
        span = action.end - desired.start
    return Schedule(
        action=ScheduleActionStartWorkflow(
            WINDOW_ACTION,
            action,
            id=desired.id,
            task_queue=task_queue,
            execution_timeout=timedelta(minutes=10),
        ),
        spec=spec,
        policy=SchedulePolicy(catchup_window=max(span, MIN_CATCHUP)),
        state=ScheduleState(
            paused=paused, note="managed by xplane's GitOps sync: edit the config repo"
        ),
    )


async def reconcile(
    client: Client, desired: dict[str, DesiredSchedule], task_queue: str
) -> ScheduleSync:
    """Make the ``xplane-`` schedules on ``client``'s namespace match ``desired``."""
    result = ScheduleSync()
    existing: list[str] = []
    async for listed in await client.list_schedules():
        if listed.id.startswith(PREFIX):
            existing.append(listed.id)
    for sid in sorted(existing):
        handle = client.get_schedule_handle(sid)
        want = desired.get(sid)
        if want is None:
            await handle.delete()
            result.deleted.append(sid)
            continue
        described = await handle.describe()
        memo = await described.memo()
        if memo.get(DIGEST_MEMO) == want.digest:
            result.unchanged.append(sid)
            continue
        paused = described.schedule.state.paused  # an operator's pause survives the change
        await handle.delete()
        await _create(client, want, task_queue, paused)
        result.updated.append(sid)
    for sid in sorted(set(desired) - set(existing)):
        # A concurrent attempt made it already: the next sync compares its digest.
        with contextlib.suppress(ScheduleAlreadyRunningError):
            await _create(client, desired[sid], task_queue, False)
        result.created.append(sid)
    return result


async def _create(client: Client, want: DesiredSchedule, task_queue: str, paused: bool) -> None:
    await client.create_schedule(
        want.id, build_schedule(want, task_queue, paused), memo={DIGEST_MEMO: want.digest}
    )


class ScheduleActivities:
    def __init__(
        self, session_factory: sessionmaker[Session], client: Client, task_queue: str
    ) -> None:
        self._sessions = session_factory
        self._client = client
        self._task_queue = task_queue

    @activity.defn(name="reconcile_schedules")
    async def reconcile_schedules(self) -> ScheduleSync:
        """Schedules for the current config's windows (none when no config is stored)."""
        with self._sessions() as session:
            config = config_store.current_config(session)
        desired = (
            desired_schedules(
                config,
                autoscale_type=ids.AUTOSCALE,
                autoscale_id=ids.autoscale_id,
                gtm_type=ids.GTM_LOOP,
                gtm_id=ids.gtm_id,
            )
            if config is not None
            else {}
        )
        result = await reconcile(self._client, desired, self._task_queue)
        changed = result.created + result.updated + result.deleted
        if changed:
            activity.logger.info(
                "schedules: created %s, updated %s, deleted %s",
                result.created,
                result.updated,
                result.deleted,
            )
        return result

    @activity.defn(name="deliver_window")
    async def deliver_window(self, delivery: WindowDelivery) -> int:
        """Signal-with-start each owner: the window is open until it closes."""
        delivered = 0
        for owner in delivery.owners:
            await signal_with_start(
                self._client,
                workflow_type=owner.workflow_type,
                workflow_id=owner.workflow_id,
                start_arg=owner.start_arg,
                signal=WindowSignal.NAME,
                signal_arg=delivery.signal,
                task_queue=self._task_queue,
                search_attributes=ids.search_attributes(service=owner.service, region=owner.region),
            )
            delivered += 1
        return delivered
