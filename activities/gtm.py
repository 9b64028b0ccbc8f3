"""Activities of the GTM loop: observe + compute targets, active health checks, DNS apply.

Thin wrappers: the algorithms are :mod:`xplane.gtm.weights` and :mod:`xplane.dns.plan`
(pure; what each provider publishes is :func:`~xplane.dns.plan.desired_for_provider`)
and the providers of :mod:`xplane.dns`; these only read the store and talk to the world.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeating import heartbeating
from xplane.config.models import DnsProviderConfig, GtmPolicy, HealthCheck, Region
from xplane.dns.factory import make_provider
from xplane.dns.plan import ApplyResult, DesiredService, DnsError, DnsSafetyError
from xplane.dns.ratelimit import DnsThrottledError
from xplane.gate import GateSettings, gate_trust, trusted_view
from xplane.gtm.health_checks import (
    HealthStates,
    ProbeTarget,
    next_health,
    probe_order,
)
from xplane.gtm.smoothing import RttAverage, RttSmoother
from xplane.gtm.weights import (
    PackedWeights,
    ServiceWeights,
    compute_weights_and_unready,
    compute_weights_from_aggregates,
)
from xplane.heartbeat import HeartbeatSettings
from xplane.lifecycle.node_status import heartbeat_is_fresh
from xplane.observability import metrics
from xplane.probes.health import probe_all
from xplane.store import config_store, console_queries
from xplane.store import gate as gate_store
from xplane.store import nodes as node_store
from xplane.store.db import transaction, utcnow
from xplane.store.events import record_event
from xplane.store.pools import list_pools


class HealthCheckRequest(BaseModel):
    service: str
    check: HealthCheck
    states: HealthStates = Field(default_factory=dict)  # node id -> tracker state


class HealthCheckResult(BaseModel):
    states: HealthStates
    flipped: dict[str, bool] = Field(default_factory=dict)  # node id -> new healthy value
    probed: int = 0
    # Not probed this tick: out by heartbeat or draining (skipped), or past the budget
    # (deferred to the next ticks, in turn).
    skipped: int = 0
    deferred: int = 0


# Seconds a tick may spend starting probes (XPLANE_GTM_PROBE_BUDGET_S): at fleet size
# the active checks, not the weights, would make the tick; past it the round goes on
# next tick. Started probes still finish (each within the check's timeout).
DEFAULT_PROBE_BUDGET_S = 0.5


class ObserveRequest(BaseModel):
    service: str
    health: HealthStates = Field(default_factory=dict)  # node id -> tracker state
    # The loop's RTT averages (region -> smoothed RTT) and its clock: each region's RTT
    # is smoothed before the weights are computed (xplane.gtm.smoothing).
    rtt: dict[str, RttAverage] = Field(default_factory=dict)
    at: datetime | None = None


class GtmTargets(BaseModel):
    """What the loop needs for one tick (small: no node list beyond the records)."""

    service: str
    exists: bool  # False: the service's GTM policy is gone from config
    policy: GtmPolicy | None = None
    weights: PackedWeights | None = None  # its records as runs per region in the history
    health: HealthCheckResult | None = None
    observed_at: datetime
    # The self-health gate: region -> verdict when not normal (its reason).
    gate: dict[str, str] = Field(default_factory=dict)
    # Addresses of nodes judged not ready (in the gate's view): removed on purpose.
    unready: list[str] = Field(default_factory=list)
    # The new RTT averages; None in results recorded before the RTT was smoothed here.
    rtt: dict[str, RttAverage] | None = None


class ApplyDnsRequest(BaseModel):
    service: str
    provider_key: str
    provider: DnsProviderConfig
    desired: DesiredService
    reason: str = ""
    force: bool = False
    expected_removals: list[str] = Field(default_factory=list)  # see GtmTargets.unready
    # A plan the safety threshold refuses is answered (ApplyResult.refused) and logged as
    # ``dns.plan_held`` instead of failing: the loop holds it for an admin to approve.
    hold_refused: bool = False


def observe_weights(
    sessions: sessionmaker[Session],
    policy: GtmPolicy,
    regions: Mapping[str, Region],
    now: datetime,
    heartbeat: HeartbeatSettings,
    gate_settings: GateSettings,
    rtt: Mapping[str, RttAverage],
    rtt_at: datetime,
) -> tuple[ServiceWeights, list[str], dict[str, str], dict[str, RttAverage]]:
    """The service's target weights, unready addresses, gate verdicts and new RTT averages,
    from the store as the self-health gate lets GTM see it.

    The store counts each region's nodes (``GROUP BY``, the gate's two rules in SQL:
    :func:`~xplane.gate.gate_trust`) and lists only the ready ones, each a record: no
    row per node in Python beyond those. Only a fail-open answer (every region at 0,
    where the up, registered or alive nodes must be picked) reads every node and takes
    the per-node path (:func:`~xplane.gate.trusted_view`); both give the same weights
    (tests/test_gtm_observe_paths.py).
    """
    service, timeout = policy.service, heartbeat.timeout
    names = [r.name for r in policy.regions]
    with sessions() as session:
        stored = gate_store.read_gate(session)
        pools = {p.region: p.node_count for p in list_pools(session, service)}
        trust = gate_trust(
            stored, service, node_store.service_regions(session, service), now, heartbeat,
            gate_settings,
        )  # fmt: skip
        aggregates, unready = console_queries.gtm_aggregates(
            session, service, names, now, timeout, policy.max_error_rate, trust
        )
    smoother = RttSmoother(rtt, rtt_at)
    weights = compute_weights_from_aggregates(
        policy, regions, aggregates, pools, smooth_rtt=smoother
    )
    if weights is not None:
        return weights, unready, trust.gate, smoother.averages
    with sessions() as session:
        rows = node_store.list_nodes(session, service=service)
    snapshots = [node_store.to_snapshot(r, now, timeout) for r in rows]
    nodes, gate = trusted_view(snapshots, rows, stored, service, now, heartbeat, gate_settings)
    smoother = RttSmoother(rtt, rtt_at)  # afresh: the aggregate pass fed the first one
    weights, unready = compute_weights_and_unready(
        policy, regions, nodes, pools, heartbeat.timeout_seconds, smooth_rtt=smoother
    )
    return weights, unready, gate, smoother.averages


class GtmActivities:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        heartbeat: HeartbeatSettings = HeartbeatSettings(),
        gate: GateSettings | None = None,
        probe_budget_s: float | None = None,
    ) -> None:
        self._sessions = session_factory
        self._heartbeat = heartbeat  # ready = heartbeat younger than the one timeout
        self._gate = gate or GateSettings.from_env()
        if probe_budget_s is None:
            probe_budget_s = float(
                os.environ.get("XPLANE_GTM_PROBE_BUDGET_S", DEFAULT_PROBE_BUDGET_S)
            )
        if probe_budget_s <= 0:
            raise ValueError(f"probe budget must be > 0 s, not {probe_budget_s}")
        self._probe_budget_s = probe_budget_s
        # Service -> the last node probed: where the next tick's round resumes. In
        # memory: a restarted worker merely starts the rotation over.
        self._probe_cursor: dict[str, str] = {}

    @activity.defn(name="observe_gtm")
    async def observe_gtm(self, request: ObserveRequest) -> GtmTargets:
        """One activity per tick (history stays small): active checks, then target weights.

        The health checks run first so their flips count in this tick's weights.
        The ramp is not applied here: the loop keeps its state and damps.
        """
        with self._sessions() as session:
            config = config_store.current_config(session)
        policy = config.gtm.get(request.service) if config else None
        if config is None or policy is None:
            return GtmTargets(service=request.service, exists=False, observed_at=utcnow())
        health = await self.check_node_health(
            HealthCheckRequest(service=request.service, check=policy.health, states=request.health)
        )
        now = utcnow()
        weights, unready, gate, rtt = observe_weights(
            self._sessions,
            policy,
            config.regions,
            now,
            self._heartbeat,
            self._gate,
            request.rtt,
            request.at or now,
        )
        metrics.set_region_weights(request.service, weights.weights(), weights.fail_open)
        metrics.observe_loop(f"gtm-{request.service}", now)
        return GtmTargets(
            service=request.service,
            exists=True,
            policy=policy,
            weights=weights,
            health=health,
            observed_at=now,
            gate=gate,
            unready=unready,
            rtt=rtt,
        )

    async def check_node_health(self, request: HealthCheckRequest) -> HealthCheckResult:
        """Run the policy's active check against the registered nodes of the service.

        A node's ``health_check_ok`` in the store flips only after the configured
        number of consecutive results (``next_health``), so one lost probe changes nothing.
        Only nodes whose check can matter are probed: not those already out by heartbeat
        (the ones that would time out) or draining. Probes start for at most the probe
        budget, new nodes first, then in turn (``probe_order``); a node not probed keeps
        its tracker state.
        """
        now = utcnow()
        timeout = self._heartbeat.timeout
        with self._sessions() as session:
            rows = node_store.probe_candidates(session, request.service)
        wanted = [
            r
            for r in rows
            if r.state != "drain"
            and not r.drain_requested
            and heartbeat_is_fresh(r.last_heartbeat_at, now, timeout)
        ]
        targets = probe_order(
            (ProbeTarget(node_id=r.id, address=r.address, port=r.port) for r in wanted),
            request.states.keys(),
            self._probe_cursor.get(request.service),
        )
        results = await probe_all(targets, request.check, budget_s=self._probe_budget_s)
        if results:
            # Results keep target order and the started ones are a prefix of it.
            last = targets[len(results) - 1].node_id
            if last in request.states:
                self._probe_cursor[request.service] = last
        alive = {r.id for r in rows}
        states = {k: v for k, v in request.states.items() if k in alive}
        flipped: dict[str, bool] = {}
        check = request.check
        for result in results:
            prev = request.states.get(result.node_id)
            state = next_health(prev, result.ok, check.healthy_threshold, check.unhealthy_threshold)
            states[result.node_id] = state
            if state.healthy is not None and (prev is None or prev.healthy != state.healthy):
                flipped[result.node_id] = state.healthy
        if flipped:
            now = utcnow()
            with transaction(self._sessions) as session:
                for node_id, healthy in flipped.items():
                    node_store.record_health_check(session, node_id, healthy, now)
                    record_event(
                        session,
                        "node.health_check." + ("passing" if healthy else "failing"),
                        f"active {check.type} check of {node_id} is "
                        + ("passing" if healthy else "failing"),
                        source=f"gtm-{request.service}",
                        service=request.service,
                        node_id=node_id,
                        correlation_id=node_id,
                        at=now,
                    )
        return HealthCheckResult(
            states=states,
            flipped=flipped,
            probed=len(results),
            skipped=len(rows) - len(wanted),
            deferred=len(targets) - len(results),
        )

    @activity.defn(name="apply_dns")
    def apply_dns(self, request: ApplyDnsRequest) -> ApplyResult:
        """Plan and apply one provider; log the change. Auth/validation errors don't retry;
        a throttled provider is retried no sooner than its ``Retry-After``."""
        provider = make_provider(request.provider)
        try:
            with heartbeating():  # provider APIs can be slow; a dead worker shows in seconds
                plan = provider.plan(request.desired)
                plan.expected_removals = request.expected_removals
                result = provider.apply(plan, force=request.force)
        except DnsError as err:
            if request.hold_refused and isinstance(err, DnsSafetyError):
                return self._held(request, plan.summary(), str(err))
            metrics.dns_apply(request.provider_key, False)
            delay = None
            if isinstance(err, DnsThrottledError) and err.retry_after is not None:
                delay = timedelta(seconds=max(1.0, err.retry_after))
            raise ApplicationError(
                f"{request.provider_key}: {err}",
                type=type(err).__name__,
                non_retryable=not err.retryable,
                next_retry_delay=delay,
            ) from err
        metrics.dns_apply(request.provider_key, True, result.write_calls)
        if result.applied:
            with transaction(self._sessions) as session:
                record_event(
                    session,
                    "dns.applied",
                    f"{request.provider_key}: {plan.summary()} ({request.reason})",
                    source=f"gtm-{request.service}",
                    service=request.service,
                    data={
                        "provider": request.provider_key,
                        "changes": [c.model_dump(mode="json") for c in result.changes],
                        "regions": {r.region: r.weight for r in request.desired.regions},
                    },
                )
        return result

    def _held(self, request: ApplyDnsRequest, summary: str, refusal: str) -> ApplyResult:
        metrics.dns_apply(request.provider_key, False)
        with transaction(self._sessions) as session:
            record_event(
                session,
                "dns.plan_held",
                f"{request.provider_key}: {refusal}; held for approval "
                f"(xplane gtm approve {request.service}) [{summary}]",
                source=f"gtm-{request.service}",
                service=request.service,
                data={"provider": request.provider_key, "refused": refusal},
            )
        return ApplyResult(
            provider=request.provider_key,
            name=request.desired.name,
            applied=False,
            refused=refusal,
        )
