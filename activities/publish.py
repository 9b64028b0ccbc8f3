"""Activity: deliver GitOps events to the workflows that own them (signal-with-start)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.client import Client

from xplane import ids
from xplane.temporal.client import signal_with_start

EventName = Literal["OnGtmPolicyChanged", "OnAutoscaleChanged", "OnRegionConfigChanged"]


class ConfigEventPayload(BaseModel):
    """What a config-change signal carries."""

    sha: str
    service: str | None = None
    region: str | None = None
    removed: bool = False  # the policy/region is gone from config (retire / stop)


class ConfigEvent(BaseModel):
    event: EventName
    workflow_type: str
    workflow_id: str
    start_arg: dict[str, Any] = Field(default_factory=dict)  # the target's run input
    payload: ConfigEventPayload


class PublishActivities:
    def __init__(self, client: Client, task_queue: str) -> None:
        self._client = client
        self._task_queue = task_queue

    @activity.defn(name="publish_config_events")
    async def publish_config_events(self, events: list[ConfigEvent]) -> int:
        """Signal-with-start each event's owner; idempotent for the receivers (wakes coalesce)."""
        for event in events:
            await signal_with_start(
                self._client,
                workflow_type=event.workflow_type,
                workflow_id=event.workflow_id,
                start_arg=event.start_arg,
                signal=event.event,
                signal_arg=event.payload,
                task_queue=self._task_queue,
                search_attributes=ids.search_attributes(
                    service=event.payload.service, region=event.payload.region
                ),
            )
        return len(events)
