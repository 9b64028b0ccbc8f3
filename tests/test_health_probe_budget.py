"""Active checks at fleet size: only the nodes whose check can matter are probed, probes
start for at most a budget per tick, and the round resumes where it stopped."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from activities.gtm import GtmActivities, HealthCheckRequest
from tests.test_health_checks import _check, _port, _serve, _Server
from xplane.gtm.health_checks import CheckState, ProbeTarget, probe_order
from xplane.heartbeat import HeartbeatSettings
from xplane.probes.health import probe_all
from xplane.store.db import make_sessionmaker, transaction, utcnow
from xplane.store.node_tables import NodeRow


@pytest.fixture
def http_server() -> Iterator[_Server]:
    yield from _serve("127.0.0.1")


def _targets(*ids: str) -> list[ProbeTarget]:
    return [ProbeTarget(node_id=i, address="127.0.0.1") for i in ids]


def test_probe_order_puts_new_nodes_first_then_resumes_after_the_cursor() -> None:
    targets = _targets("d", "b", "a", "c", "e")
    known = {"a", "b", "c", "d"}
    order = [t.node_id for t in probe_order(iter(targets), known, after="b")]
    assert order == ["e", "c", "d", "a", "b"]
    assert [t.node_id for t in probe_order(targets, known, None)] == ["e", "a", "b", "c", "d"]
    # The cursor node itself may be gone: resume at the next id.
    assert [t.node_id for t in probe_order(targets, known, "bb")][:2] == ["e", "c"]


async def test_a_budget_stops_starting_probes_but_lets_started_ones_finish(
    http_server: _Server,
) -> None:
    check = _check(path="/slow", port=_port(http_server))  # each answer takes 0.15 s
    targets = _targets(*(f"n{i:02d}" for i in range(12)))
    results = await probe_all(targets, check, concurrency=3, budget_s=0.05)
    # The first wave started within the budget and finished; later ones never started.
    assert 1 <= len(results) < 12
    assert all(r.ok for r in results)
    assert [r.node_id for r in results] == [t.node_id for t in targets[: len(results)]]
    assert len(await probe_all(targets, check, concurrency=3)) == 12  # no budget: all


def _row(node_id: str, port: int, **over: Any) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": node_id,
        "service": "svc",
        "region": "jp",
        "address": "127.0.0.1",
        "port": port,
        "labels": {},
        "token_hash": hashlib.sha256(node_id.encode()).hexdigest(),
        "state": "active",
        "last_heartbeat_at": now,
        "reported_status": "up",
    } | over


async def test_the_activity_skips_silent_and_draining_nodes_and_rotates(
    engine: Engine, http_server: _Server
) -> None:
    port = _port(http_server)
    stale = utcnow() - timedelta(minutes=5)
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        session.execute(
            insert(NodeRow),
            [
                _row("a", port),
                _row("b", port),
                _row("c", port),
                _row("silent", port, last_heartbeat_at=stale),  # out by heartbeat
                _row("leaving", port, state="drain"),
                _row("asked", port, drain_requested=True),
                _row("gone", port, state="delete"),
            ],
        )
    # A budget below one probe: exactly one probe per tick, so the order shows.
    acts = GtmActivities(factory, HeartbeatSettings(), probe_budget_s=1e-9)
    check = _check(port=port, healthy_threshold=1)
    states: dict[str, CheckState] = {"silent": CheckState(healthy=True, consecutive_ok=4)}
    probed: list[str] = []
    for _ in range(5):
        result = await acts.check_node_health(
            HealthCheckRequest(service="svc", check=check, states=states)
        )
        assert result.probed == 1 and result.skipped == 3  # silent, leaving, asked
        assert result.deferred == 2
        probed += [k for k, v in result.states.items() if v != states.get(k)]
        states = result.states
    # New nodes first (a, b, c), then in turn from the start: a, b.
    assert probed == ["a", "b", "c", "a", "b"]
    assert states["silent"] == CheckState(healthy=True, consecutive_ok=4)  # kept, unprobed
    assert "gone" not in states
