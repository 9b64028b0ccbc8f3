"""Benchmark: GTM weights at 1k / 10k / 100k nodes over 100 regions, two ways.

* per node: ``compute_service_weights`` over one ``NodeSnapshot`` per node (the what-if
  CLI, fail open);
* aggregated: ``compute_weights_from_aggregates`` over per-region counts and medians
  (what the store's GROUP BY gives, :func:`xplane.store.console_queries.gtm_aggregates`)
  plus the ready nodes' (id, address) for the records. ``--store`` also times that
  query on SQLite with every node in it.

Every node is ready (the worst case: each one becomes a record). Best of N runs with
``time.perf_counter``. ``python bench/weights.py`` prints a markdown table; ``run()``
returns the figures for BENCHMARKS.md.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

from xplane.config.models import GtmPolicy
from xplane.domain import NodeSnapshot
from xplane.gtm.weights import (
    RegionAggregate,
    compute_service_weights,
    compute_weights_from_aggregates,
)

REGIONS = 100
SIZES = (1_000, 10_000, 100_000)
TARGET_MS_AT_10K = 20.0
TARGET_MS_AT_100K_AGGREGATED = 50.0


def _world(nodes: int, seed: int = 7) -> tuple[GtmPolicy, list[NodeSnapshot], dict[str, int]]:
    rnd = random.Random(seed)
    policy = GtmPolicy.model_validate(
        {
            "service": "svc",
            "domain": "api.svc.plus",
            "regions": [
                {"name": f"r{i:03d}", "weight": 100, "fallback": i < 3} for i in range(REGIONS)
            ],
        }
    )
    world = [
        NodeSnapshot(
            id=f"n{j:06d}",
            service="svc",
            region=f"r{rnd.randrange(REGIONS):03d}",  # shuffled, as a store returns them
            address=f"10.{j >> 16 & 255}.{j >> 8 & 255}.{j & 255}",
            rtt_ms=rnd.uniform(5, 300),
            error_rate=rnd.uniform(0, 0.05),
            heartbeat_age_seconds=rnd.uniform(0, 20),
        )
        for j in range(nodes)
    ]
    pools = {f"r{i:03d}": max(1, nodes // REGIONS) for i in range(REGIONS)}
    return policy, world, pools


def _aggregates(world: list[NodeSnapshot]) -> dict[str, RegionAggregate]:
    """What the store's GROUP BY returns for ``world`` (every node is ready)."""
    rtts: dict[str, list[float]] = defaultdict(list)
    out: dict[str, RegionAggregate] = defaultdict(RegionAggregate)
    for n in sorted(world, key=lambda n: n.id):
        agg = out[n.region]
        agg.registered += 1
        agg.alive += 1
        agg.ready += 1
        agg.ready_ids.append(n.id)
        agg.ready_addresses.append(n.address)
        if n.rtt_ms is not None:
            rtts[n.region].append(n.rtt_ms)
    for region, values in rtts.items():
        out[region].median_rtt_ms = statistics.median(values)
    return dict(out)


def _best_ms(nodes: int, repeat: int) -> tuple[float, float]:
    """(per node, aggregated) best times in ms; asserts both give the same answer."""
    policy, world, pools = _world(nodes)
    aggregates = _aggregates(world)
    per_node = aggregated = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        slow = compute_service_weights(policy, {}, world, pools, 30.0)
        per_node = min(per_node, time.perf_counter() - started)
        started = time.perf_counter()
        fast = compute_weights_from_aggregates(policy, {}, aggregates, pools)
        aggregated = min(aggregated, time.perf_counter() - started)
    assert fast is not None and fast.records == slow.records
    return per_node * 1000, aggregated * 1000


def store_ms(nodes: int = 100_000, repeat: int = 3) -> float:
    """Best time of ``gtm_aggregates`` on SQLite holding ``nodes`` ready nodes."""
    import hashlib

    from sqlalchemy import insert

    import xplane.store.tables  # noqa: F401  (registers every table)
    from xplane.store import console_queries
    from xplane.store.db import Base, make_engine, make_sessionmaker, transaction, utcnow
    from xplane.store.node_tables import NodeRow

    policy, world, _ = _world(nodes)
    engine = make_engine("sqlite://")
    Base.metadata.create_all(engine)
    factory = make_sessionmaker(engine)
    now = utcnow()
    rows = [
        {
            "id": n.id,
            "service": n.service,
            "region": n.region,
            "address": n.address,
            "token_hash": hashlib.sha256(n.id.encode()).hexdigest(),
            "state": "active",
            "reported_status": "up",
            "last_heartbeat_at": now - timedelta(seconds=n.heartbeat_age_seconds or 0),
            "rtt_ms": n.rtt_ms,
            "error_rate": n.error_rate,
        }
        for n in world
    ]
    with transaction(factory) as session:
        for start in range(0, len(rows), 10_000):
            session.execute(insert(NodeRow), rows[start : start + 10_000])
    names = [r.name for r in policy.regions]
    best = float("inf")
    with factory() as session:
        for _ in range(repeat):
            started = time.perf_counter()
            console_queries.gtm_aggregates(
                session, "svc", names, now, timedelta(seconds=30), policy.max_error_rate
            )
            best = min(best, time.perf_counter() - started)
    engine.dispose()
    return best * 1000


def run(repeat: int = 7, store: bool = False) -> dict[str, Any]:
    """Time each size, print a markdown table, return the figures.

    ``{"regions": 100, "target_ms_at_10k": 20.0, "target_ms_at_100k_aggregated": 50.0,
    "results": [{nodes, best_ms, us_per_node, aggregated_ms}], "store_ms_at_100k"?}``
    """
    results = []
    for size in SIZES:
        ms, agg_ms = _best_ms(size, repeat if size < 100_000 else max(2, repeat // 3))
        results.append(
            {
                "nodes": size,
                "best_ms": round(ms, 2),
                "us_per_node": round(ms * 1000 / size, 2),
                "aggregated_ms": round(agg_ms, 2),
            }
        )
    lines = [
        f"GTM weights, {REGIONS} regions, all nodes ready (best of {repeat})",
        "",
        "| nodes | per node (ms) | µs / node | from aggregates (ms) |",
        "| ---: | ---: | ---: | ---: |",
        *(
            f"| {r['nodes']:,} | {r['best_ms']} | {r['us_per_node']} | {r['aggregated_ms']} |"
            for r in results
        ),
    ]
    out: dict[str, Any] = {
        "regions": REGIONS,
        "target_ms_at_10k": TARGET_MS_AT_10K,
        "target_ms_at_100k_aggregated": TARGET_MS_AT_100K_AGGREGATED,
        "results": results,
    }
    if store:
        out["store_ms_at_100k"] = round(store_ms(), 1)
        lines += ["", f"gtm_aggregates on SQLite, 100,000 nodes: {out['store_ms_at_100k']} ms"]
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    run(store="--store" in sys.argv)
