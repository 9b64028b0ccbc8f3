"""GitOpsSyncWorkflow (ID ``gitops-sync``): pull the config repo, validate, store, publish.

Each reconcile runs the ``sync_config_repo`` activity (fetch -> parse and
validate the whole tree -> write the revision in one transaction) and then
publishes ``OnGtmPolicyChanged`` / ``OnAutoscaleChanged`` /
``OnRegionConfigChanged`` to the owners by signal-with-start. Events not yet
delivered are kept in the workflow's state (and carried across
continue-as-new), so a publish failure after a successful write loses nothing:
the next reconcile delivers them.

The calendar's Temporal Schedules follow the config (``reconcile_schedules``, behind
``SCHEDULES_PATCH``): after a revision is applied, and once per run for the revision
in force (a new deployment creates the schedules of a config that did not change).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows import policies
from workflows.control_loop import (
    ControlLoopWorkflow,
    LoopActionRequest,
    LoopActionResult,
    LoopCarry,
    LoopSettings,
)
from xplane import ids

with workflow.unsafe.imports_passed_through():
    from activities.gitops import GitOpsActivities, SyncRequest
    from activities.publish import ConfigEvent, ConfigEventPayload, PublishActivities
    from activities.schedules import ScheduleActivities, ScheduleSync
    from xplane.config.diff import ConfigChanges


SCHEDULES_PATCH = "calendar-schedules"


class GitOpsSyncParams(BaseModel):
    source: str  # local path or URL of the config repo
    branch: str = "main"
    settings: LoopSettings = Field(default_factory=lambda: LoopSettings(interval_seconds=30))
    loop: LoopCarry | None = None
    undelivered: list[ConfigEvent] = Field(default_factory=list)
    last_sync: dict[str, Any] = Field(default_factory=dict)
    schedules_sha: str | None = None  # the revision the Temporal Schedules were made for


def events_for_changes(changes: ConfigChanges, sha: str) -> list[ConfigEvent]:
    """The GitOps events (`docs/roadmap.md` phase 0.2) for one applied revision, one per owner."""
    events: list[ConfigEvent] = []
    for service in changes.gtm:
        events.append(
            ConfigEvent(
                event=ids.ON_GTM_POLICY_CHANGED,
                workflow_type=ids.GTM_LOOP,
                workflow_id=ids.gtm_id(service),
                start_arg={"service": service},
                payload=ConfigEventPayload(
                    sha=sha, service=service, removed=service in changes.removed_gtm
                ),
            )
        )
    for target in changes.autoscale:
        events.append(
            ConfigEvent(
                event=ids.ON_AUTOSCALE_CHANGED,
                workflow_type=ids.AUTOSCALE,
                workflow_id=ids.autoscale_id(target.service, target.region),
                start_arg={"service": target.service, "region": target.region},
                payload=ConfigEventPayload(
                    sha=sha,
                    service=target.service,
                    region=target.region,
                    removed=target in changes.removed_autoscale,
                ),
            )
        )
    for region in changes.regions:
        events.append(
            ConfigEvent(
                event=ids.ON_REGION_CONFIG_CHANGED,
                workflow_type=ids.REGION_LIFECYCLE,
                workflow_id=ids.region_id(region),
                start_arg={"region": region},
                payload=ConfigEventPayload(
                    sha=sha, region=region, removed=region in changes.removed_regions
                ),
            )
        )
    return events


@workflow.defn(name=ids.GITOPS_SYNC)
class GitOpsSyncWorkflow(ControlLoopWorkflow):
    def __init__(self) -> None:
        super().__init__()
        self.params: GitOpsSyncParams | None = None

    @workflow.run
    async def run(self, params: GitOpsSyncParams) -> None:
        self.params = params
        await self.run_loop(params.loop, params.settings)

    @workflow.signal
    def sync_now(self) -> None:
        """Pull now (CI's git webhook, operators) instead of waiting for the tick."""
        self.request("sync_now")

    @workflow.update(name="sync")
    async def sync_update(self, request: LoopActionRequest) -> LoopActionResult:
        """Pull now and answer what the sync did (refused while the loop is paused)."""
        return await self.reconcile_now([f"sync by {request.by}: {request.reason}"])

    @sync_update.validator
    def _validate_sync(self, request: LoopActionRequest) -> None:
        self._validate_action("sync", request)

    async def reconcile(self, reasons: list[str]) -> dict[str, Any]:
        assert self.params is not None
        result = await workflow.execute_activity_method(
            GitOpsActivities.sync_config_repo,
            SyncRequest(source=self.params.source, branch=self.params.branch),
            start_to_close_timeout=policies.EXTERNAL_TIMEOUT,
            heartbeat_timeout=policies.HEARTBEAT_TIMEOUT,
            retry_policy=policies.EXTERNAL,
        )
        if result.status == "applied" and result.changes is not None:
            self.params.undelivered.extend(events_for_changes(result.changes, result.sha))
        summary: dict[str, Any] = {
            "status": result.status,
            "sha": result.sha,
            "message": result.message,
            "issues": len(result.issues),
        }
        self.params.last_sync = summary
        if self.params.undelivered:
            delivered = await workflow.execute_activity_method(
                PublishActivities.publish_config_events,
                self.params.undelivered,
                start_to_close_timeout=policies.PUBLISH_TIMEOUT,
                retry_policy=policies.PUBLISH,
            )
            summary["published"] = delivered
            self.params.undelivered = []
        # After the events: a Schedules API that fails must not hold config changes back.
        if (
            result.ok
            and result.sha != self.params.schedules_sha
            and workflow.patched(SCHEDULES_PATCH)
        ):
            try:
                synced: ScheduleSync = await workflow.execute_activity_method(
                    ScheduleActivities.reconcile_schedules,
                    start_to_close_timeout=policies.EXTERNAL_TIMEOUT,
                    retry_policy=policies.EXTERNAL,
                )
            except ActivityError as err:  # tried again on the next tick
                workflow.logger.warning("schedules not reconciled: %s", err.cause or err)
                summary["schedules"] = "failed"
            else:
                self.params.schedules_sha = result.sha
                summary["schedules"] = {k: len(v) for k, v in synced.model_dump().items()}
        return summary

    def continue_as_new_args(self) -> list[Any]:
        assert self.params is not None
        return [self.params.model_copy(update={"loop": self.loop})]

    def status_details(self) -> dict[str, Any]:
        if self.params is None:
            return {}
        return {
            "source": self.params.source,
            "branch": self.params.branch,
            "last_sync": self.params.last_sync,
            "undelivered_events": len(self.params.undelivered),
        }
