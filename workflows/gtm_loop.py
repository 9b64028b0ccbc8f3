"""GtmLoopWorkflow (ID ``gtm-<service>``): region weights -> DNS, forever.

Wakes on its tick, on ``world_changed`` (world-state loop, node and region
lifecycles) and on ``OnGtmPolicyChanged`` (GitOps sync). Each reconcile:

1. in one activity (so an idle tick adds few history events): runs the policy's
   active health check against every node (flips reach the store only after N
   consecutive results), then observes the store and computes target weights;
2. damps them here (drops at once, rises ramped over ``slow_start`` in steps; a
   region that joins a running loop starts from 0); the RTT behind the latency factor
   is smoothed over a minute before the weights are computed (the loop hands the
   activity its averages and keeps the new ones);
3. applies to each DNS provider only when its desired record set changed past the
   deadband (an address came or went, or a share moved by ``min_share_change``).

Smoothing, step 2's stepping and 3's deadband change which activities a tick
schedules, so they run behind ``workflow.patched(QUIET_DNS_PATCH)``: histories
recorded before them replay with the old behaviour. So does the last-good rule
(:mod:`xplane.gtm.last_good`, ``LAST_GOOD_PATCH``): while no node of the service is up,
DNS keeps the last answer written while one was (never empty), and the first answer
with an up node after that is written past the providers' safety threshold.

Maintenance windows (``maintenance:``, :mod:`xplane.gtm.maintenance`) scale a region's
target weight before the damping, at the workflow's clock (``MAINTENANCE_PATCH``): the
drop is at once, the way back goes through slow start and the deadband. A window's
Temporal Schedule enters it by the ``enter_window`` signal (kept until it closes).

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

from workflows import policies
from workflows.control_loop import ControlLoopWorkflow, LoopCarry, LoopSettings
from xplane import ids

with workflow.unsafe.imports_passed_through():
    from activities.gtm import ApplyDnsRequest, GtmActivities, GtmTargets, ObserveRequest
    from xplane.autoscale.calendar import Entered, WindowSignal
    from xplane.config.models import DnsProviderConfig
    from xplane.dns.plan import ApplyResult, DesiredService, desired_for_provider, digest
    from xplane.gtm.deadband import Published, needs_write, published
    from xplane.gtm.health_checks import HealthStates
    from xplane.gtm.last_good import dns_action
    from xplane.gtm.maintenance import apply_maintenance, maintenance_factors
    from xplane.gtm.ramp import RAMP_STEPS, RampState, ramp_service
    from xplane.gtm.smoothing import RttAverage, smooth_latency
    from xplane.gtm.weights import summarize

QUIET_DNS_PATCH = "gtm-quiet-dns-writes"
LAST_GOOD_PATCH = "gtm-last-good-dns"
MAINTENANCE_PATCH = "gtm-maintenance-windows"
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
    health: HealthStates = Field(default_factory=dict)
    applied: dict[str, ProviderApply] = Field(default_factory=dict)  # provider key -> last
    weights: dict[str, float] = Field(default_factory=dict)
    fail_open: bool = False
    reason: str = ""
    removed: bool = False
    # Providers whose DNS kept its last good answer on the last tick (xplane.gtm.last_good).
    held: list[str] = Field(default_factory=list)
    # Maintenance windows entered by a Temporal Schedule's action, until they close.
    maintenance: list[Entered] = Field(default_factory=list)
    in_maintenance: dict[str, str] = Field(default_factory=dict)  # region -> window now
    # Plans the safety threshold refused, waiting for approve_plan / reject_plan.
    held_plans: dict[str, HeldPlan] = Field(default_factory=dict)
    rejected: dict[str, str] = Field(default_factory=dict)  # provider key -> rejected digest


@workflow.defn(name=ids.GTM_LOOP)
class GtmLoopWorkflow(ControlLoopWorkflow):
    def __init__(self) -> None:
        super().__init__()
        self.params = GtmLoopParams(service="")
        self._interval = timedelta(seconds=10)
        self.gate: dict[str, str] = {}

    @workflow.run
    async def run(self, params: GtmLoopParams) -> None:
        self.params = params
        self._interval = timedelta(seconds=params.settings.interval_seconds)
        await self.run_loop(params.loop, params.settings)

    # One signal per event: the observed nodes changed; the service's policy changed.
    @workflow.signal(name=ids.WORLD_CHANGED)
    def world_changed(self, reason: str = "world changed") -> None:
        self.request("world_changed")

    @workflow.signal(name=ids.ON_GTM_POLICY_CHANGED)
    def on_policy_changed(self, _event: Any = None) -> None:
        self.request("policy_changed")

    @workflow.signal(name=WindowSignal.NAME)
    def enter_window(self, window: WindowSignal) -> None:
        """A maintenance window's Temporal Schedule fired (or was triggered)."""
        entry = Entered(name=window.name, opens=window.opens, closes=window.closes)
        if window.kind == "maintenance" and entry not in self.params.maintenance:
            self.params.maintenance.append(entry)
        self.request(f"window:{window.name}")

    def interval(self) -> timedelta:
        return self._interval

    # ------------------------------------------------------------------ updates
    @workflow.update
    async def approve_plan(self, decision: PlanDecision) -> PlanDecisionResult:
        key, seen = self._decided(decision)
        async with self._reconcile_lock:  # never beside a reconcile's own DNS write
            plan = self.params.held_plans.get(key)
            if plan is None or plan.digest != seen:
                raise ApplicationError(
                    f"the plan held for {key} changed before it could be applied "
                    f"(now: {plan.digest if plan else 'none'}); decide again",
                    type="ActionRefused",
                    non_retryable=True,
                )
            result: ApplyResult = await workflow.execute_activity_method(
                GtmActivities.apply_dns,
                ApplyDnsRequest(
                    service=self.params.service,
                    provider_key=key,
                    provider=plan.provider,
                    desired=plan.desired,
                    reason=f"held plan approved by {decision.by}: {decision.reason}",
                    force=True,
                    expected_removals=plan.expected_removals,
                ),
                start_to_close_timeout=policies.EXTERNAL_TIMEOUT,
                heartbeat_timeout=policies.HEARTBEAT_TIMEOUT,
                retry_policy=policies.EXTERNAL,
            )
            self.params.applied[key] = ProviderApply(
                at=workflow.now().isoformat(),
                digest=plan.digest,
                summary=f"{len(result.changes)} change(s), approved",
                write_calls=result.write_calls,
                published=published(plan.desired),
            )
            del self.params.held_plans[key]
            self.params.rejected.pop(key, None)
        return PlanDecisionResult(
            service=self.params.service,
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
        del self.params.held_plans[key]
        self.params.rejected[key] = seen
        return PlanDecisionResult(
            service=self.params.service,
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
            self.params.service, self.params.held_plans, decision.provider, decision.digest
        )
        if refusal is not None:
            raise ValueError(refusal)
        key = (
            decision.provider
            if decision.provider is not None
            else next(iter(self.params.held_plans))
        )
        return key, self.params.held_plans[key].digest

    async def reconcile(self, reasons: list[str]) -> dict[str, Any]:
        service = self.params.service
        targets: GtmTargets = await workflow.execute_activity_method(
            GtmActivities.observe_gtm,
            ObserveRequest(
                service=service, health=self.params.health, rtt=self.params.rtt, at=workflow.now()
            ),
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=policies.DB,
        )
        if not targets.exists or targets.policy is None or targets.weights is None:
            self.params.removed = True
            return {"removed": True}
        self.params.removed = False
        policy = targets.policy
        self._interval = min(policy.interval, policy.health.interval)
        if targets.health is not None:
            self.params.health = targets.health.states
        self.gate = targets.gate

        target_weights = targets.weights
        assert target_weights is not None
        now = workflow.now()
        quiet = workflow.patched(QUIET_DNS_PATCH)
        if targets.rtt is None:  # recorded before observe_gtm smoothed the RTT itself
            if quiet:
                target_weights, self.params.rtt = smooth_latency(
                    target_weights, self.params.rtt, now, policy.latency
                )
        elif quiet:  # an unpatched run keeps no averages: its RTTs stay raw
            self.params.rtt = targets.rtt
        self.params.maintenance = [w for w in self.params.maintenance if w.closes > now]
        # Addresses taken out for maintenance are removed on purpose (as unready ones are):
        # not counted against the providers' safety threshold.
        planned = list(targets.unready)
        if (policy.maintenance or self.params.in_maintenance) and workflow.patched(
            MAINTENANCE_PATCH
        ):
            factors = maintenance_factors(policy, now, self.params.maintenance)
            before = {r.address for r in target_weights.records}
            target_weights = apply_maintenance(target_weights, factors)
            planned += sorted(before - {r.address for r in target_weights.records})
            self.params.in_maintenance = {r: f"{f.name} x{f.factor:g}" for r, f in factors.items()}
        previous = dict(self.params.ramp)
        if previous:  # a region joining a running loop slow-starts from 0
            for name in target_weights.regions:
                previous.setdefault(name, RampState(from_weight=0, target=0, started_at=now))
        weights, self.params.ramp = ramp_service(
            target_weights, previous, now, policy.slow_start, RAMP_STEPS if quiet else None
        )
        self.params.weights = summarize(weights)
        self.params.fail_open, self.params.reason = weights.fail_open, weights.reason
        if weights.fail_open:
            workflow.logger.warning("gtm %s: fail open: %s", service, weights.reason)

        applied = 0
        last_good = workflow.patched(LAST_GOOD_PATCH)
        held: list[str] = []
        for index, provider in enumerate(policy.dns_providers()):
            key = f"{index}:{provider.provider}"
            desired = desired_for_provider(policy, provider, weights)
            fingerprint = digest(desired)
            last = self.params.applied.get(key)
            action = "write"
            if last_good:
                action = dns_action(weights, desired, last is not None, key in self.params.held)
                if action == "hold":
                    held.append(key)
                    continue
            held_plan = self.params.held_plans.get(key)
            if held_plan is not None and held_plan.digest == fingerprint:
                continue  # refused before and waiting for a decision: not again each tick
            if self.params.rejected.get(key) == fingerprint:
                continue  # an admin rejected exactly this record set
            # The loop wants another record set now: a held or rejected one is moot (one
            # refused again is held in its place).
            self.params.held_plans.pop(key, None)
            self.params.rejected.pop(key, None)
            if last is not None and last.digest == fingerprint:
                continue
            if quiet and not needs_write(
                last.published if last else None, desired, policy.min_share_change
            ):
                continue  # inside the deadband: what DNS answers is close enough
            result: ApplyResult = await workflow.execute_activity_method(
                GtmActivities.apply_dns,
                ApplyDnsRequest(
                    service=service,
                    provider_key=key,
                    provider=provider,
                    desired=desired,
                    reason=", ".join(reasons),
                    force=action == "force",
                    expected_removals=planned,
                    hold_refused=workflow.patched(HELD_PLAN_PATCH),
                ),
                start_to_close_timeout=policies.EXTERNAL_TIMEOUT,
                heartbeat_timeout=policies.HEARTBEAT_TIMEOUT,
                retry_policy=policies.EXTERNAL,
            )
            if result.refused is not None:
                self.params.held_plans[key] = HeldPlan(
                    provider_key=key,
                    provider=provider,
                    desired=desired,
                    digest=fingerprint,
                    refused=result.refused,
                    at=now.isoformat(),
                    expected_removals=planned,
                )
                continue
            applied += result.write_calls
            self.params.applied[key] = ProviderApply(
                at=now.isoformat(),
                digest=fingerprint,
                summary=f"{len(result.changes)} change(s)" if result.applied else "in sync",
                write_calls=result.write_calls,
                published=published(desired) if quiet else Published(),
            )
        if last_good:  # only once every provider is done: a failed write is forced again
            self.params.held = held
            if held:
                why = "no node is up" if not weights.live else "nothing to publish"
                self.params.reason = (
                    f"{why}: {', '.join(held)} keep the last good answer ({weights.reason})"
                )
        return {"weights": self.params.weights, "fail_open": weights.fail_open, "writes": applied}

    def continue_as_new_args(self) -> list[Any]:
        return [self.params.model_copy(update={"loop": self.loop})]

    def status_details(self) -> dict[str, Any]:
        return {
            "service": self.params.service,
            "weights": self.params.weights,
            "fail_open": self.params.fail_open,
            "reason": self.params.reason,
            # Without the per-address shares: one entry per node would swamp the status.
            "last_apply": {
                k: v.model_dump(exclude={"published"}) for k, v in self.params.applied.items()
            },
            "removed": self.params.removed,
            "holding": self.params.held,
            "maintenance": self.params.in_maintenance,
            "gate": self.gate,  # regions the self-health gate holds or rate-limits
            "held_plans": {
                k: {
                    "digest": v.digest,
                    "refused": v.refused,
                    "at": v.at,
                    # What the plan would publish, per region (the console's diff).
                    "weights": {r.region: r.weight for r in v.desired.regions},
                }
                for k, v in self.params.held_plans.items()
            },
        }
