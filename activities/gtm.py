"""Activities of the GTM loop: observe + compute targets, active health checks, DNS apply.

Thin wrappers: the algorithms are :mod:`xplane.gtm.weights` (pure) and the
providers of :mod:`xplane.dns`; these only read the store and talk to the world.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeating import heartbeating
from xplane.config.models import DnsProviderConfig, GtmPolicy, HealthCheck
from xplane.dns.base import ApplyResult, DesiredEndpoint, DesiredRegion, DesiredService, DnsError
from xplane.dns.factory import make_provider
from xplane.dns.ratelimit import DnsThrottledError
from xplane.domain import NodeSnapshot, NodeStatus
from xplane.gate import GateSettings, verdict_for
from xplane.gtm.health_checks import CheckState, ProbeTarget, next_health, probe_all
from xplane.gtm.weights import ServiceWeights, compute_weights_and_unready
from xplane.heartbeat import HeartbeatSettings
from xplane.observability import metrics
from xplane.store import config_store
from xplane.store import gate as gate_store
from xplane.store import nodes as node_store
from xplane.store.db import transaction, utcnow
from xplane.store.events import record_event
from xplane.store.node_tables import NodeRow
from xplane.store.pools import list_pools


class HealthCheckRequest(BaseModel):
    service: str
    check: HealthCheck
    states: dict[str, CheckState] = Field(default_factory=dict)  # node id -> tracker state


class HealthCheckResult(BaseModel):
    states: dict[str, CheckState]
    flipped: dict[str, bool] = Field(default_factory=dict)  # node id -> new healthy value
    probed: int = 0


class ObserveRequest(BaseModel):
    service: str
    health: dict[str, CheckState] = Field(default_factory=dict)  # node id -> tracker state


class GtmTargets(BaseModel):
    """What the loop needs for one tick (small: no node list beyond the records)."""

    service: str
    exists: bool  # False: the service's GTM policy is gone from config
    policy: GtmPolicy | None = None
    weights: ServiceWeights | None = None
    health: HealthCheckResult | None = None
    observed_at: datetime
    # The self-health gate: region -> verdict when not normal (its reason).
    gate: dict[str, str] = Field(default_factory=dict)
    # Addresses of nodes judged not ready (in the gate's view): removed on purpose.
    unready: list[str] = Field(default_factory=list)


class ApplyDnsRequest(BaseModel):
    service: str
    provider_key: str
    provider: DnsProviderConfig
    desired: DesiredService
    reason: str = ""
    force: bool = False
    expected_removals: list[str] = Field(default_factory=list)  # see GtmTargets.unready


def desired_for_provider(
    policy: GtmPolicy, provider: DnsProviderConfig, weights: ServiceWeights
) -> DesiredService:
    """The record set one provider should publish (only its regions, if it names some)."""
    allowed = set(provider.regions) if provider.regions else None
    regions: list[DesiredRegion] = []
    for name, region in sorted(weights.regions.items()):
        if allowed is not None and name not in allowed:
            continue
        endpoints = [
            DesiredEndpoint(address=r.address, weight=r.weight)
            for r in weights.records
            if r.region == name and r.weight > 0
        ]
        endpoints.sort(key=lambda e: e.address)
        regions.append(
            DesiredRegion(region=name, weight=region.effective_weight, endpoints=endpoints)
        )
    zone = provider.zone or policy.domain.split(".", 1)[-1]
    return DesiredService(
        service=policy.service,
        name=policy.domain.rstrip("."),
        zone=zone.rstrip("."),
        ttl=provider.ttl,
        owner_id=provider.owner_id,
        regions=regions,
    )


def digest(desired: DesiredService) -> str:
    """Stable fingerprint of a desired record set: the loop writes only when it changes."""
    body = json.dumps(desired.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


class GtmActivities:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        heartbeat: HeartbeatSettings = HeartbeatSettings(),
        gate: GateSettings | None = None,
    ) -> None:
        self._sessions = session_factory
        self._heartbeat = heartbeat  # ready = heartbeat younger than the one timeout
        self._gate = gate or GateSettings.from_env()

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
        timeout = self._heartbeat.timeout_seconds
        with self._sessions() as session:
            rows = node_store.list_nodes(session, service=request.service)
            stored = gate_store.read_gate(session)
            pools = {p.region: p.node_count for p in list_pools(session, request.service)}
        nodes, gate = trusted_view(rows, stored, request.service, now, self._heartbeat, self._gate)
        # One pass over the nodes for both the weights and the unready addresses.
        weights, unready = compute_weights_and_unready(
            policy, config.regions, nodes, pools, timeout
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
        )

    async def check_node_health(self, request: HealthCheckRequest) -> HealthCheckResult:
        """Run the policy's active check against every registered node of the service.

        A node's ``health_check_ok`` in the store flips only after the configured
        number of consecutive results (``next_health``), so one lost probe changes nothing.
        """
        with self._sessions() as session:
            rows = [
                r
                for r in node_store.list_nodes(session, service=request.service)
                if r.state != "delete"
            ]
            targets = [ProbeTarget(node_id=r.id, address=r.address, port=r.port) for r in rows]
        results = await probe_all(targets, request.check)
        states: dict[str, CheckState] = {}
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
        return HealthCheckResult(states=states, flipped=flipped, probed=len(results))

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


def trusted_view(
    rows: list[NodeRow],
    stored: gate_store.StoredGate,
    service: str,
    now: datetime,
    heartbeat: HeartbeatSettings,
    settings: GateSettings,
) -> tuple[list[NodeSnapshot], dict[str, str]]:
    """The nodes as the self-health gate lets GTM see them, and the regions it holds.

    Without a gate decision (no world-state scan ever ran) the store's view as is.
    Otherwise a silence the world-state scan has not confirmed (it holds or has not
    judged it yet) keeps the node as last recorded, up, so it stays in DNS; in a
    held region a failing active check is not trusted either (XPlane's own probes
    may be what is cut off). Drains and operator changes still apply.
    """
    timeout = heartbeat.timeout
    nodes = [node_store.to_snapshot(r, now, timeout) for r in rows]
    if stored.decision is None and not stored.operator_closed:
        return nodes, {}
    verdicts = {
        region: verdict_for(
            stored.decision,
            service,
            region,
            now,
            heartbeat,
            settings,
            operator_closed=stored.operator_closed,
            operator_reason=stored.operator_reason,
        )
        for region in {r.region for r in rows}
    }
    for i, row in enumerate(rows):
        held = verdicts[row.region].verdict == "held"
        node = nodes[i]
        if node.status is NodeStatus.DOWN and gate_store.unconfirmed_silence(
            row.last_heartbeat_at, row.recorded_status, now, timeout
        ):
            node = node.model_copy(update={"status": NodeStatus.UP, "heartbeat_age_seconds": 0.0})
        if held and node.health_check_ok is False:
            node = node.model_copy(update={"health_check_ok": None})
        nodes[i] = node
    gate = {
        region: f"{v.verdict}: {v.reason}"
        for region, v in sorted(verdicts.items())
        if v.verdict != "normal"
    }
    return nodes, gate


def summarize(weights: ServiceWeights) -> dict[str, Any]:
    return {name: round(r.effective_weight, 3) for name, r in weights.regions.items()}
