"""The GTM observe's aggregate path gives exactly what the per-node path through the gate does.

``observe_weights`` (activities/gtm.py) counts each region in the store with the
self-health gate's two rules in SQL (an unconfirmed silence stays up; a held region's
failing checks are not trusted) and lists only the ready nodes. The reference is what
the observe did before, per node: every row, ``to_snapshot``, ``trusted_view``,
``compute_weights_and_unready``. On the same store, in SQLite and PostgreSQL, over every
way a node can fail to be ready (drained, deleted, failed probes, failing checks, stale
heartbeats recorded up or down, error rates, slow RTT, other services, a region the
policy does not name) and every gate state: the same regions, factors, reasons, records
(address, node, share, in order), unready addresses, gate verdicts and RTT averages.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert

import activities.gtm as gtm_activities
from activities.gtm import observe_weights
from tests.test_gtm_aggregates import POLICY as MIXED_POLICY
from tests.test_gtm_aggregates import REGIONS, SERVICE, TIMEOUT, _row
from xplane.gate import (
    GateDecision,
    GateSettings,
    GateState,
    Hold,
    RegionVerdict,
    trusted_view,
)
from xplane.gtm.smoothing import RttAverage, RttSmoother
from xplane.gtm.weights import compute_weights_and_unready
from xplane.heartbeat import HeartbeatSettings
from xplane.store import gate as gate_store
from xplane.store import nodes as node_store
from xplane.store.db import make_sessionmaker, transaction, utcnow
from xplane.store.node_tables import NodeRow
from xplane.store.pools import set_pool

HB = HeartbeatSettings(interval=timedelta(seconds=10), timeout=TIMEOUT)
GATE = GateSettings()
# The aggregates test's policy, with a health threshold its random mix of nodes passes
# (about half are ready), so most regions carry weight and fail open is the exception.
POLICY = MIXED_POLICY.model_copy(
    update={
        "regions": [r.model_copy(update={"health_threshold": 0.2}) for r in MIXED_POLICY.regions]
    }
)
GATES = ["no decision", "normal", "held", "operator closed", "stale"]


def _decision(gate: str, now: datetime) -> GateDecision | None:
    if gate in ("no decision", "operator closed"):
        return None
    state = GateState(last_scan_at=now)
    at = now - timedelta(minutes=10) if gate == "stale" else now  # stale: read as held
    if gate == "held":
        state.holds[SERVICE] = Hold(reasons=["every region of svc silent at once"], since=now)
    return GateDecision(
        at=at,
        state=state,
        regions={
            f"{SERVICE}/r1": RegionVerdict(
                service=SERVICE, region="r1", verdict="rate_limited", reason="7/20 unready"
            )
        },
    )


def _seed(engine: Engine, rows: list[dict[str, Any]], gate: str, now: datetime) -> None:
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        session.execute(insert(NodeRow), rows)
        for region, count in {"r0": 30, "r1": 0, "r3": 200}.items():
            set_pool(session, SERVICE, region, count, scaled=False)
        decision = _decision(gate, now)
        if decision is not None:
            gate_store.save_decision(session, decision)
        if gate == "operator closed":
            gate_store.set_operator(session, True, "maintenance", at=now)


def _reference(engine: Engine, now: datetime, rtt: dict[str, RttAverage]) -> tuple[Any, ...]:
    """The observe's per-node path, as it was before the aggregates."""
    factory = make_sessionmaker(engine)
    with factory() as session:
        rows = node_store.list_nodes(session, service=SERVICE)
        stored = gate_store.read_gate(session)
        pools = {"r0": 30, "r1": 0, "r3": 200}
    snapshots = [node_store.to_snapshot(r, now, TIMEOUT) for r in rows]
    nodes, gate = trusted_view(snapshots, rows, stored, SERVICE, now, HB, GATE)
    smoother = RttSmoother(rtt, now)
    weights, unready = compute_weights_and_unready(
        POLICY, REGIONS, nodes, pools, TIMEOUT.total_seconds(), smooth_rtt=smoother
    )
    return weights, unready, gate, smoother.averages


def _compare(engine: Engine, now: datetime, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, bool]:
    """Both paths on the store; (the weights, whether the observe went per node)."""
    rtt = {"r0": RttAverage(rtt_ms=150.0, at=now - timedelta(seconds=10))}
    per_node: list[bool] = []
    inner = gtm_activities.trusted_view

    def spy(*args: Any, **kwargs: Any) -> Any:
        per_node.append(True)
        return inner(*args, **kwargs)

    monkeypatch.setattr(gtm_activities, "trusted_view", spy)
    got = observe_weights(make_sessionmaker(engine), POLICY, REGIONS, now, HB, GATE, rtt, now)
    want = _reference(engine, now, rtt)
    assert got[0].model_dump() == want[0].model_dump()
    assert got[1:] == want[1:]
    return got[0], bool(per_node)


def _rows(seed: int, now: datetime, **over: Any) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = [_row(i, rnd, now, **over) for i in range(600)]
    for row in rows:
        row["recorded_status"] = rnd.choice(["up", "up", "down", "drain", None])
    return rows


@pytest.mark.parametrize("gate", GATES)
def test_the_aggregate_path_equals_the_per_node_path_through_the_gate(
    engine: Engine, gate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    rows = _rows(GATES.index(gate) + 1, now)
    _seed(engine, rows, gate, now)
    weights, per_node = _compare(engine, now, monkeypatch)
    assert not weights.fail_open and not per_node  # the store counted; no node list read
    published = {r.node_id for r in weights.records}
    silent_up = {
        r["id"]
        for r in rows
        if r["service"] == SERVICE
        and r["recorded_status"] == "up"
        and r["region"] != "r6"
        and (r["last_heartbeat_at"] is None or now - r["last_heartbeat_at"] > TIMEOUT)
    }
    failing = {r["id"] for r in rows if r["health_check_ok"] is False}
    # The gate's rules took effect where they should (or the comparison proves little).
    if gate == "no decision":
        assert not published & silent_up and not published & failing
    else:
        assert published & silent_up
    if gate in ("held", "operator closed", "stale"):
        assert published & failing
    else:
        assert not published & failing
    # Some regions' RTT makes a latency factor below 1; drained nodes are not registered.
    assert any(r.latency_factor < 1 for r in weights.regions.values())


@pytest.mark.parametrize("gate", ["normal", "held"])
def test_in_panic_the_observe_goes_per_node_and_still_agrees(
    engine: Engine, gate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every check failing: every region at 0, below the panic threshold -- unless the gate
    holds, when the failing checks are not trusted and the regions keep their weights."""
    now = utcnow()
    rows = _rows(7, now, health_check_ok=False)
    _seed(engine, rows, gate, now)
    weights, per_node = _compare(engine, now, monkeypatch)
    if gate == "normal":
        assert weights.fail_open and weights.panic and per_node
        assert weights.records  # every registered node of the fallback regions
    else:
        assert not weights.fail_open and not per_node
