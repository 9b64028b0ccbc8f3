"""The console's view models, built by pure functions from store rows.

Every page of ``/ui`` and every ``/console/*`` JSON endpoint is one of these models:
the routes only read the store and call a builder, so the rules (a region's weight
and its reason, its colour, a node's timeline, the traffic history) are tested
without HTTP, and another dashboard gets the same data as JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from xplane.config.errors import ConfigIssue
from xplane.config.models import ConfigTree, GtmPolicy
from xplane.config.revisions import RevisionInfo, RevisionStatus
from xplane.domain import NodeState
from xplane.gtm.weights import RegionAggregate, RegionWeight, resolve_region, weigh_region
from xplane.lifecycle.node_status import derive_status
from xplane.store.console_queries import RegionTally
from xplane.store.events import EventRow
from xplane.store.node_tables import NodeRow
from xplane.store.pools import NodePoolRow

Health = Literal["healthy", "degraded", "down", "empty"]
LIFECYCLE = [s.value for s in NodeState]


class Action(BaseModel):
    """A button the viewer may use: POST ``path`` with ``{"reason": ...}``."""

    id: str
    label: str
    path: str
    danger: bool = False
    body: dict[str, str] = Field(default_factory=dict)  # sent with the reason


class PublishedWeight(BaseModel):
    provider: str
    weight: float | None  # None: the last apply did not publish this region
    at: datetime
    reason: str  # e.g. "as computed", "slow start 40 %"


class DnsApply(BaseModel):
    provider: str
    at: datetime
    message: str


class OverviewRegion(BaseModel):
    service: str
    region: str
    base_weight: float
    effective_weight: float
    reason: str  # why the effective weight is what it is
    published: list[PublishedWeight] = Field(default_factory=list)
    ready_nodes: int = 0
    total_nodes: int = 0  # not deleted
    by_state: dict[str, int] = Field(default_factory=dict)
    median_rtt_ms: float | None = None
    pool_in_git: int | None = None
    desired_nodes: int = 0
    pending_commit: str | None = None
    last_terraform_status: str | None = None
    health: Health = "empty"
    gate: str | None = None  # the self-health gate's hold on it, if any


class LoopState(BaseModel):
    id: str
    state: str  # running | paused | idle | unknown
    why: str
    last_activity_at: datetime | None = None


class GateView(BaseModel):
    open: bool
    lines: list[str]


class OverviewService(BaseModel):
    service: str
    domain: str
    regions: list[OverviewRegion]
    last_dns_apply: list[DnsApply] = Field(default_factory=list)
    loops: list[LoopState] = Field(default_factory=list)


class Overview(BaseModel):
    generated_at: datetime
    revision: str | None
    services: list[OverviewService]
    gate: GateView
    actions: list[Action] = Field(default_factory=list)


class EventOut(BaseModel):
    id: int
    at: datetime
    kind: str
    source: str
    service: str | None = None
    region: str | None = None
    node_id: str | None = None
    correlation_id: str | None = None
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class NodeLine(BaseModel):
    id: str
    service: str
    region: str
    address: str
    state: str
    status: str
    state_reason: str | None = None
    rtt_ms: float | None = None
    error_rate: float | None = None
    cpu: float | None = None
    last_heartbeat_at: datetime | None = None
    heartbeat_age_seconds: float | None = None
    drain_requested: bool = False
    drain_reason: str | None = None
    actions: list[Action] = Field(default_factory=list)


class RegionPage(BaseModel):
    summary: OverviewRegion
    nodes: list[NodeLine]
    autoscale: list[EventOut]
    terraform: list[EventOut]
    events: list[EventOut]
    actions: list[Action] = Field(default_factory=list)


class TimelineStep(BaseModel):
    at: datetime
    kind: str
    from_state: str | None = None
    to_state: str | None = None
    why: str


class NodePage(BaseModel):
    node: NodeLine
    timeline: list[TimelineStep]
    events: list[EventOut]


class TrafficPoint(BaseModel):
    at: datetime
    weight: float | None = None  # published (last apply of any provider) at ``at``
    active_nodes: int | None = None
    alive_nodes: int | None = None


class TrafficSeries(BaseModel):
    service: str
    region: str
    points: list[TrafficPoint]


class Traffic(BaseModel):
    since: datetime
    until: datetime
    series: list[TrafficSeries]


class ConfigPage(BaseModel):
    in_force: RevisionInfo | None
    latest: RevisionInfo | None
    rejected: RevisionInfo | None  # the newest rejected revision after the one in force
    errors: list[ConfigIssue] = Field(default_factory=list)
    revisions: list[RevisionInfo] = Field(default_factory=list)


# -- overview -------------------------------------------------------------------------


def region_weight(
    policy: GtmPolicy, config: ConfigTree, region: str, tally: RegionTally | None, pool: int | None
) -> RegionWeight:
    """GTM's weight of one region from its aggregate (the same formula and reasons)."""
    entry = next(r for r in policy.regions if r.name == region)
    spec = resolve_region(entry, config.regions.get(region))
    counted = RegionAggregate()
    if tally is not None:
        counted = RegionAggregate(
            registered=tally.registered,
            alive=tally.alive,
            ready=tally.ready,
            median_rtt_ms=tally.median_rtt_ms,
        )
    return weigh_region(policy, spec, counted, pool)


def weight_reason(weight: RegionWeight, target_ms: float) -> str:
    """Why a region has its weight, in the operator's words."""
    if weight.reason != "ok":
        return weight.reason
    parts = []
    if weight.latency_factor < 1 and weight.observed_rtt_ms is not None:
        parts.append(f"latency {weight.observed_rtt_ms:.0f} ms > target {target_ms:g} ms")
    if weight.health_ratio < 1:
        parts.append(
            f"{weight.ready_nodes}/{weight.registered_nodes} registered nodes ready "
            f"(health {weight.health_ratio:.2f})"
        )
    if weight.ready_nodes_factor < 1:
        parts.append(f"{weight.ready_nodes} ready < {weight.desired_nodes} desired")
    return "; ".join(parts) or "full weight"


def published_reason(published: float | None, effective: float) -> str:
    if published is None:
        return "not published by this provider"
    if effective > 0 and 0 < published < effective * 0.99:
        return f"slow start {published / effective:.0%}".replace("%", " %")
    if abs(published - effective) <= max(0.01, effective * 0.01):
        return "as computed"
    return "last applied"  # the loop rewrites only past its deadband


def region_health(weight: RegionWeight, tally: RegionTally | None) -> Health:
    if tally is None or tally.alive == 0:
        return "empty"
    if weight.effective_weight <= 0 or weight.ready_nodes == 0:
        return "down"
    if weight.health_ratio < 1 or weight.ready_nodes_factor < 1 or weight.latency_factor < 1:
        return "degraded"
    return "healthy"


def last_applies(applies: Iterable[EventRow]) -> dict[str, EventRow]:
    """provider -> its newest ``dns.applied`` event (``applies`` newest first)."""
    out: dict[str, EventRow] = {}
    for row in applies:
        provider = str((row.data or {}).get("provider") or row.source)
        out.setdefault(provider, row)
    return out


def overview_region(
    policy: GtmPolicy,
    config: ConfigTree,
    region: str,
    tally: RegionTally | None,
    pool: NodePoolRow | None,
    applies: Mapping[str, EventRow],
    gate: Mapping[str, str],
) -> OverviewRegion:
    weight = region_weight(policy, config, region, tally, pool.node_count if pool else None)
    published = []
    for provider, row in sorted(applies.items()):
        value = (row.data or {}).get("regions", {}).get(region)
        value = float(value) if value is not None else None
        published.append(
            PublishedWeight(
                provider=provider,
                weight=value,
                at=row.at,
                reason=published_reason(value, weight.effective_weight),
            )
        )
    return OverviewRegion(
        service=policy.service,
        region=region,
        base_weight=weight.base_weight,
        effective_weight=round(weight.effective_weight, 3),
        reason=weight_reason(weight, policy.latency.target_ms),
        published=published,
        ready_nodes=weight.ready_nodes,
        total_nodes=tally.alive if tally else 0,
        by_state=dict(tally.by_state) if tally else {},
        median_rtt_ms=weight.observed_rtt_ms,
        pool_in_git=pool.node_count if pool else None,
        desired_nodes=weight.desired_nodes,
        pending_commit=pool.pending_commit if pool else None,
        last_terraform_status=pool.last_terraform_status if pool else None,
        health=region_health(weight, tally),
        gate=gate.get(region),
    )


def loop_states(
    service: str,
    regions: Sequence[str],
    latest_by_source: Mapping[str, EventRow],
    gate_open: bool,
    reported: Mapping[str, LoopState] | None = None,
) -> list[LoopState]:
    """Each loop of a service: what Temporal reported (``reported``), else what its last
    event says. The store does not know whether a loop is paused; Temporal does."""
    ids = [f"gtm-{service}"] + [f"autoscale-{service}-{r}" for r in regions]
    out = []
    for loop_id in ids:
        if reported and loop_id in reported:
            out.append(reported[loop_id])
            continue
        last = latest_by_source.get(loop_id)
        held = "" if gate_open else "; the health gate holds its actions"
        if last is None:
            out.append(LoopState(id=loop_id, state="unknown", why="no event recorded yet" + held))
        else:
            out.append(
                LoopState(
                    id=loop_id,
                    state="running",
                    why=f"last event {last.kind}: {last.message}" + held,
                    last_activity_at=last.at,
                )
            )
    return out


def build_overview(
    *,
    now: datetime,
    config: ConfigTree | None,
    revision: str | None,
    tallies: Mapping[tuple[str, str], RegionTally],
    pools: Iterable[NodePoolRow],
    applies: Iterable[EventRow],
    latest_by_source: Mapping[str, EventRow],
    gate_lines: list[str],
    gate_holds: Mapping[tuple[str, str], str],
    actions: list[Action],
    reported_loops: Mapping[str, LoopState] | None = None,
) -> Overview:
    """The overview from per-region aggregates (nothing per node)."""
    # describe() writes one line per hold, "CLOSED ..." or "HELD ..."; "open ..." otherwise.
    holding = [line for line in gate_lines if line.startswith(("CLOSED", "HELD"))]
    gate = GateView(open=not holding, lines=gate_lines)
    by_pool = {(p.service, p.region): p for p in pools}
    by_service: dict[str, list[EventRow]] = {}
    for row in applies:
        by_service.setdefault(row.service or "", []).append(row)
    services = []
    for name, policy in sorted((config.gtm if config else {}).items()):
        service_applies = last_applies(by_service.get(name, []))
        holds = {r: why for (s, r), why in gate_holds.items() if s == name}
        regions = [
            overview_region(
                policy,
                config,  # type: ignore[arg-type]  # not None: policy came from it
                entry.name,
                tallies.get((name, entry.name)),
                by_pool.get((name, entry.name)),
                service_applies,
                holds,
            )
            for entry in policy.regions
        ]
        services.append(
            OverviewService(
                service=name,
                domain=policy.domain,
                regions=regions,
                last_dns_apply=[
                    DnsApply(provider=p, at=row.at, message=row.message)
                    for p, row in sorted(service_applies.items())
                ],
                loops=loop_states(
                    name,
                    [r.name for r in policy.regions],
                    latest_by_source,
                    gate.open,
                    reported_loops,
                ),
            )
        )
    return Overview(
        generated_at=now, revision=revision, services=services, gate=gate, actions=actions
    )


# -- nodes, regions, events -------------------------------------------------------------


def event_out(row: EventRow) -> EventOut:
    return EventOut(
        id=row.id,
        at=row.at,
        kind=row.kind,
        source=row.source,
        service=row.service,
        region=row.region,
        node_id=row.node_id,
        correlation_id=row.correlation_id,
        message=row.message,
        data=row.data or {},
    )


def node_line(
    row: NodeRow, now: datetime, timeout: timedelta, actions: list[Action] | None = None
) -> NodeLine:
    age = (now - row.last_heartbeat_at).total_seconds() if row.last_heartbeat_at else None
    return NodeLine(
        id=row.id,
        service=row.service,
        region=row.region,
        address=row.address,
        state=row.state,
        status=derive_status(row, now, timeout).value,
        state_reason=row.state_reason,
        rtt_ms=row.rtt_ms,
        error_rate=row.error_rate,
        cpu=row.cpu,
        last_heartbeat_at=row.last_heartbeat_at,
        heartbeat_age_seconds=round(age, 1) if age is not None else None,
        drain_requested=row.drain_requested,
        drain_reason=row.drain_reason,
        actions=actions or [],
    )


def build_region_page(
    summary: OverviewRegion,
    nodes: Iterable[NodeLine],
    events: Sequence[EventRow],
    actions: list[Action],
) -> RegionPage:
    """``events`` newest first."""
    out = [event_out(e) for e in events]
    return RegionPage(
        summary=summary,
        nodes=sorted(nodes, key=lambda n: (LIFECYCLE.index(n.state), n.id)),
        autoscale=[e for e in out if e.kind.startswith(("autoscale.", "region."))],
        terraform=[e for e in out if e.kind.startswith("terraform.")],
        events=out,
        actions=actions,
    )


def timeline(events: Iterable[EventRow]) -> list[TimelineStep]:
    """A node's lifecycle, oldest first: registration, each state change and the
    operator's or the loops' reasons (``events`` oldest first)."""
    steps = []
    for row in events:
        data = row.data or {}
        kind = row.kind
        if kind == "node.registered":
            steps.append(TimelineStep(at=row.at, kind=kind, to_state="idle", why=row.message))
        elif kind.startswith("node.") and kind.removeprefix("node.") in LIFECYCLE:
            why = row.message.split("): ", 1)[1] if "): " in row.message else row.message
            steps.append(
                TimelineStep(
                    at=row.at,
                    kind=kind,
                    from_state=data.get("from"),
                    to_state=kind.removeprefix("node."),
                    why=f"{data.get('event', 'event')}: {why}",
                )
            )
        elif kind.startswith(
            ("node.drain_requested", "node.status.", "node.health_check.")
        ) or kind.startswith("audit."):
            steps.append(TimelineStep(at=row.at, kind=kind, why=row.message))
    return steps


def build_node_page(node: NodeLine, events: Sequence[EventRow]) -> NodePage:
    """``events``: the node's, oldest first."""
    return NodePage(
        node=node,
        timeline=timeline(events),
        events=[event_out(e) for e in reversed(events)],
    )


# -- traffic history -------------------------------------------------------------------


def traffic_history(
    *,
    now: datetime,
    since: datetime,
    regions: Sequence[tuple[str, str]],
    applies: Iterable[EventRow],
    node_events: Iterable[EventRow],
    tallies: Mapping[tuple[str, str], RegionTally],
    weight_before: Mapping[tuple[str, str], float] | None = None,
) -> Traffic:
    """The last hour per region: published weights (from ``dns.applied``) and node counts.

    Node counts are rebuilt backwards from today's tallies through the hour's lifecycle
    events (``node.<state>`` carries the state it left, ``node.registered`` adds one),
    so the store keeps no per-minute table. ``applies`` and ``node_events`` oldest first.
    """
    series: dict[tuple[str, str], list[TrafficPoint]] = {key: [] for key in regions}
    # Weights: a step at every apply that names the region.
    last = dict(weight_before or {})
    for key in regions:
        if key in last:
            series[key].append(TrafficPoint(at=since, weight=last[key]))
    for row in applies:
        for region, weight in ((row.data or {}).get("regions") or {}).items():
            key = (row.service or "", region)
            if key in series:
                series[key].append(TrafficPoint(at=row.at, weight=float(weight)))
                last[key] = float(weight)
    # Node counts: walk back from now.
    counts = {key: dict(tallies[key].by_state) if key in tallies else {} for key in regions}
    node_points: dict[tuple[str, str], list[TrafficPoint]] = {key: [] for key in regions}
    for key in regions:
        node_points[key].append(_count_point(now, counts[key]))
    for row in sorted(node_events, key=lambda r: r.id, reverse=True):
        key = (row.service or "", row.region or "")
        if key not in counts:
            continue
        state_counts = counts[key]
        node_points[key].append(_count_point(row.at, state_counts))
        if row.kind == "node.registered":
            _add(state_counts, NodeState.IDLE.value, -1)
        else:
            to_state = row.kind.removeprefix("node.")
            from_state = (row.data or {}).get("from")
            _add(state_counts, to_state, -1)
            if from_state:
                _add(state_counts, str(from_state), 1)
    for key in regions:
        node_points[key].append(_count_point(since, counts[key]))
    out = []
    for key in regions:
        merged = _merge(series[key], sorted(node_points[key], key=lambda p: p.at), now)
        out.append(TrafficSeries(service=key[0], region=key[1], points=merged))
    return Traffic(since=since, until=now, series=out)


def _add(counts: dict[str, int], state: str, delta: int) -> None:
    counts[state] = max(0, counts.get(state, 0) + delta)


def _count_point(at: datetime, counts: Mapping[str, int]) -> TrafficPoint:
    alive = sum(n for s, n in counts.items() if s != NodeState.DELETE.value)
    return TrafficPoint(
        at=at, active_nodes=counts.get(NodeState.ACTIVE.value, 0), alive_nodes=alive
    )


def _merge(
    weights: list[TrafficPoint], nodes: list[TrafficPoint], now: datetime
) -> list[TrafficPoint]:
    """One step series: at every change of either, the latest value of both."""
    changes = sorted(
        [(p.at, "w", p) for p in weights] + [(p.at, "n", p) for p in nodes],
        key=lambda c: (c[0], c[1]),
    )
    out: list[TrafficPoint] = []
    weight: float | None = None
    active: int | None = None
    alive: int | None = None
    for at, what, point in changes:
        if what == "w":
            weight = point.weight
        else:
            active, alive = point.active_nodes, point.alive_nodes
        current = TrafficPoint(at=at, weight=weight, active_nodes=active, alive_nodes=alive)
        if out and out[-1].at == at:
            out[-1] = current
        else:
            out.append(current)
    if out and out[-1].at < now:
        out.append(out[-1].model_copy(update={"at": now}))
    return out


# -- config ------------------------------------------------------------------------------


def build_config_page(
    in_force: RevisionInfo | None, revisions: Sequence[RevisionInfo]
) -> ConfigPage:
    """``revisions`` newest first; a rejection newer than the revision in force is shown
    with its errors (file, field, message)."""
    rejected = next(
        (
            r
            for r in revisions
            if r.status is RevisionStatus.REJECTED and (in_force is None or r.id > in_force.id)
        ),
        None,
    )
    return ConfigPage(
        in_force=in_force,
        latest=revisions[0] if revisions else None,
        rejected=rejected,
        errors=list(rejected.errors) if rejected else [],
        revisions=list(revisions),
    )


# -- held DNS plans ------------------------------------------------------------------------


class PlanChange(BaseModel):
    """One record of a held plan: the weight DNS answers now and the one the plan writes."""

    record: str  # the region (each region is one weighted record set per provider)
    old_weight: float | None  # None: not published by the last apply
    new_weight: float | None  # None: the plan takes it out


class HeldPlan(BaseModel):
    """A DNS plan the provider's safety threshold refused, held by the GTM loop for an
    admin's decision (``POST /gtm/{service}/plan/approve|reject`` with ``provider`` and
    ``digest``)."""

    service: str
    provider: str  # the loop's provider key, e.g. 0:powerdns
    digest: str
    refused: str  # the threshold's message
    at: str | None = None
    changes: list[PlanChange] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)


def held_plans_of(
    service: str,
    status: dict[str, Any] | None,
    published: dict[str, dict[str, float]],
    actions: list[Action],
) -> list[HeldPlan]:
    """The plans ``service``'s GTM loop holds (its ``status`` details ``held_plans``), each
    a diff of the provider's last applied weights (``published``: provider key -> region
    -> weight) against the plan's. ``actions`` are made specific to each plan."""
    held = ((status or {}).get("details") or {}).get("held_plans") or {}
    plans = []
    for key, plan in sorted(held.items()):
        old = published.get(key, {})
        new = {str(r): float(w) for r, w in (plan.get("weights") or {}).items()}
        changes = [
            PlanChange(record=r, old_weight=old.get(r), new_weight=new.get(r))
            for r in sorted(set(old) | set(new))
            if old.get(r) != new.get(r)
        ]
        digest = str(plan.get("digest", ""))
        plans.append(
            HeldPlan(
                service=service,
                provider=key,
                digest=digest,
                refused=str(plan.get("refused", "")),
                at=plan.get("at"),
                changes=changes,
                actions=[
                    a.model_copy(
                        update={
                            "body": {"provider": key, "digest": digest},
                            "label": f"{a.label} ({key})",
                        }
                    )
                    for a in actions
                ],
            )
        )
    return plans
