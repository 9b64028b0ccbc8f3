"""Benchmark: ``compute_service_weights`` at 1k / 10k / 100k nodes over 100 regions.

Every node is ready (the worst case: each one becomes a record). Best of N runs with
``time.perf_counter``. ``python bench/weights.py`` prints a markdown table; ``run()``
returns the figures for BENCHMARKS.md.
"""

from __future__ import annotations

import random
import time
from typing import Any

from xplane.config.models import GtmPolicy
from xplane.domain import NodeSnapshot
from xplane.gtm.weights import compute_service_weights

REGIONS = 100
SIZES = (1_000, 10_000, 100_000)
TARGET_MS_AT_10K = 20.0


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


def _best_ms(nodes: int, repeat: int) -> float:
    policy, world, pools = _world(nodes)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        compute_service_weights(policy, {}, world, pools, 30.0)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def run(repeat: int = 7) -> dict[str, Any]:
    """Time each size, print a markdown table, return the figures.

    ``{"regions": 100, "target_ms_at_10k": 20.0, "results": [{nodes, best_ms, us_per_node}]}``
    """
    results = []
    for size in SIZES:
        ms = _best_ms(size, repeat if size < 100_000 else max(2, repeat // 3))
        results.append(
            {"nodes": size, "best_ms": round(ms, 2), "us_per_node": round(ms * 1000 / size, 2)}
        )
    lines = [
        f"compute_service_weights, {REGIONS} regions, all nodes ready (best of {repeat})",
        "",
        "| nodes | best (ms) | µs / node |",
        "| ---: | ---: | ---: |",
        *(f"| {r['nodes']:,} | {r['best_ms']} | {r['us_per_node']} |" for r in results),
    ]
    print("\n".join(lines))
    return {"regions": REGIONS, "target_ms_at_10k": TARGET_MS_AT_10K, "results": results}


if __name__ == "__main__":
    run()
