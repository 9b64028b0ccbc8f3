"""GitOpsSyncWorkflow (ID ``gitops-sync``): pull the config repo, validate, store, publish.

Each reconcile runs the ``sync_config_repo`` activity (fetch -> parse and
validate the whole tree -> write the revision in one transaction) and then
publishes ``OnGtmPolicyChanged`` / ``OnAutoscaleChanged`` /
``OnRegionConfigChanged`` to the owners by signal-with-start. Events not yet
delivered are kept in the workflow's state (and carried across
continue-as-new), so a publish failure after a successful write loses nothing:
the next reconcile delivers them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow

from workflows import ids, policies
from workflows.control_loop import (
    ControlLoopWorkflow,
    LoopActionRequest,
    LoopActionResult,
    LoopCarry,
    LoopSettings,
)

with workflow.unsafe.imports_passed_through():
    from activities.gitops import SyncRequest
    from activities.publish import ConfigEvent, ConfigEventPayload
    from xplane.gitops.sync import SyncResult
    from xplane.store.config_store import ConfigChanges


class GitOpsSyncParams(BaseModel):
    source: str  # local path or URL of the config repo
    branch: str = "main"
    settings: LoopSettings = Field(default_factory=lambda: LoopSettings(interval_seconds=30))
    loop: LoopCarry | None = None
    undelivered: list[ConfigEvent] = Field(default_factory=list)
    last_sync: dict[str, Any] = Field(default_factory=dict)


def events_for_changes(changes: ConfigChanges, sha: str) -> list[ConfigEvent]:
    """The GitOps events (roadmap 0.2) for one applied revision, one per owner."""
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
        result: SyncResult = await workflow.execute_activity(
            "sync_config_repo",
            SyncRequest(source=self.params.source, branch=self.params.branch),
            result_type=SyncResult,
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
            delivered = await workflow.execute_activity(
                "publish_config_events",
                self.params.undelivered,
                result_type=int,
                start_to_close_timeout=policies.PUBLISH_TIMEOUT,
                retry_policy=policies.PUBLISH,
            )
            summary["published"] = delivered
            self.params.undelivered = []
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
