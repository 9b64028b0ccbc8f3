"""Effective GTM weights: a pure function of one service's policy and the observed nodes.

For each region ``r`` of a service's GTM policy::

    ready              = nodes with state active, status up, a fresh heartbeat
                         (age <= heartbeat timeout; unknown age is not fresh), error rate
                         <= policy.max_error_rate (unknown counts as within) and an active
                         health check that is not failing (None = not checked yet)
    registered         = nodes not draining or deleted (state not drain/delete, status != drain)
    health_ratio       = ready / registered                      (0 when registered == 0)
    ready_nodes_factor = min(1, ready / desired)   desired = the pool's node_count, else registered
    latency_factor     = clamp(latency.target_ms / RTT, latency.floor, 1)   (1 without RTT data)
                         RTT = the median RTT of ready nodes, smoothed over time when the
                         caller passes ``smooth_rtt`` (the GTM loop: :mod:`xplane.gtm.smoothing`)
    effective_weight   = base_weight * health_ratio * ready_nodes_factor * latency_factor
                         and 0 when ready < min_ready_nodes or health_ratio < health_threshold

Fail open: the answer is never empty. When every region comes to 0:

* panic (Envoy's panic threshold): if the service's healthy share (ready / registered over
  its live regions) is below ``policy.panic_threshold``, every registered node of the
  fallback regions is published, healthy or not, each carrying the same share (its
  region's base weight over the largest region's node count). A handful of nodes that
  come back first would otherwise take every answer, and nodes the control plane merely
  cannot hear from would get none;
* otherwise the base weights of the fallback regions that still have an up node are
  published; if none has one, of all fallback regions (no region marked fallback = all
  are).

Each region's weight is split evenly across its ready nodes' records (in fail open: its
up nodes, else its non-deleted nodes; in panic: its registered nodes). ``live`` says
whether any node of the service is up: an answer without one is not written over the
last one that had one (:mod:`xplane.gtm.last_good`). No I/O, no Temporal: the GTM loop,
the what-if CLI and the benchmark call it alike.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SerializerFunctionWrapHandler,
    WrapSerializer,
)

from xplane.config.models import GtmPolicy, GtmRegion, Region
from xplane.domain import NodeSnapshot, NodeState, NodeStatus, PoolSnapshot

_GONE_STATES = (NodeState.DRAIN, NodeState.DELETE)


class RegionWeight(BaseModel):
    """One region's weight and the factors it was made of (for humans and the API)."""

    base_weight: float
    health_ratio: float
    ready_nodes_factor: float
    latency_factor: float
    effective_weight: float  # what is published (in fail open: the base weight, or 0)
    ready_nodes: int
    registered_nodes: int
    desired_nodes: int
    observed_rtt_ms: float | None = None
    fallback: bool = False
    reason: str = "ok"


@dataclass(slots=True)
class WeightedRecord:
    """One address to publish, with its share of its region's weight.

    A slots dataclass rather than a pydantic model: there is one per node and building
    10,000 models would cost more than the whole weight computation. Pydantic still
    validates and serialises it as a field of :class:`ServiceWeights`.
    """

    address: str
    region: str
    node_id: str
    weight: float


class ServiceWeights(BaseModel):
    """The GTM answer for one service: per-region weights and the records to publish."""

    service: str
    fail_open: bool = False
    panic: bool = False  # fail open below the panic threshold: spread over every node
    live: bool = True  # some node of the service is up (False: every node is down or gone)
    reason: str = "ok"
    regions: dict[str, RegionWeight] = Field(default_factory=dict)
    records: list[WeightedRecord] = Field(default_factory=list)

    def weights(self) -> dict[str, float]:
        """Region -> published weight."""
        return {name: r.effective_weight for name, r in self.regions.items()}


def pack_records(records: Iterable[WeightedRecord]) -> dict[str, list[list[Any]]]:
    """``records`` as runs of one region and share, in order (lossless):
    ``{"runs": [[region, share, [address, ...], [node id, ...]], ...]}``. A region's
    records share one weight, so a run is a region: the field names and the region and
    share repeated per record were two thirds of a GTM observe result at 10,000 nodes."""
    runs: list[list[Any]] = []
    last: list[Any] = ["", None, [], []]
    for r in records:
        if r.region != last[0] or r.weight != last[1] or not runs:
            last = [r.region, r.weight, [], []]
            runs.append(last)
        last[2].append(r.address)
        last[3].append(r.node_id)
    return {"runs": runs}


def unpack_records(value: Any) -> Any:
    """The records of :func:`pack_records`' form; any other form as it is (a list of
    records, as histories recorded before it hold them)."""
    if not isinstance(value, dict) or "runs" not in value:
        return value
    return [
        WeightedRecord(address, region, node_id, weight)
        for region, weight, addresses, node_ids in value["runs"]
        for address, node_id in zip(addresses, node_ids, strict=True)
    ]


def _unpack_weights(value: Any) -> Any:
    if isinstance(value, dict) and isinstance(value.get("records"), dict):
        return {**value, "records": unpack_records(value["records"])}
    return value


def _pack_weights(value: Any, handler: SerializerFunctionWrapHandler) -> Any:
    if not isinstance(value, ServiceWeights):
        return handler(value)
    data = handler(value.model_copy(update={"records": []}))
    data["records"] = pack_records(value.records)
    return data


# ServiceWeights whose records travel as runs (:func:`pack_records`) in JSON: what a
# workflow's history carries (the GTM loop's observe result). Other JSON (the API, the
# what-if CLI) keeps one object per record; either form reads back.
PackedWeights = Annotated[
    ServiceWeights,
    BeforeValidator(_unpack_weights),
    WrapSerializer(_pack_weights, when_used="json"),
]


# The RTT a region's latency factor uses, given (region, its observed median RTT).
RttInput = Callable[[str, float], float]


def latency_factor(rtt_ms: float | None, target_ms: float, floor: float) -> float:
    """clamp(target / rtt, floor, 1); 1 without RTT data."""
    if not rtt_ms:
        return 1.0
    return max(floor, min(1.0, target_ms / rtt_ms))


def summarize(weights: ServiceWeights) -> dict[str, float]:
    """Region -> published weight, rounded for humans (the GTM loop's status)."""
    return {name: round(r.effective_weight, 3) for name, r in weights.regions.items()}


@dataclass(frozen=True, slots=True)
class ResolvedRegion:
    """A GTM region with every optional field filled in."""

    name: str
    base_weight: float
    min_ready_nodes: int
    health_threshold: float
    fallback: bool
    retired: bool = False


def resolve_region(entry: GtmRegion, region: Region | None) -> ResolvedRegion:
    """The entry as :meth:`GtmRegion.resolved` fills it (the config loader has already:
    this keeps raw models working), with the region's ``retired``."""
    full = entry.resolved(region)
    assert full.weight is not None and full.min_ready_nodes is not None
    assert full.health_threshold is not None
    return ResolvedRegion(
        name=entry.name,
        base_weight=float(full.weight),
        min_ready_nodes=full.min_ready_nodes,
        health_threshold=float(full.health_threshold),
        fallback=entry.fallback,
        retired=bool(region and region.retired),
    )


def pools_of_service(service: str, pools: Iterable[PoolSnapshot]) -> dict[str, int]:
    """Region -> desired node count for one service (the ``pools`` argument below)."""
    return {p.region: p.node_count for p in pools if p.service == service}


_Ident = tuple[str, str]  # (node id, address): sorts by id


@dataclass(slots=True)
class _Tally:
    """One region's nodes sorted into the groups the formula and fail open need.

    Holds (id, address) pairs, not nodes: everything is read in the single in-order pass,
    so later per-region passes don't stride through memory (that cost more than the pass).
    """

    ready: list[_Ident] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)  # of ready nodes that report one
    registered: int = 0
    alive: int = 0  # not deleted
    # Filled only when fail open needs them (a second pass): the common path stays lean.
    up: list[_Ident] = field(default_factory=list)  # up, not draining: fail open's pick
    registered_nodes: list[_Ident] = field(default_factory=list)  # not draining: panic's
    alive_nodes: list[_Ident] = field(default_factory=list)  # fail open's last resort


_ACTIVE, _DRAIN, _DELETE = NodeState.ACTIVE, NodeState.DRAIN, NodeState.DELETE
_UP, _STATUS_DRAIN = NodeStatus.UP, NodeStatus.DRAIN


def _tally_nodes(
    service: str,
    region_names: Iterable[str],
    nodes: Iterable[NodeSnapshot],
    heartbeat_timeout_s: float,
    max_error_rate: float,
) -> dict[str, _Tally]:
    """Sort every node of ``service`` into its region's groups in ONE pass (the hot loop:
    attribute reads and list appends only, no model construction)."""
    tallies = {name: _Tally() for name in region_names}
    for node in nodes:
        if node.service != service:
            continue
        tally = tallies.get(node.region)
        state = node.state
        if tally is None or state == _DELETE:
            continue
        tally.alive += 1
        status = node.status
        if state == _DRAIN or status == _STATUS_DRAIN:
            continue
        tally.registered += 1
        if status != _UP or state != _ACTIVE or node.health_check_ok is False:
            continue
        age, err = node.heartbeat_age_seconds, node.error_rate
        if age is None or age > heartbeat_timeout_s:
            continue
        if err is None or err <= max_error_rate:
            tally.ready.append((node.id, node.address))
            if node.rtt_ms is not None:
                tally.rtts.append(node.rtt_ms)
    return tallies


def _collect_fail_open_nodes(
    service: str, tallies: dict[str, _Tally], nodes: Iterable[NodeSnapshot]
) -> None:
    """Second pass, only on fail open: the up and the alive nodes of each region."""
    for node in nodes:
        tally = tallies.get(node.region)
        if node.service != service or tally is None or node.state == _DELETE:
            continue
        ident = (node.id, node.address)
        tally.alive_nodes.append(ident)
        if node.state == _DRAIN or node.status == _STATUS_DRAIN:
            continue
        tally.registered_nodes.append(ident)
        if node.status == _UP:
            tally.up.append(ident)


@dataclass(slots=True)
class RegionAggregate:
    """One region's nodes of one service, counted as the formula counts them.

    What the store's ``GROUP BY`` gives (:func:`xplane.store.console_queries.gtm_aggregates`)
    so the weights need no record per node: only ``ready_nodes`` is per node, and only
    because each ready node becomes a DNS record.
    """

    registered: int = 0  # not draining nor deleted
    alive: int = 0  # not deleted
    ready: int = 0
    median_rtt_ms: float | None = None  # of the ready nodes that report one
    # The ready nodes by id, as two columns: records are built with one map() over them,
    # no tuple unpacked per node (at 100,000 records that is most of the time).
    ready_ids: list[str] = field(default_factory=list)
    ready_addresses: list[str] = field(default_factory=list)


def _region_weight(
    spec: ResolvedRegion,
    tally: _Tally,
    desired: int | None,
    target_ms: float,
    floor: float,
    smooth_rtt: RttInput | None,
) -> RegionWeight:
    observed = statistics.median(tally.rtts) if tally.rtts else None
    return _weigh(
        spec,
        len(tally.ready),
        tally.registered,
        tally.alive,
        observed,
        desired,
        target_ms,
        floor,
        smooth_rtt,
    )


def weigh_region(
    policy: GtmPolicy,
    spec: ResolvedRegion,
    aggregate: RegionAggregate,
    desired: int | None,
    smooth_rtt: RttInput | None = None,
) -> RegionWeight:
    """One region's weight (and its reason) from its aggregate counts."""
    return _weigh(
        spec,
        aggregate.ready,
        aggregate.registered,
        aggregate.alive,
        aggregate.median_rtt_ms,
        desired,
        policy.latency.target_ms,
        policy.latency.floor,
        smooth_rtt,
    )


def _weigh(
    spec: ResolvedRegion,
    ready: int,
    registered: int,
    alive: int,
    observed: float | None,
    desired: int | None,
    target_ms: float,
    floor: float,
    smooth_rtt: RttInput | None,
) -> RegionWeight:
    """The formula on one region's counts and observed median RTT."""
    health_ratio = ready / registered if registered else 0.0
    wanted = registered if desired is None else desired
    # A pool that wants no node: any ready node makes a full region.
    ready_factor = min(1.0, ready / wanted) if wanted > 0 else float(ready > 0)
    if observed is not None and smooth_rtt is not None:
        observed = smooth_rtt(spec.name, observed)
    latency = latency_factor(observed, target_ms, floor)

    if spec.retired:
        reason = "region is retired"
    elif not registered and not alive:
        reason = "no nodes registered"
    elif ready < spec.min_ready_nodes:
        reason = f"{ready} ready node(s) < min_ready_nodes {spec.min_ready_nodes}"
    elif health_ratio < spec.health_threshold:
        reason = f"health_ratio {health_ratio:.2f} < health_threshold {spec.health_threshold:g}"
    else:
        reason = "ok"
    effective = spec.base_weight * health_ratio * ready_factor * latency if reason == "ok" else 0.0
    if reason == "ok" and effective == 0.0:
        reason = "no ready nodes" if not ready else "base weight is 0"
    return RegionWeight(
        base_weight=spec.base_weight,
        health_ratio=health_ratio,
        ready_nodes_factor=ready_factor,
        latency_factor=latency,
        effective_weight=effective,
        ready_nodes=ready,
        registered_nodes=registered,
        desired_nodes=wanted,
        observed_rtt_ms=observed,
        fallback=spec.fallback,
        reason=reason,
    )


def _split(region: str, weight: float, nodes: list[_Ident]) -> list[WeightedRecord]:
    """The region's weight split evenly across ``nodes``, in their input order (the store
    lists nodes by id; providers sort what they publish)."""
    if not nodes:
        return []
    share = weight / len(nodes)
    return [WeightedRecord(address, region, node_id, share) for node_id, address in nodes]


def _healthy_share(specs: list[ResolvedRegion], tallies: dict[str, _Tally]) -> float | None:
    """Ready / registered nodes over the service's live regions (None: none registered)."""
    live = [s for s in specs if not s.retired] or specs
    registered = sum(tallies[s.name].registered for s in live)
    return sum(len(tallies[s.name].ready) for s in live) / registered if registered else None


def _panic(
    specs: list[ResolvedRegion], tallies: dict[str, _Tally], share: float, threshold: float
) -> tuple[str, dict[str, float], list[WeightedRecord]]:
    """Every registered node of the fallback regions, healthy or not, one share each."""
    live = [s for s in specs if not s.retired] or specs
    fallback = [s for s in live if s.fallback] or live
    chosen = [s for s in fallback if tallies[s.name].registered_nodes] or [
        s for s in live if tallies[s.name].registered_nodes
    ]
    reason = (
        f"panic: healthy share {share:.2f} < panic_threshold {threshold:g}: "
        "spread over every registered node"
    )
    largest = max(len(tallies[s.name].registered_nodes) for s in chosen)
    base = {s.name: s.base_weight for s in chosen}
    if not any(base.values()):
        base = dict.fromkeys(base, 1.0)
        reason += "; their base weights are all 0, so they share equally"
    # A region's weight grows with its nodes so every node gets the same share: one
    # node back in a small region does not take half the answers.
    weights = {
        s.name: base[s.name] * len(tallies[s.name].registered_nodes) / largest for s in chosen
    }
    records: list[WeightedRecord] = []
    for spec in chosen:
        records += _split(spec.name, weights[spec.name], tallies[spec.name].registered_nodes)
    return reason, weights, records


def _fail_open(
    specs: list[ResolvedRegion], tallies: dict[str, _Tally]
) -> tuple[str, dict[str, float], list[WeightedRecord]]:
    """Choose the regions and records to publish when every region computed to 0."""
    live = [s for s in specs if not s.retired] or specs
    fallback = [s for s in live if s.fallback] or live
    with_up = [s for s in fallback if tallies[s.name].up]
    if with_up:
        chosen, reason = with_up, "every region is at 0: fallback regions with an up node"
    else:
        chosen, reason = fallback, "every region is at 0 and no fallback region has an up node"
    records = _fail_open_records(chosen, tallies)
    if not records:
        # The fallback regions have no address at all: any address beats an empty answer.
        anywhere = [s for s in live if tallies[s.name].up] or [
            s for s in live if tallies[s.name].alive_nodes
        ]
        if anywhere:
            chosen = anywhere
            reason += "; they have no addresses, so any region with nodes is published"
            records = _fail_open_records(chosen, tallies)
    weights = {s.name: s.base_weight for s in chosen}
    if not any(weights.values()):
        # Base weights all 0 would still be an empty answer: share equally instead.
        weights = dict.fromkeys(weights, 1.0)
        reason += "; their base weights are all 0, so they share equally"
        records = _fail_open_records(chosen, tallies, weights)
    return reason, weights, records


def _fail_open_records(
    chosen: list[ResolvedRegion],
    tallies: dict[str, _Tally],
    weights: Mapping[str, float] | None = None,
) -> list[WeightedRecord]:
    records: list[WeightedRecord] = []
    for spec in chosen:
        tally = tallies[spec.name]
        weight = spec.base_weight if weights is None else weights[spec.name]
        records += _split(spec.name, weight, tally.up or tally.alive_nodes)
    return records


def unready_addresses(
    policy: GtmPolicy, nodes: Iterable[NodeSnapshot], heartbeat_timeout_s: float
) -> list[str]:
    """Addresses of ``policy.service``'s nodes that are not ready (down, failing their
    check, draining, given up): DNS loses them on purpose, so the provider's safety
    threshold does not count them as a suspicious mass removal (a large region that
    really failed must leave DNS at once). The nodes are the gate's trusted view.
    """
    nodes = list(nodes)
    regions = [r.name for r in policy.regions]
    tallies = _tally_nodes(
        policy.service, regions, nodes, heartbeat_timeout_s, policy.max_error_rate
    )
    ready = {address for tally in tallies.values() for _, address in tally.ready}
    return sorted({n.address for n in nodes if n.service == policy.service} - ready)


def compute_service_weights(
    policy: GtmPolicy,
    regions: Mapping[str, Region],
    nodes: Iterable[NodeSnapshot],
    pools: Mapping[str, int],
    heartbeat_timeout_s: float,
    *,
    smooth_rtt: RttInput | None = None,
) -> ServiceWeights:
    """Weights of ``policy.service`` in each of its regions (see the module docstring).

    ``regions``: the config's regions by name (for defaults and ``retired``); ``nodes``:
    every known node (other services and regions are ignored); ``pools``: region ->
    desired node count of this service (see :func:`pools_of_service`); ``smooth_rtt``:
    the RTT each region's latency factor uses instead of its observed median.
    """
    return compute_weights_and_unready(
        policy, regions, nodes, pools, heartbeat_timeout_s, smooth_rtt=smooth_rtt
    )[0]


def compute_weights_and_unready(
    policy: GtmPolicy,
    regions: Mapping[str, Region],
    nodes: Iterable[NodeSnapshot],
    pools: Mapping[str, int],
    heartbeat_timeout_s: float,
    *,
    smooth_rtt: RttInput | None = None,
) -> tuple[ServiceWeights, list[str]]:
    """:func:`compute_service_weights` and :func:`unready_addresses` from ONE pass over
    the nodes (the GTM tick needs both; tallying 10,000 nodes twice cost twice)."""
    # The call allocates one record per ready node and no reference cycles: pausing the
    # cyclic GC keeps it from re-scanning every live node model (that made 100k nodes
    # cost 2x per node). Reference counting still frees everything.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if not isinstance(nodes, list | tuple):
            nodes = list(nodes)
        weights, tallies = _compute(policy, regions, nodes, pools, heartbeat_timeout_s, smooth_rtt)
        ready = {address for tally in tallies.values() for _, address in tally.ready}
        unready = sorted({n.address for n in nodes if n.service == policy.service} - ready)
        return weights, unready
    finally:
        if gc_was_enabled:
            gc.enable()


def _compute(
    policy: GtmPolicy,
    regions: Mapping[str, Region],
    nodes: Iterable[NodeSnapshot],
    pools: Mapping[str, int],
    heartbeat_timeout_s: float,
    smooth_rtt: RttInput | None,
) -> tuple[ServiceWeights, dict[str, _Tally]]:
    specs = [resolve_region(r, regions.get(r.name)) for r in policy.regions]
    service = policy.service
    if not isinstance(nodes, list | tuple):
        nodes = list(nodes)  # fail open may need a second pass
    tallies = _tally_nodes(
        service, (s.name for s in specs), nodes, heartbeat_timeout_s, policy.max_error_rate
    )
    target_ms, floor = policy.latency.target_ms, policy.latency.floor
    result = {
        s.name: _region_weight(s, tallies[s.name], pools.get(s.name), target_ms, floor, smooth_rtt)
        for s in specs
    }

    if any(r.effective_weight > 0 for r in result.values()):
        records: list[WeightedRecord] = []
        for s in specs:
            weight = result[s.name].effective_weight
            if weight > 0:
                records += _split(s.name, weight, tallies[s.name].ready)
        # model_construct: every part is already typed; validating 10k records again
        # would double the cost of the call.
        weights = ServiceWeights.model_construct(service=service, regions=result, records=records)
        return weights, tallies

    _collect_fail_open_nodes(service, tallies, nodes)
    share = _healthy_share(specs, tallies)
    panic = share is not None and share < policy.panic_threshold
    if panic and share is not None:
        reason, published, records = _panic(specs, tallies, share, policy.panic_threshold)
        how = "published over every registered node"
    else:
        reason, published, records = _fail_open(specs, tallies)
        how = "published at base weight"
    for name, region in result.items():
        region.effective_weight = published.get(name, 0.0)
        region.reason = (
            f"fail open: {how} ({region.reason})"
            if name in published
            else f"fail open: not published ({region.reason})"
        )
    weights = ServiceWeights.model_construct(
        service=service,
        fail_open=True,
        panic=panic,
        live=any(t.up for t in tallies.values()),
        reason=reason,
        regions=result,
        records=records,
    )
    return weights, tallies


def compute_weights_from_aggregates(
    policy: GtmPolicy,
    regions: Mapping[str, Region],
    aggregates: Mapping[str, RegionAggregate],
    pools: Mapping[str, int],
    *,
    smooth_rtt: RttInput | None = None,
) -> ServiceWeights | None:
    """:func:`compute_service_weights` from per-region aggregates (region -> its counts;
    a region without one has no nodes). The same answer, without a pass over every node.

    None when every region computes to 0: fail open picks among the up, registered or
    alive nodes, which the aggregates do not list. That is the rare failure case, where
    the caller takes the per-node path (:func:`compute_weights_and_unready`).
    """
    specs = [resolve_region(r, regions.get(r.name)) for r in policy.regions]
    empty = RegionAggregate()
    result = {
        s.name: weigh_region(
            policy, s, aggregates.get(s.name, empty), pools.get(s.name), smooth_rtt
        )
        for s in specs
    }
    if not any(r.effective_weight > 0 for r in result.values()):
        return None
    # One record per ready node and no cycles: a cyclic GC run triggered by those
    # allocations would rescan every object the caller holds (as in
    # compute_weights_and_unready, the answer is built before the GC is back on).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        records: list[WeightedRecord] = []
        for s in specs:
            weight = result[s.name].effective_weight
            agg = aggregates.get(s.name, empty)
            if weight > 0 and agg.ready_ids:
                share = weight / len(agg.ready_ids)
                records.extend(
                    map(
                        WeightedRecord,
                        agg.ready_addresses,
                        repeat(s.name),
                        agg.ready_ids,
                        repeat(share),
                    )
                )
        return ServiceWeights.model_construct(
            service=policy.service, regions=result, records=records
        )
    finally:
        if gc_was_enabled:
            gc.enable()
