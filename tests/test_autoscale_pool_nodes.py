"""Which nodes the autoscaler replaces and which it drains, on a real SQLite store.

A node still warming up is on its way and must not be replaced; a node the
world-state loop saw go down is held until its lifecycle gives it up (deleted,
after the down grace) and only then replaced, at most ``max_replace`` per
decision; a pool whose every node was deleted is
refilled once it has had time to come up, even without a ``node_lost`` signal.
A scale-down drains the nodes Terraform's ``count`` will destroy: the highest indexes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.orm import Session, sessionmaker

from activities.autoscale import (
    AutoscaleActivities,
    DecideRequest,
    DecideResult,
    DrainRequestIn,
)
from xplane.config.loader import load_config_from_mapping
from xplane.domain import NodeState, NodeStatus
from xplane.store import nodes as node_store
from xplane.store.config_store import save_revision
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction
from xplane.store.events import list_events
from xplane.store.heartbeats import Heartbeat, apply_heartbeats
from xplane.store.pools import NodePoolRow, set_pool
from xplane.store.registration import Registration, register_node

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY: dict[str, Any] = {
    "service": "svc",
    "global": {"cpu_window": "60s"},
    "regions": {"jp": {"min_nodes": 2, "max_nodes": 5, "scale_up_cpu": 0.7, "scale_down_cpu": 0.3}},
    "cooldown": {"scale_up": "60s", "scale_down": "300s"},
    "node_ready_timeout": "120s",
}
CONFIG = {
    "regions/jp.yaml": yaml.safe_dump({"provider": "aws", "location": "ap-northeast-1"}),
    "autoscale/svc.yaml": yaml.safe_dump(POLICY),
}


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    import xplane.store.tables  # noqa: F401

    engine = make_engine(f"sqlite:///{tmp_path}/as.db")
    Base.metadata.create_all(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        save_revision(session, "c" * 40, load_config_from_mapping(CONFIG), "test")
        set_pool(session, "svc", "jp", 2, at=NOW - timedelta(minutes=10))
    yield factory
    engine.dispose()


def _node(
    sessions: sessionmaker[Session],
    node_id: str,
    state: NodeState,
    *,
    beat_age: float | None = 1.0,
    seen: NodeStatus | None = None,
) -> None:
    """A node in ``state`` whose last heartbeat is ``beat_age`` s old (None: never)."""
    with transaction(sessions) as session:
        register_node(
            session,
            Registration(
                node_id=node_id, service="svc", region="jp", address=f"10.0.0.{len(node_id)}",
                token_hash=node_id,
            ),
            NOW - timedelta(seconds=5),
            timedelta(seconds=30),
        )  # fmt: skip
        node_store.set_lifecycle_state(session, node_id, state, "test", NOW)
        if seen is not None:
            node_store.record_status(session, node_id, seen, NOW)
    if beat_age is not None:
        beat = Heartbeat(
            node_id=node_id, token_hash=node_id, at=NOW - timedelta(seconds=beat_age), cpu=0.5,
            rtt_ms=10.0, error_rate=0.0, qps=None, probes_ok=0, probes_total=0,
            reported_status="up",
        )  # fmt: skip
        with transaction(sessions) as session:
            apply_heartbeats(session, [beat], timedelta(seconds=30))


def _decide(sessions: sessionmaker[Session], tmp_path: Path, lost: int = 0) -> DecideResult:
    acts = AutoscaleActivities(sessions, None, tmp_path / "work")
    return acts.decide_autoscale(
        DecideRequest(service="svc", region="jp", lost_nodes=lost, now=NOW)
    )


def test_a_warming_node_is_not_replaced(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    _node(sessions, "jp-0", NodeState.ACTIVE)
    _node(sessions, "jp-1", NodeState.WARM)
    result = _decide(sessions, tmp_path)
    assert result.decision is not None
    assert result.decision.desired == 2, result.decision.reason
    assert result.ready_nodes == 1 and result.lost_nodes == []


def test_a_just_registered_node_is_not_replaced(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    _node(sessions, "jp-0", NodeState.ACTIVE)
    _node(sessions, "jp-1", NodeState.IDLE, beat_age=None)  # no heartbeat yet, seconds old
    result = _decide(sessions, tmp_path)
    assert result.decision is not None and result.decision.desired == 2


def test_a_node_seen_down_is_held_until_its_lifecycle_gives_it_up(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    _node(sessions, "jp-0", NodeState.ACTIVE)
    # Seen down by the world-state loop, but inside its down grace: not replaced yet.
    _node(sessions, "jp-1", NodeState.IDLE, beat_age=8.0, seen=NodeStatus.DOWN)
    result = _decide(sessions, tmp_path)
    assert result.decision is not None
    assert result.decision.desired == 2, result.decision.reason
    assert result.held_nodes == ["jp-1"] and result.lost_nodes == []


def test_a_silent_node_not_yet_marked_down_is_not_replaced(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    _node(sessions, "jp-0", NodeState.ACTIVE)
    _node(sessions, "jp-1", NodeState.ACTIVE, beat_age=200.0)  # silent, still active
    result = _decide(sessions, tmp_path, lost=1)
    assert result.decision is not None
    assert result.decision.desired == 2, result.decision.reason
    assert result.ready_nodes == 1 and result.held_nodes == ["jp-1"]


def test_a_node_given_up_is_replaced(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    _node(sessions, "jp-0", NodeState.ACTIVE)
    _node(sessions, "jp-1", NodeState.DELETE, beat_age=200.0)  # down past the grace
    result = _decide(sessions, tmp_path, lost=1)
    assert result.decision is not None
    assert result.decision.desired == 3
    assert result.decision.reason == "1 healthy < min_nodes 2: replace 1"


def test_a_pool_whose_nodes_were_all_deleted_is_refilled_without_a_signal(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    for node in ("jp-0", "jp-1"):
        _node(sessions, node, NodeState.DELETE, beat_age=200.0)
    result = _decide(sessions, tmp_path)  # no node_lost signal pending
    assert result.decision is not None
    # current 2 + 1 of the 2 missing: max_replace (1 node or 25 %) per decision.
    assert result.decision.desired == 3, result.decision.reason


def test_max_replace_from_the_policy_bounds_one_decision(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    policy = {**POLICY, "max_replace": 2}
    jp = {**POLICY["regions"]["jp"], "min_nodes": 4, "max_nodes": 8}
    policy["regions"] = {"jp": jp}
    config = {**CONFIG, "autoscale/svc.yaml": yaml.safe_dump(policy)}
    with transaction(sessions) as session:
        save_revision(session, "d" * 40, load_config_from_mapping(config), "test")
        set_pool(session, "svc", "jp", 4, at=NOW - timedelta(minutes=10))
    for node in ("jp-0", "jp-1", "jp-2", "jp-3"):
        _node(sessions, node, NodeState.DELETE, beat_age=200.0)
    result = _decide(sessions, tmp_path)
    assert result.decision is not None
    assert result.decision.desired == 6, result.decision.reason  # 4 + 2 of the 4 missing


def test_a_fresh_pool_waits_for_its_nodes(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with transaction(sessions) as session:
        row = session.get(NodePoolRow, ("svc", "jp"))
        assert row is not None
        row.updated_at = NOW - timedelta(seconds=30)  # applied 30 s ago < node_ready_timeout
    result = _decide(sessions, tmp_path)
    assert result.decision is not None
    assert result.decision.desired == 2, result.decision.reason  # nodes not due yet


def test_a_scale_down_drains_the_nodes_terraform_destroys(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    for node in ("jp-0", "jp-1", "jp-2", "jp-10"):
        _node(sessions, node, NodeState.ACTIVE)
    _node(sessions, "jp-3", NodeState.DELETE, beat_age=200.0)  # already gone
    _node(sessions, "jp-east-4", NodeState.ACTIVE)  # another pool's name: not this pool's
    _node(sessions, "jp-1x", NodeState.ACTIVE)  # not a pool index
    # Which nodes: tests/test_autoscale_scale_down.py (pure); here, draining them.
    acts = AutoscaleActivities(sessions, None, tmp_path / "work")
    request = DrainRequestIn(service="svc", region="jp", keep=2, reason="cpu low")
    assert acts.drain_nodes(request) == ["jp-10", "jp-2"]
    assert acts.drain_nodes(request) == ["jp-10", "jp-2"]  # a retried activity
    with sessions() as session:
        drained = {n.id: n.drain_requested_by for n in node_store.list_nodes(session)
                   if n.drain_requested}  # fmt: skip
        asked = [e for e in list_events(session, kind_prefix="node.drain_requested")]
    assert drained == {"jp-10": "autoscaler", "jp-2": "autoscaler"}
    assert len(asked) == 2  # once per node, not per attempt
    assert acts.nodes_not_yet_drained(["jp-10", "jp-2", "jp-3", "nope"]) == ["jp-10", "jp-2"]
