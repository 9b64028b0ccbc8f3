"""AutoscaleWorkflow (ID ``autoscale-<service>-<region>``): decide -> commit -> wait -> cooldown.

Each tick (jittered with ``workflow.random()`` so regions don't commit in
lockstep) aggregates the region's metrics and asks the pure ``desired``
function for a node count. A change is committed to the infra repo; the
workflow then waits, durably, for CI's ``terraform_finished`` signal for that
commit (signals that arrive early are kept, so a fast CI loses nothing), then
for the new nodes to become ready. A failure or timeout is recorded in the
event log, the pool stays where Git says, and the cooldown (from
``last_scaled_at``) stops a new commit before it has passed.

A scale-down first drains the nodes the smaller pool loses (the highest indexes,
which Terraform's ``count`` destroys) and waits for their drain to finish.

Scheduled windows (``schedules:``) raise the floor from ``opens - lead``
(:mod:`xplane.autoscale.calendar`, judged in ``decide_autoscale`` at the workflow's
clock); a Temporal Schedule's action enters a window by the ``enter_window`` signal
(kept until it closes). When a scale-up's nodes are active, the time it took is
recorded (``record_nodes_active``, behind ``LEAD_PATCH``): it is the next lead.

Reacts to ``OnAutoscaleChanged`` (GitOps sync) and ``node_lost`` (node lifecycle);
a node lost while new ones are awaited ends that wait, so it is replaced without
sitting out ``node_ready_timeout``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows import policies
from workflows.control_loop import ControlLoopWorkflow, LoopCarry, LoopSettings
from xplane import ids

with workflow.unsafe.imports_passed_through():
    from activities.autoscale import (
        AutoscaleActivities,
        CommitRequest,
        DecideRequest,
        DecideResult,
        DrainRequestIn,
        PoolCommit,
        TerraformRecord,
    )
    from activities.calendar import CalendarActivities, NodesActive
    from xplane.autoscale.calendar import Entered, WindowSignal
    from xplane.autoscale.desired import ScaleHistory
    from xplane.messages import TerraformOutcome

READY_POLL = timedelta(seconds=5)
DRAIN_BEFORE_COMMIT = "drain-before-commit"  # patch: runs started earlier commit at once
LEAD_PATCH = "calendar-record-lead"  # patch: measure commit -> nodes active for the lead
# patch: a store outage during a wait is waited out, not the end of the wait (which made
# the loop decide again and commit the same replacement twice)
WAIT_OUT_STORE_ERRORS = "autoscale-wait-out-store-errors"
T = TypeVar("T")


class Waiting(BaseModel):
    commit: str | None = None
    desired: int
    since: str
    phase: str  # "drain" | "terraform" | "nodes"


class AutoscaleParams(BaseModel):
    service: str
    region: str
    settings: LoopSettings = Field(
        default_factory=lambda: LoopSettings(interval_seconds=30, jitter_seconds=5)
    )
    loop: LoopCarry | None = None
    history: ScaleHistory = Field(default_factory=ScaleHistory)
    terraform: dict[str, TerraformOutcome] = Field(default_factory=dict)  # commit -> outcome
    lost_nodes: int = 0
    current: int | None = None
    desired: int | None = None
    last_reason: str = ""
    last_outcome: str = ""
    commits: int = 0
    # Windows entered by a Temporal Schedule's action, until they close.
    windows: list[Entered] = Field(default_factory=list)
    maintenance: list[Entered] = Field(default_factory=list)


@workflow.defn(name=ids.AUTOSCALE)
class AutoscaleWorkflow(ControlLoopWorkflow):
    def __init__(self) -> None:
        super().__init__()
        self.params = AutoscaleParams(service="", region="")
        self.waiting: Waiting | None = None
        self._interval = timedelta(seconds=30)
        self.gate: str | None = None

    @workflow.run
    async def run(self, params: AutoscaleParams) -> None:
        self.params = params
        self._interval = timedelta(seconds=params.settings.interval_seconds)
        await self.run_loop(params.loop, params.settings)

    # ------------------------------------------------------------------ signals
    @workflow.signal
    def terraform_finished(self, outcome: TerraformOutcome) -> None:
        """CI finished ``terraform apply`` for a commit (kept even if not waited for yet)."""
        self.params.terraform[outcome.commit] = outcome
        if len(self.params.terraform) > 20:  # bounded: only recent commits matter
            oldest = next(iter(self.params.terraform))
            del self.params.terraform[oldest]

    @workflow.signal
    def node_lost(self, node_id: str) -> None:
        self.params.lost_nodes += 1
        self.request(f"node_lost:{node_id}")

    @workflow.signal(name=WindowSignal.NAME)
    def enter_window(self, window: WindowSignal) -> None:
        """A window's Temporal Schedule fired (or was triggered): it is open until it closes."""
        kept = self.params.maintenance if window.kind == "maintenance" else self.params.windows
        entry = Entered(name=window.name, opens=window.opens, closes=window.closes)
        if entry not in kept:
            kept.append(entry)
        self.request(f"window:{window.name}")

    @workflow.signal(name=ids.ON_AUTOSCALE_CHANGED)
    def on_policy_changed(self, _event: Any = None) -> None:
        self.request("policy_changed")

    def interval(self) -> timedelta:
        return self._interval

    # --------------------------------------------------------------- reconcile
    async def reconcile(self, reasons: list[str]) -> dict[str, Any]:
        now = workflow.now()
        self.params.windows = [w for w in self.params.windows if w.closes > now]
        self.params.maintenance = [w for w in self.params.maintenance if w.closes > now]
        key = DecideRequest(
            service=self.params.service,
            region=self.params.region,
            history=self.params.history,
            lost_nodes=self.params.lost_nodes,
            now=now,
            windows=self.params.windows,
            maintenance=self.params.maintenance,
        )
        result: DecideResult = await workflow.execute_activity_method(
            AutoscaleActivities.decide_autoscale,
            key,
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DB,
        )
        if not result.exists:
            return {"exists": False}
        if result.decision is None:
            self.params.last_reason = "waiting for the region's node pool to be bootstrapped"
            return {"bootstrapped": False}
        self._interval = timedelta(seconds=result.interval_seconds)
        self.settings.jitter_seconds = result.jitter_seconds
        decision = result.decision
        self.gate = result.gate
        self.params.current, self.params.desired = decision.current, decision.desired
        self.params.last_reason = decision.reason
        if decision.desired == decision.current:
            self.params.history = decision.history  # keeps the stabilisation clock (low_since)
            return {"desired": decision.desired, "reason": decision.reason}

        # A replacement carries the lost node's id, so `xplane events` links the incident:
        # node down -> node deleted -> this commit -> terraform -> the new node.
        lost = [r.split(":", 1)[1] for r in reasons if r.startswith("node_lost:")]
        if not lost and decision.desired > decision.current:
            lost = result.lost_nodes  # a replacement for nodes that went down
        incident = (
            lost[0] if lost else f"{workflow.info().workflow_id}@{workflow.now().isoformat()}"
        )
        if decision.desired < decision.current:
            await self._drain(decision.desired, decision.reason, result)
        commit: PoolCommit = await workflow.execute_activity_method(
            AutoscaleActivities.commit_node_pool,
            CommitRequest(
                service=self.params.service,
                region=self.params.region,
                count=decision.desired,
                reason=decision.reason,
                metrics=result.metrics,
                correlation_id=incident,
            ),
            start_to_close_timeout=policies.EXTERNAL_TIMEOUT,
            heartbeat_timeout=policies.HEARTBEAT_TIMEOUT,
            retry_policy=policies.EXTERNAL,
        )
        # The change is in Git: cooldown starts now whatever Terraform does.
        self.params.history = decision.history
        self.params.lost_nodes = 0
        self.params.commits += 1
        if commit.status == "unchanged":
            self.params.last_outcome = f"pool already {decision.desired} in Git"
            return {"desired": decision.desired, "commit": None}
        self.params.last_outcome = await self._wait_for_terraform(commit, result, decision.desired)
        return {
            "desired": decision.desired,
            "commit": commit.sha,
            "outcome": self.params.last_outcome,
        }

    async def _drain(self, keep: int, reason: str, result: DecideResult) -> None:
        """Drain the nodes the smaller pool loses, and let them finish, before the commit.

        Terraform destroys a node as soon as CI applies the commit; drained first, it
        is out of DNS and past its TTL by then. A drain that does not finish within
        ``node_ready_timeout`` does not hold the scale-down back for ever.
        """
        drained: list[str] = await workflow.execute_activity_method(
            AutoscaleActivities.drain_nodes,
            DrainRequestIn(
                service=self.params.service, region=self.params.region, keep=keep, reason=reason
            ),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DB,
        )
        if not drained or not workflow.patched(DRAIN_BEFORE_COMMIT):
            return
        now = workflow.now()
        self.waiting = Waiting(desired=keep, since=now.isoformat(), phase="drain")
        deadline = now + timedelta(seconds=result.node_ready_timeout_seconds)
        try:
            while workflow.now() < deadline:
                left = await self._poll_store(
                    workflow.execute_activity_method(
                        AutoscaleActivities.nodes_not_yet_drained,
                        drained,
                        start_to_close_timeout=policies.DB_TIMEOUT,
                        retry_policy=policies.DB,
                    )
                )
                if left is not None and not left:
                    return
                await workflow.sleep(READY_POLL)
            workflow.logger.warning("drain of %s not finished in time: committing", drained)
        finally:
            self.waiting = None

    async def _wait_for_terraform(
        self, commit: PoolCommit, result: DecideResult, desired: int
    ) -> str:
        now = workflow.now()
        self.waiting = Waiting(
            commit=commit.sha, desired=desired, since=now.isoformat(), phase="terraform"
        )
        try:
            try:
                await workflow.wait_condition(
                    lambda: commit.sha in self.params.terraform,
                    timeout=timedelta(seconds=result.terraform_timeout_seconds),
                )
            except TimeoutError:
                await self._record(commit.sha, "timeout", "no terraform_finished signal in time")
                return "terraform timeout"
            outcome = self.params.terraform.pop(commit.sha)
            terraform_at = workflow.now()
            await self._record(commit.sha, outcome.status, outcome.run_url or "")
            if outcome.status != "succeeded":
                return "terraform failed"
            self.waiting.phase = "nodes"
            deadline = workflow.now() + timedelta(seconds=result.node_ready_timeout_seconds)
            while workflow.now() < deadline:
                counted = await self._poll_store(
                    workflow.execute_activity_method(
                        AutoscaleActivities.count_ready_nodes,
                        DecideRequest(
                            service=self.params.service,
                            region=self.params.region,
                            now=workflow.now(),
                        ),
                        start_to_close_timeout=policies.DB_TIMEOUT,
                        retry_policy=policies.DB,
                    )
                )
                ready = 0 if counted is None else counted
                if counted is not None and ready >= desired:
                    await self._measured(commit, now, terraform_at, desired)
                    return f"{ready} nodes ready"
                # A node lost meanwhile would keep `ready` short until the deadline:
                # stop waiting and decide again (its node_lost request is pending).
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self.params.lost_nodes > 0, timeout=READY_POLL
                    )
                if self.params.lost_nodes:
                    return f"{ready} of {desired} nodes ready when a node was lost"
            return "nodes not ready in time"
        finally:
            self.waiting = None

    async def _poll_store(self, read: Awaitable[T]) -> T | None:
        """One poll of a wait: the read's answer, or None while the store is unreachable.

        The DB retry policy gives up after a few seconds; a longer outage must not end
        the wait (the loop would decide again without it, and commit twice)."""
        if not workflow.patched(WAIT_OUT_STORE_ERRORS):
            return await read
        try:
            return await read
        except ActivityError as err:
            workflow.logger.warning("store unreachable while waiting, polling on: %s", err.cause)
            return None

    async def _measured(
        self, commit: PoolCommit, committed_at: datetime, terraform_at: datetime, desired: int
    ) -> None:
        """A scale-up's nodes are active: keep how long it took (the calendar's lead)."""
        grew = commit.previous_count is None or desired > commit.previous_count
        if not grew or not workflow.patched(LEAD_PATCH):
            return
        await workflow.execute_activity_method(
            CalendarActivities.record_nodes_active,
            NodesActive(
                service=self.params.service,
                region=self.params.region,
                commit=commit.sha,
                count=desired,
                committed_at=committed_at,
                terraform_at=terraform_at,
                active_at=workflow.now(),
            ),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DB,
        )

    async def _record(
        self, commit: str, status: Literal["succeeded", "failed", "timeout"], detail: str
    ) -> None:
        await workflow.execute_activity_method(
            AutoscaleActivities.record_terraform_result,
            TerraformRecord(
                service=self.params.service,
                region=self.params.region,
                commit=commit,
                status=status,
                detail=detail,
            ),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DB,
        )

    def continue_as_new_args(self) -> list[Any]:
        return [self.params.model_copy(update={"loop": self.loop})]

    def status_details(self) -> dict[str, Any]:
        return {
            "service": self.params.service,
            "region": self.params.region,
            "current": self.params.current,
            "desired": self.params.desired,
            "reason": self.params.last_reason,
            "waiting": self.waiting.model_dump() if self.waiting else None,
            "last_outcome": self.params.last_outcome,
            "commits": self.params.commits,
            "last_scaled_at": self.params.history.last_scaled_at,
            "gate": self.gate,  # the self-health gate's verdict for this region, if not normal
        }
