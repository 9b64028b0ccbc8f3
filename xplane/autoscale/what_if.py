"""The autoscale what-if: a config tree and a WORLD.json in, every region's decision out (pure).

How a :class:`WorldSnapshot` is read:

* a node's numbers stand for the whole window: each ``active`` node with status
  ``up`` becomes one sample at ``now`` (warm, draining or down nodes serve no
  traffic, so their idle CPU would drag the mean down), and the low signal is
  taken to have held for the whole window (so a what-if shows the scale-down the
  loop would make once the window has passed);
* ``current`` is the pool's ``node_count`` (Git), else the region's nodes not in
  state ``delete``;
* a node that is down but not deleted has not been given up by its lifecycle yet
  (the down grace): it is held, not replaced; only deleted nodes leave a gap;
* ``ready_nodes`` counts ``active`` nodes with status ``up`` whose health check did
  not fail; it is only known when the world lists some node of the region (a
  world with pools only says nothing about readiness);
* the region policy's quota is the tighter of the autoscale policy's and the
  region's (``regions/``) quota;
* the pool's ``last_scaled_at`` drives the cooldowns.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from xplane.autoscale.calendar import CalendarFloor
from xplane.autoscale.desired import Decision, ScaleHistory, desired
from xplane.autoscale.metrics import Sample, aggregate, as_utc
from xplane.config.models import AutoscaleRegion, ConfigTree
from xplane.domain import NodeSnapshot, NodeState, WorldSnapshot
from xplane.lifecycle.node_status import is_healthy_snapshot, is_held, serves


class RegionWhatIf(BaseModel):
    """One line of the what-if (``xplane autoscale plan``'s JSON: exactly these keys)."""

    current: int
    desired: int
    reason: str


class AutoscaleWhatIf(BaseModel):
    services: dict[str, dict[str, RegionWhatIf]]


def _healthy(node: NodeSnapshot) -> bool:
    return is_healthy_snapshot(node.state, node.status, node.health_check_ok)


def _effective_policy(config: ConfigTree, region: str, policy: AutoscaleRegion) -> AutoscaleRegion:
    declared = config.regions.get(region)
    quotas = [q for q in (policy.quota, declared.quota if declared else None) if q is not None]
    return policy.model_copy(update={"quota": min(quotas)}) if quotas else policy


def decide_region(
    config: ConfigTree,
    service: str,
    region: str,
    world: WorldSnapshot,
    now: datetime,
    calendar: CalendarFloor | None = None,
) -> Decision:
    """The decision for one service's region in ``world`` at ``now`` (``calendar``: the
    scheduled floor and maintenance then; see :mod:`xplane.autoscale.calendar_plan`)."""
    policy = config.autoscale[service]
    window = policy.global_.cpu_window
    nodes = [
        n
        for n in world.nodes
        if n.service == service and n.region == region and n.state != NodeState.DELETE
    ]
    pool = next((p for p in world.pools if p.service == service and p.region == region), None)
    current = pool.node_count if pool else len(nodes)
    samples = [
        Sample(node_id=n.id, at=now, cpu=n.cpu, rtt_ms=n.rtt_ms, error_rate=n.error_rate, qps=n.qps)
        for n in nodes
        if serves(n.state, n.status)
    ]
    metrics = aggregate(samples, now, window) if samples else None
    history = ScaleHistory(
        last_scaled_at=pool.last_scaled_at if pool else None,
        low_since=now - window,
    )
    return desired(
        metrics,
        _effective_policy(config, region, policy.regions[region]),
        policy.cooldown,
        window,
        current,
        history,
        now,
        # In maintenance, nodes drained for the work are not replaced.
        healthy_nodes=(
            sum(_healthy(n) for n in nodes)
            if nodes and not (calendar and calendar.maintenance)
            else None
        ),
        held_nodes=sum(is_held(n.state, n.status, _healthy(n)) for n in nodes),
        max_replace=policy.max_replace,
        calendar=calendar,
    )


def what_if(
    config: ConfigTree, world: WorldSnapshot, now: datetime | None = None
) -> AutoscaleWhatIf:
    """Every autoscale policy's regions, by service then region (sorted)."""
    at = as_utc(now or world.now or datetime.now(UTC))
    services: dict[str, dict[str, RegionWhatIf]] = {}
    for service in sorted(config.autoscale):
        regions = services.setdefault(service, {})
        for region in sorted(config.autoscale[service].regions):
            decision = decide_region(config, service, region, world, at)
            regions[region] = RegionWhatIf(
                current=decision.current, desired=decision.desired, reason=decision.reason
            )
    return AutoscaleWhatIf(services=services)
