"""The store's per-region aggregates give the GTM exactly the weights the per-node path does.

``gtm_aggregates`` (GROUP BY in SQLite and PostgreSQL) + ``compute_weights_from_aggregates``
against ``to_snapshot`` of every row + ``compute_weights_and_unready``: the same regions,
factors, reasons, records (in order) and unready addresses, over a random mix of every
way a node can fail to be ready.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from xplane.config.models import GtmPolicy, Region
from xplane.gtm.smoothing import RttSmoother
from xplane.gtm.weights import (
    RegionAggregate,
    compute_weights_and_unready,
    compute_weights_from_aggregates,
)
from xplane.store import console_queries as q
from xplane.store import nodes as node_store
from xplane.store.db import make_sessionmaker, transaction, utcnow
from xplane.store.node_tables import NodeRow

TIMEOUT = timedelta(seconds=30)
SERVICE = "svc"
POLICY = GtmPolicy.model_validate(
    {
        "service": SERVICE,
        "domain": "api.svc.plus",
        "max_error_rate": 0.2,
        "latency": {"target_ms": 60, "floor": 0.2},
        "regions": [
            {"name": f"r{i}", "weight": 100 - 10 * i, "min_ready_nodes": 2, "fallback": i == 0}
            for i in range(6)
        ],
    }
)
REGIONS = {"r5": Region(name="r5", retired=True)}


def _row(i: int, rnd: random.Random, now: datetime, **over: Any) -> dict[str, Any]:
    region = f"r{rnd.randrange(7)}"  # r6: a region the policy does not name
    row: dict[str, Any] = {
        "id": f"n{rnd.randrange(10**6):06d}-{i}",
        "service": SERVICE if rnd.random() > 0.05 else "other",
        "region": region,
        # Some addresses are shared: one ready node behind it keeps it out of unready.
        "address": f"10.0.{i % 40}.{rnd.randrange(1, 4)}",
        "port": 8080,
        "labels": {},
        "token_hash": hashlib.sha256(f"{i}".encode()).hexdigest(),
        "registered_at": now - timedelta(hours=1),
        "state": rnd.choice(["active"] * 8 + ["warm", "drain", "delete", "idle"]),
        "drain_requested": rnd.random() < 0.05,
        "last_heartbeat_at": rnd.choice(
            [now - timedelta(seconds=rnd.uniform(0, 25))] * 6 + [now - timedelta(seconds=45), None]
        ),
        "reported_status": rnd.choice(["up"] * 12 + ["drain", None]),
        "rtt_ms": rnd.choice([round(rnd.uniform(5, 200), 3), rnd.uniform(5, 200), None]),
        "error_rate": rnd.choice([rnd.uniform(0, 0.1)] * 5 + [0.2, 0.5, None]),
        "probes_ok": rnd.choice([3, 3, 3, 0, None]),
        "probes_total": rnd.choice([3, 3, 3, 0, None]),
        "health_check_ok": rnd.choice([None, True, True, False]),
    }
    row.update(over)
    return row


def _both_ways(
    engine: Engine, rows: list[dict[str, Any]], now: datetime, pools: dict[str, int]
) -> None:
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        if rows:
            session.execute(insert(NodeRow), rows)
    with factory() as session:
        snapshots = [
            node_store.to_snapshot(r, now, TIMEOUT)
            for r in node_store.list_nodes(session, service=SERVICE)
        ]
        names = [r.name for r in POLICY.regions]
        aggregates, unready = q.gtm_aggregates(
            session, SERVICE, names, now, TIMEOUT, POLICY.max_error_rate
        )
    per_node, per_node_unready = compute_weights_and_unready(
        POLICY, REGIONS, snapshots, pools, TIMEOUT.total_seconds()
    )
    assert unready == per_node_unready
    aggregated = compute_weights_from_aggregates(POLICY, REGIONS, aggregates, pools)
    if per_node.fail_open:
        assert aggregated is None  # the caller takes the per-node path
        return
    assert aggregated is not None
    assert aggregated.model_dump() == per_node.model_dump()
    # With the loop's RTT smoothing as well (it sees the same medians).
    at = now
    smoothed = compute_weights_from_aggregates(
        POLICY, REGIONS, aggregates, pools, smooth_rtt=RttSmoother({}, at)
    )
    direct, _ = compute_weights_and_unready(
        POLICY, REGIONS, snapshots, pools, 30.0, smooth_rtt=RttSmoother({}, at)
    )
    assert smoothed is not None and smoothed.model_dump() == direct.model_dump()


@pytest.mark.parametrize("seed", [1, 2])
def test_aggregates_equal_the_per_node_path(engine: Engine, seed: int) -> None:
    rnd = random.Random(seed)
    now = utcnow()
    rows = [_row(i, rnd, now) for i in range(600)]
    pools = {"r0": 30, "r1": 0, "r3": 200}  # r2, r4: no pool (desired = registered)
    _both_ways(engine, rows, now, pools)


def test_aggregates_in_fail_open_defer_to_the_per_node_path(engine: Engine) -> None:
    rnd = random.Random(3)
    now = utcnow()
    rows = [_row(i, rnd, now, health_check_ok=False) for i in range(40)]
    _both_ways(engine, rows, now, {})


def test_a_region_without_nodes_weighs_as_empty() -> None:
    weights = compute_weights_from_aggregates(
        POLICY,
        REGIONS,
        {
            "r0": RegionAggregate(
                registered=2, alive=2, ready=2, ready_ids=["a", "b"], ready_addresses=["x", "y"]
            )
        },
        {},
    )
    assert weights is not None
    assert weights.regions["r1"].reason == "no nodes registered"
    assert [(r.address, r.weight) for r in weights.records] == [("x", 50.0), ("y", 50.0)]
