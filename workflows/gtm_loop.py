"""GtmLoopWorkflow (ID ``gtm-<service>``): region weights -> DNS, forever.

Wakes on its tick, on ``world_changed`` (world-state loop, node lifecycles) and
on ``OnGtmPolicyChanged`` / ``policy_changed`` (GitOps sync). Each reconcile:

1. in one activity (so an idle tick adds few history events): runs the policy's
   active health check against every node (flips reach the store only after N
   consecutive results), then observes the store and computes target weights;
2. damps them here (RTT smoothed over a minute; drops at once, rises ramped over
   ``slow_start`` in steps; a region that joins a running loop starts from 0);
3. applies to each DNS provider only when its desired record set changed past the
   deadband (an address came or went, or a share moved by ``min_share_change``).

Steps 2's smoothing and stepping and 3's deadband change which activities a tick
schedules, so they run behind ``workflow.patched(QUIET_DNS_PATCH)``: histories
recorded before them replay with the old behaviour. So does the last-good rule
(:mod:`xplane.gtm.last_good`, ``LAST_GOOD_PATCH``): while no node of the service is up,
DNS keeps the last answer written while one was (never empty), and the first answer
with an up node after that is written past the providers' safety threshold.

The ramp state, health-check trackers and last applied digests live in the
workflow and are carried across continue-as-new, so an idle tick costs a timer,
one activity and no DNS write (11 history events).

A plan the provider's safety threshold refuses (too many addresses removed at once)
is held (``HELD_PLAN_PATCH``; before it the reconcile failed, every tick): the loop
keeps it, does not try the same record set again, and answers the ``approve_plan``
Workflow Update by applying exactly that plan once, past the threshold, or
``reject_plan`` by leaving DNS as it is until the loop wants another record set.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows import ids, policies
from workflows.control_loop import ControlLoopWorkflow, LoopCarry, LoopSettings

with workflow.unsafe.imports_passed_through():
    from activities.gtm import (
        ApplyDnsRequest,
        GtmTargets,
        ObserveRequest,
        desired_for_provider,
        digest,
        summarize,
    )
    from xplane.config.models import DnsProviderConfig
    from xplane.dns.base import ApplyResult, DesiredService
    from xplane.gtm.deadband import Published, needs_write, published
    from xplane.gtm.health_checks import CheckState
    from xplane.gtm.last_good import dns_action
    from xplane.gtm.ramp import RAMP_STEPS, RampState, ramp_service
    from xplane.gtm.smoothing import RttAverage, smooth_latency

QUIET_DNS_PATCH = "gtm-quiet-dns-writes"
LAST_GOOD_PATCH = "gtm-last-good-dns"
HELD_PLAN_PATCH = "gtm-hold-refused-dns-plan"


class ProviderApply(BaseModel):
    at: str
    digest: str
    summary: str
    write_calls: int
    # What was written, for the deadband (empty in carries from before it: write).
    published: Published = Field(default_factory=Published)


class HeldPlan(BaseModel):
    """A record set the provider's safety threshold refused, kept for an admin's decision."""

    provider_key: str
    provider: DnsProviderConfig
    desired: DesiredService
    digest: str
    refused: str  # the threshold's message
    at: str
    expected_removals: list[str] = Field(default_factory=list)


class PlanDecision(BaseModel):
    """``approve_plan`` / ``reject_plan``: the provider key may be left out when one plan
    is held; ``digest`` (from ``status``) guards against deciding a plan not seen."""

    reason: str
    by: str = "admin"
    provider: str | None = None
    digest: str | None = None


class PlanDecisionResult(BaseModel):
    service: str
    action: Literal["approve", "reject"]
    provider: str
    digest: str
    message: str
    write_calls: int = 0
    changes: int = 0


def held_plan_refusal(
    service: str, held: dict[str, HeldPlan], provider: str | None, digest: str | None
) -> str | None:
    """Why a decision on a held plan is refused (None: ``provider`` or the only one is held)."""
    if not held:
        return f"no DNS plan is held for gtm-{service}"
    if provider is None and len(held) > 1:
        return f"{len(held)} DNS plans are held ({', '.join(sorted(held))}): name the provider"
    key = provider if provider is not None else next(iter(held))
    plan = held.get(key)
    if plan is None:
        return f"no DNS plan is held for provider {key} (held: {', '.join(sorted(held))})"
    if digest is not None and digest != plan.digest:
        return f"the plan held for {key} is now {plan.digest}, not {digest}"
    return None


class GtmLoopParams(BaseModel):
    service: str
    settings: LoopSettings = Field(default_factory=lambda: LoopSettings(interval_seconds=10))
    loop: LoopCarry | None = None
    ramp: dict[str, RampState] = Field(default_factory=dict)
    rtt: dict[str, RttAverage] = Field(default_factory=dict)  # region -> smoothed RTT
    health: dict[str, CheckState] = Field(default_factory=dict)
    applied: dict[str, ProviderApply] = Field(default_factory=dict)  # provider key -> last
    weights: dict[str, float] = Field(default_factory=dict)
    fail_open: bool = False
    reason: str = ""
    removed: bool = False
    # Providers whose DNS kept its last good answer on the last tick (xplane.gtm.last_good).
    held: list[str] = Field(default_factory=list)
    # Plans the safety threshold refused, waiting for approve_plan / reject_plan.
    held_plans: dict[str, HeldPlan] = Field(default_factory=dict)
    rejected: dict[str, str] = Field(default_factory=dict)  # provider key -> rejected digest


@workflow.defn(name=ids.GTM_LOOP)
class GtmLoopWorkflow(ControlLoopWorkflow):
    def __init__(self) -> None:
        super().__init__()
        self.p = GtmLoopParams(service="")
        self._interval = timedelta(seconds=10)
        self.gate: dict[str, str] = {}

    @workflow.run
    async def run(self, params: GtmLoopParams) -> None:
        self.p = params
        self._interval = timedelta(seconds=params.settings.interval_seconds)
        await self.run_loop(params.loop, params.settings)

    @workflow.signal
    def world_changed(self, reason: str = "world changed") -> None:
        self.request("world_changed")

    @workflow.signal(name=ids.ON_GTM_POLICY_CHANGED)
    def on_policy_changed(self, _event: Any = None) -> None:
        self.request("policy_changed")

    @workflow.signal
    def policy_changed(self, _event: Any = None) -> None:
        self.request("policy_changed")

    def interval(self) -> timedelta:
        return self._interval

    # ------------------------------------------------------------------ updates
    @workflow.update
    async def approve_plan(self, decision: PlanDecision) -> PlanDecisionResult:
        key, seen = self._decided(decision)
        async with self._reconcile_lock:  # never beside a reconcile's own DNS write
            plan = self.p.held_plans.get(key)
            if plan is None or plan.digest != seen:
                raise ApplicationError(
                    f"the plan held for {key} changed before it could be applied "
                    f"(now: {plan.digest if plan else 'none'}); decide again",
                    type="ActionRefused",
                    non_retryable=True,
                )
            result: ApplyResult = await workflow.execute_activity(
                "apply_dns",
                ApplyDnsRequest(
                    service=self.p.service,
                    provider_key=key,
                    provider=plan.provider,
                    desired=plan.desired,
                    reason=f"held plan approved by {decision.by}: {decision.reason}",
                    force=True,
                    expected_removals=plan.expected_removals,
                ),
                result_type=ApplyResult,
                start_to_close_timeout=policies.EXTERNAL_TIMEOUT,
                heartbeat_timeout=policies.HEARTBEAT_TIMEOUT,
                retry_policy=policies.EXTERNAL,
            )
            self.p.applied[key] = ProviderApply(
                at=workflow.now().isoformat(),
                digest=plan.digest,
                summary=f"{len(result.changes)} change(s), approved",
                write_calls=result.write_calls,
                published=published(plan.desired),
            )
            del self.p.held_plans[key]
            self.p.rejected.pop(key, None)
        return PlanDecisionResult(
            service=self.p.service,
            action="approve",
            provider=key,
            digest=plan.digest,
            message=f"applied the held plan for {key} past the safety threshold: "
            f"{len(result.changes)} change(s)",
            write_calls=result.write_calls,
            changes=len(result.changes),
        )

    @approve_plan.validator
    def _validate_approve(self, decision: PlanDecision) -> None:
        self._decided(decision)

    @workflow.update
    async def reject_plan(self, decision: PlanDecision) -> PlanDecisionResult:
        key, seen = self._decided(decision)
        del self.p.held_plans[key]
        self.p.rejected[key] = seen
        return PlanDecisionResult(
            service=self.p.service,
            action="reject",
            provider=key,
            digest=seen,
            message=f"rejected the held plan for {key}: DNS keeps its answer until the "
            "loop wants another record set",
        )

    @reject_plan.validator
    def _validate_reject(self, decision: PlanDecision) -> None:
        self._decided(decision)

    def _decided(self, decision: PlanDecision) -> tuple[str, str]:
        """The provider key and digest of the plan a decision is about, or the refusal."""
        if not decision.reason.strip():
            raise ValueError("a reason is required")
        refusal = held_plan_refusal(
            self.p.service, self.p.held_plans, decision.provider, decision.digest
        )
        if refusal is not None:
            raise ValueError(refusal)
        key = decision.provider if decision.provider is not None else next(iter(self.p.held_plans))
        return key, self.p.held_plans[key].digest

    async def reconcile(self, reasons: list[str]) -> dict[str, Any]:
        service = self.p.service
        targets: GtmTargets = await workflow.execute_activity(
            "observe_gtm",
            ObserveRequest(service=service, health=self.p.health),
            result_type=GtmTargets,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=policies.DB,
        )
        if not targets.exists or targets.policy is None or targets.weights is None:
            self.p.removed = True
            return {"removed": True}
        self.p.removed = False
        policy = targets.policy
        self._interval = min(policy.interval, policy.health.interval)
        if targets.health is not None:
            self.p.health = targets.health.states
        self.gate = targets.gate

        target_weights = targets.weights
        assert target_weights is not None
        now = workflow.now()
        quiet = workflow.patched(QUIET_DNS_PATCH)
        if quiet:
            target_weights, self.p.rtt = smooth_latency(
                target_weights, self.p.rtt, now, policy.latency
            )
        previous = dict(self.p.ramp)
        if previous:  # a region joining a running loop slow-starts from 0
            for name in target_weights.regions:
                previous.setdefault(name, RampState(from_weight=0, target=0, started_at=now))
        weights, self.p.ramp = ramp_service(
            target_weights, previous, now, policy.slow_start, RAMP_STEPS if quiet else None
        )
        self.p.weights = summarize(weights)
        self.p.fail_open, self.p.reason = weights.fail_open, weights.reason
        if weights.fail_open:
            workflow.logger.warning("gtm %s: fail open: %s", service, weights.reason)

        applied = 0
        last_good = workflow.patched(LAST_GOOD_PATCH)
        held: list[str] = []
        for index, provider in enumerate(policy.dns_providers()):
            key = f"{index}:{provider.provider}"
            desired = desired_for_provider(policy, provider, weights)
            fingerprint = digest(desired)
            last = self.p.applied.get(key)
            action = "write"
            if last_good:
                action = dns_action(weights, desired, last is not None, key in self.p.held)
                if action == "hold":
                    held.append(key)
                    continue
            held_plan = self.p.held_plans.get(key)
            if held_plan is not None and held_plan.digest == fingerprint:
                continue  # refused before and waiting for a decision: not again each tick
            if self.p.rejected.get(key) == fingerprint:
                continue  # an admin rejected exactly this record set
            # The loop wants another record set now: a held or rejected one is moot (one
            # refused again is held in its place).
            self.p.held_plans.pop(key, None)
            self.p.rejected.pop(key, None)
            if last is not None and last.digest == fingerprint:
                continue
            if quiet and not needs_write(
                last.published if last else None, desired, policy.min_share_change
            ):
                continue  # inside the deadband: what DNS answers is close enough
            result: ApplyResult = await workflow.execute_activity(
                "apply_dns",
                ApplyDnsRequest(
                    service=service,
                    provider_key=key,
                    provider=provider,
                    desired=desired,
                    reason=", ".join(reasons),
                    force=action == "force",
                    expected_removals=targets.unready,
                    hold_refused=workflow.patched(HELD_PLAN_PATCH),
                ),
                result_type=ApplyResult,
                start_to_close_timeout=policies.EXTERNAL_TIMEOUT,
                heartbeat_timeout=policies.HEARTBEAT_TIMEOUT,
                retry_policy=policies.EXTERNAL,
            )
            if result.refused is not None:
                self.p.held_plans[key] = HeldPlan(
                    provider_key=key,
                    provider=provider,
                    desired=desired,
                    digest=fingerprint,
                    refused=result.refused,
                    at=now.isoformat(),
                    expected_removals=targets.unready,
                )
                continue
            applied += result.write_calls
            self.p.applied[key] = ProviderApply(
                at=now.isoformat(),
                digest=fingerprint,
                summary=f"{len(result.changes)} change(s)" if result.applied else "in sync",
                write_calls=result.write_calls,
                published=published(desired) if quiet else Published(),
            )
        if last_good:  # only once every provider is done: a failed write is forced again
            self.p.held = held
            if held:
                why = "no node is up" if not weights.live else "nothing to publish"
                self.p.reason = (
                    f"{why}: {', '.join(held)} keep the last good answer ({weights.reason})"
                )
        return {"weights": self.p.weights, "fail_open": weights.fail_open, "writes": applied}

    def continue_as_new_args(self) -> list[Any]:
        return [self.p.model_copy(update={"loop": self.loop})]

    def status_details(self) -> dict[str, Any]:
        return {
            "service": self.p.service,
            "weights": self.p.weights,
            "fail_open": self.p.fail_open,
            "reason": self.p.reason,
            # Without the per-address shares: one entry per node would swamp the status.
            "last_apply": {
                k: v.model_dump(exclude={"published"}) for k, v in self.p.applied.items()
            },
            "removed": self.p.removed,
            "holding": self.p.held,
            "gate": self.gate,  # regions the self-health gate holds or rate-limits
            "held_plans": {
                k: {"digest": v.digest, "refused": v.refused, "at": v.at}
                for k, v in self.p.held_plans.items()
            },
        }
