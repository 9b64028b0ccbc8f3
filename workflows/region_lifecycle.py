"""RegionLifecycleWorkflow (ID ``region-<region>``): bootstrap -> serving -> retire.

Bootstrap (`docs/roadmap.md` phase 4.3): render and commit ``infra/node-pool/<region>/`` with
``node_count = min_nodes``, wait for CI's ``terraform_finished``, wait for the
first node to register and become active, then wake GTM, whose slow start
brings the region in gently. A region never enters GTM unhealthy: its weight
is 0 until a node is ready. A failed bootstrap (Terraform failed, no node
came) is reported and retried on the next config change, a ``retry`` signal or the
``retry`` Workflow Update (refused unless the bootstrap failed; answers what it restarted).

Retire (region removed from config, or ``retired: true``): GTM drops its weight
to 0 (the weight function does it from config), wait the record TTL, drain its
nodes, scale the pool to 0 via Git, wait for Terraform, remove the directory.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio import workflow

from workflows import policies
from workflows.gtm_loop import GtmLoopWorkflow
from xplane import ids

with workflow.unsafe.imports_passed_through():
    from activities.regions import (
        RegionActivities,
        RegionCommit,
        RegionCommitRequest,
        RegionEvent,
        RegionNodes,
        RegionView,
    )
    from xplane.messages import TerraformOutcome

Phase = Literal[
    "pending",
    "committing",
    "waiting_terraform",
    "waiting_node",
    "serving",
    "failed",
    "retiring",
    "retired",
]


class RegionTimings(BaseModel):
    terraform_timeout_seconds: float = 900
    first_node_timeout_seconds: float = 600
    poll_seconds: float = 5
    drain_seconds: float = 30  # after the TTL, for connections to finish


class RegionParams(BaseModel):
    region: str
    timings: RegionTimings = Field(default_factory=RegionTimings)


class RegionRetryRequest(BaseModel):
    """An operator's ``retry`` update; ``service``, when given, must be the region's."""

    reason: str
    by: str = "operator"
    service: str | None = None


class RegionActionResult(BaseModel):
    region: str
    service: str | None
    action: Literal["retry", "retire"]
    from_phase: str
    message: str


def retry_refusal(
    region: str, phase: str, service: str | None, asked_service: str | None
) -> str | None:
    """Why a ``retry`` of a region in ``phase`` is refused (None: it is not)."""
    if asked_service is not None and service is not None and asked_service != service:
        return f"region {region} serves {service}, not {asked_service}"
    if phase != "failed":
        return f"region {region} has not failed (phase {phase}): nothing to retry"
    return None


def retire_refusal(
    region: str, phase: str, requested: bool, service: str | None, asked_service: str | None
) -> str | None:
    """Why a ``retire`` of a region in ``phase`` is refused (None: it is not)."""
    if asked_service is not None and service is not None and asked_service != service:
        return f"region {region} serves {service}, not {asked_service}"
    if phase in ("retiring", "retired"):
        return f"region {region} is already {phase}"
    if requested:
        return f"region {region} is already asked to retire"
    return None


class RegionStatus(BaseModel):
    region: str
    phase: Phase
    service: str | None
    reason: str
    steps: list[str]


@workflow.defn(name=ids.REGION_LIFECYCLE)
class RegionLifecycleWorkflow:
    def __init__(self) -> None:
        self.phase: Phase = "pending"
        self.reason = "started"
        self.service: str | None = None
        self.steps: list[str] = []
        self.terraform: dict[str, TerraformOutcome] = {}
        self.config_changes = 0
        self.retry_requested = False
        self.retire_requested = False
        self.params = RegionParams(region="")

    # ------------------------------------------------------------------ signals
    @workflow.signal(name=ids.ON_REGION_CONFIG_CHANGED)
    def on_config_changed(self, _event: Any = None) -> None:
        self.config_changes += 1

    @workflow.signal
    def retry(self) -> None:
        self.retry_requested = True

    @workflow.update(name="retry")
    async def retry_update(self, request: RegionRetryRequest) -> RegionActionResult:
        region = workflow.info().workflow_id.removeprefix("region-")
        self.retry_requested = True
        return RegionActionResult(
            region=region,
            service=self.service,
            action="retry",
            from_phase=self.phase,
            message=f"region {region}: bootstrap starts again ({self.reason})",
        )

    @retry_update.validator
    def _validate_retry(self, request: RegionRetryRequest) -> None:
        if not request.reason.strip():
            raise ValueError("a reason is required")
        region = workflow.info().workflow_id.removeprefix("region-")
        refusal = retry_refusal(region, self.phase, self.service, request.service)
        if refusal is not None:
            raise ValueError(refusal)

    @workflow.update(name="retire")
    async def retire_update(self, request: RegionRetryRequest) -> RegionActionResult:
        """Retire now, answered: GTM 0, drain, pool to 0 via Git, remove (admins)."""
        region = workflow.info().workflow_id.removeprefix("region-")
        self.retire_requested = True
        return RegionActionResult(
            region=region,
            service=self.service,
            action="retire",
            from_phase=self.phase,
            message=f"region {region}: retiring (by {request.by}: {request.reason})",
        )

    @retire_update.validator
    def _validate_retire(self, request: RegionRetryRequest) -> None:
        if not request.reason.strip():
            raise ValueError("a reason is required")
        region = workflow.info().workflow_id.removeprefix("region-")
        refusal = retire_refusal(
            region, self.phase, self.retire_requested, self.service, request.service
        )
        if refusal is not None:
            raise ValueError(refusal)

    @workflow.signal
    def retire(self, reason: str = "operator") -> None:
        """Retire now, as if config said ``retired: true`` (older senders; operators use the
        ``retire`` update through ``xplane regions retire``)."""
        self.retire_requested = True

    @workflow.signal
    def terraform_finished(self, outcome: TerraformOutcome) -> None:
        self.terraform[outcome.commit] = outcome

    @workflow.query
    def status(self) -> RegionStatus:
        return RegionStatus(
            region=workflow.info().workflow_id.removeprefix("region-"),
            phase=self.phase,
            service=self.service,
            reason=self.reason,
            steps=self.steps[-30:],
        )

    # --------------------------------------------------------------------- run
    @workflow.run
    async def run(self, params: RegionParams) -> RegionStatus:
        self.params = params
        while True:
            self.config_changes = 0
            self.retry_requested = False
            view: RegionView = await self._act(RegionActivities.describe_region, params.region)
            self.service = view.service or self.service
            if not view.exists or view.retired or self.retire_requested:
                if self.phase in ("pending",) and not view.exists:
                    self._step("pending", "region not in config: nothing to do")
                    return self.status()
                await self._retire(view)
                return self.status()
            if self.phase in ("pending", "failed"):
                await self._bootstrap(view)
            # Serving (or failed): sleep until config changes or an operator says retry.
            await workflow.wait_condition(
                lambda: self.config_changes > 0 or self.retry_requested or self.retire_requested
            )
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(params)

    async def _bootstrap(self, view: RegionView) -> None:
        if view.service is None:
            self._step("failed", "no service uses this region in gtm/ or autoscale/")
            return
        self._step("committing", f"render and commit node pool with {view.min_nodes} node(s)")
        commit: RegionCommit = await self._act(
            RegionActivities.commit_region_pool,
            RegionCommitRequest(
                region=view.region,
                service=view.service,
                action="bootstrap",
                node_count=view.min_nodes,
            ),
            external=True,
        )
        if commit.status == "committed":
            if not await self._wait_terraform(commit.sha):
                return
        else:
            self._step("waiting_node", "node pool already in Git: waiting for its nodes")
        if view.min_nodes == 0:
            self._step("serving", "min_nodes is 0: region ready, no node expected")
            return
        self._step("waiting_node", "waiting for the first node to register and become active")
        deadline = workflow.now() + timedelta(
            seconds=self.params.timings.first_node_timeout_seconds
        )
        while workflow.now() < deadline:
            nodes: RegionNodes = await self._act(RegionActivities.region_nodes, view.region)
            if nodes.active > 0:
                self._step(
                    "serving", f"{nodes.active} active node(s): entering GTM with slow start"
                )
                await self._wake_gtm(view.service)
                return
            await workflow.sleep(timedelta(seconds=self.params.timings.poll_seconds))
        self._step("failed", "no node became active in time; retry on config change or `retry`")
        await self._event(view, "region.bootstrap.failed", self.reason)

    async def _wait_terraform(self, sha: str) -> bool:
        self._step("waiting_terraform", f"waiting for terraform_finished({sha[:8]})")
        try:
            await workflow.wait_condition(
                lambda: sha in self.terraform,
                timeout=timedelta(seconds=self.params.timings.terraform_timeout_seconds),
            )
        except TimeoutError:
            self._step("failed", f"terraform did not report on {sha[:8]} in time")
            return False
        outcome = self.terraform.pop(sha)
        if outcome.status != "succeeded":
            self._step("failed", f"terraform failed for {sha[:8]}: {outcome.run_url or ''}")
            return False
        return True

    async def _retire(self, view: RegionView) -> None:
        service = self.service or view.service
        self._step("retiring", "GTM weight to 0 (region left config); waiting the record TTL")
        if service:
            await self._wake_gtm(service)
        await workflow.sleep(timedelta(seconds=view.ttl_seconds))
        drained: list[str] = await self._act(RegionActivities.drain_region_nodes, view.region)
        self._step("retiring", f"draining {len(drained)} node(s)")
        await workflow.sleep(timedelta(seconds=self.params.timings.drain_seconds))
        if service:
            commit: RegionCommit = await self._act(
                RegionActivities.commit_region_pool,
                RegionCommitRequest(region=view.region, service=service, action="scale_to_zero"),
                external=True,
            )
            if commit.status == "committed" and not await self._wait_terraform(commit.sha):
                self._step("retiring", "terraform did not confirm scale to 0; removing anyway")
            await self._act(
                RegionActivities.commit_region_pool,
                RegionCommitRequest(region=view.region, service=service, action="remove"),
                external=True,
            )
        self._step("retired", "node pool removed from Git")
        await self._event(view, "region.retired", self.reason)

    # ----------------------------------------------------------------- helpers
    def _step(self, phase: Phase, reason: str) -> None:
        self.phase, self.reason = phase, reason
        self.steps.append(f"{workflow.now().isoformat()} {phase}: {reason}")
        workflow.upsert_search_attributes([ids.SA_STATE.value_set(phase)])

    async def _act(
        self, activity: Callable[[RegionActivities, Any], Any], arg: Any, external: bool = False
    ) -> Any:
        return await workflow.execute_activity_method(
            activity,
            arg,
            start_to_close_timeout=policies.EXTERNAL_TIMEOUT if external else policies.DB_TIMEOUT,
            heartbeat_timeout=policies.HEARTBEAT_TIMEOUT if external else None,  # git: heartbeats
            retry_policy=policies.EXTERNAL if external else policies.DB,
        )

    async def _event(self, view: RegionView, kind: str, message: str) -> None:
        await self._act(
            RegionActivities.record_region_event,
            RegionEvent(region=view.region, service=self.service, kind=kind, message=message),
        )

    async def _wake_gtm(self, service: str) -> None:
        try:
            await workflow.get_external_workflow_handle_for(
                GtmLoopWorkflow.run, ids.gtm_id(service)
            ).signal(GtmLoopWorkflow.world_changed, f"region {self.params.region} {self.phase}")
        except Exception as err:  # the GTM loop may not run yet: its tick catches up
            workflow.logger.info("gtm-%s not signalled: %s", service, err)
