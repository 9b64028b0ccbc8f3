"""WindowActionWorkflow: what a window's Temporal Schedule runs when the window opens.

It only tells the owners (the region's autoscale workflow, the service's GTM loop) that
the window is open until it closes, by the ``enter_window`` signal (signal-with-start:
an owner that is not running is started); the owners stay the single writers. Started
by the schedule at the window's opening, by ``temporal schedule trigger`` (the window
opens now, for its duration) or by a backfill.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributeKey

from workflows import policies

with workflow.unsafe.imports_passed_through():
    from activities.schedules import ScheduleActivities, WindowDelivery
    from xplane.autoscale.calendar import WindowSignal
    from xplane.schedules import WINDOW_ACTION, WindowAction


# Set by Temporal on a schedule's runs: the time the action was due. A backfilled (or
# late) run opens the window when it was due, so a window already over is not entered.
SCHEDULED_AT = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


@workflow.defn(name=WINDOW_ACTION)
class WindowActionWorkflow:
    @workflow.run
    async def run(self, action: WindowAction) -> int:
        opens = workflow.info().typed_search_attributes.get(SCHEDULED_AT) or workflow.now()
        closes = action.end or opens + timedelta(seconds=action.duration_seconds)
        signal = WindowSignal(kind=action.kind, name=action.name, opens=opens, closes=closes)
        delivered: int = await workflow.execute_activity_method(
            ScheduleActivities.deliver_window,
            WindowDelivery(signal=signal, owners=action.owners),
            start_to_close_timeout=policies.PUBLISH_TIMEOUT,
            retry_policy=policies.PUBLISH,
        )
        return delivered
