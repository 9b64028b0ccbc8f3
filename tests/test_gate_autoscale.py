"""The autoscaler under the self-health gate, on a real SQLite store.

While the gate holds a region it makes no replacement commit (nor a scale-down), but
load still scales up; once the gate has decided, a silence the world-state scan has
not confirmed is no loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy.orm import Session, sessionmaker

from activities.autoscale import AutoscaleActivities, DecideRequest, DecideResult
from xplane.autoscale.desired import ScaleHistory
from xplane.config.loader import load_config_from_mapping
from xplane.domain import NodeState, NodeStatus
from xplane.gate import GateInputs, GateSettings, GateState, RegionInput, decide_gate
from xplane.heartbeat import HeartbeatSettings
from xplane.store import gate as gate_store
from xplane.store import nodes as node_store
from xplane.store.config_store import save_revision
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction
from xplane.store.heartbeats import Heartbeat, apply_heartbeats
from xplane.store.pools import set_pool
from xplane.store.registration import Registration, register_node

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HB = HeartbeatSettings(interval=timedelta(seconds=10))  # timeout 30 s
POLICY = {
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
    *,
    beat_age: float,
    seen: NodeStatus,
    state: NodeState = NodeState.ACTIVE,
    cpu: float = 0.5,
) -> None:
    with transaction(sessions) as session:
        register_node(
            session,
            Registration(
                node_id=node_id, service="svc", region="jp", address=f"10.0.0.{node_id[-1]}",
                token_hash=node_id,
            ),
            NOW - timedelta(minutes=5),
            HB.timeout,
        )  # fmt: skip
        node_store.set_lifecycle_state(session, node_id, state, "test", NOW)
        node_store.record_status(session, node_id, seen, NOW)
        for age in (beat_age + 20, beat_age):  # two samples in the CPU window
            beat = Heartbeat(
                node_id=node_id, token_hash=node_id, at=NOW - timedelta(seconds=age), cpu=cpu,
                rtt_ms=10.0, error_rate=0.0, qps=None, probes_ok=0, probes_total=0,
                reported_status="up",
            )  # fmt: skip
            apply_heartbeats(session, [beat], HB.timeout)


def _gate(sessions: sessionmaker[Session], unready: int) -> None:
    """Store the decision a world-state scan makes for jp with ``unready`` of 2 nodes down
    and another region fully healthy."""
    regions = [
        RegionInput(service="svc", region="jp", nodes=2, unready=unready, beating=2),
        RegionInput(service="svc", region="us", nodes=4, unready=0, beating=4),
    ]
    decision = decide_gate(GateInputs(regions=regions), GateState(), NOW, HB, GateSettings())
    with transaction(sessions) as session:
        gate_store.save_decision(session, decision)


def _decide(
    sessions: sessionmaker[Session], tmp_path: Path, history: ScaleHistory | None = None
) -> DecideResult:
    acts = AutoscaleActivities(sessions, None, tmp_path / "work", heartbeat=HB, gate=GateSettings())
    request = DecideRequest(service="svc", region="jp", now=NOW)
    if history is not None:
        request.history = history
    return acts.decide_autoscale(request)


def _close(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        gate_store.set_operator(session, True, "network change", by="test", at=NOW)


def test_no_replacement_while_the_gate_holds(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    _node(sessions, "jp-0", beat_age=1, seen=NodeStatus.UP)
    # Given up by its lifecycle (the only kind of lost node the autoscaler replaces).
    _node(sessions, "jp-1", beat_age=100, seen=NodeStatus.DOWN, state=NodeState.DELETE)
    replaced = _decide(sessions, tmp_path).decision
    assert replaced is not None and replaced.desired == 3  # the gate open: replaced
    _close(sessions)
    result = _decide(sessions, tmp_path)
    assert result.decision is not None
    assert result.decision.desired == 2, result.decision.reason
    assert result.gate == "held: closed by operator: network change"


def test_load_still_scales_up_while_the_gate_holds(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    _close(sessions)
    _node(sessions, "jp-0", beat_age=1, seen=NodeStatus.UP, cpu=0.95)
    _node(sessions, "jp-1", beat_age=1, seen=NodeStatus.UP, cpu=0.95)
    result = _decide(sessions, tmp_path)
    assert result.decision is not None
    assert result.decision.desired == 3, result.decision.reason
    assert result.decision.direction == "up"


def test_no_scale_down_while_the_gate_holds(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with transaction(sessions) as session:
        set_pool(session, "svc", "jp", 4, at=NOW - timedelta(minutes=10))
    for i in range(4):
        _node(sessions, f"jp-{i}", beat_age=1, seen=NodeStatus.UP, cpu=0.05)
    low = ScaleHistory(low_since=NOW - timedelta(minutes=5))  # low for long enough
    cold = _decide(sessions, tmp_path, low).decision
    assert cold is not None and cold.desired < 4, cold  # the gate open: scales down
    _close(sessions)
    held = _decide(sessions, tmp_path, low).decision
    assert held is not None and held.desired == 4 and "self-health gate" in held.reason


def test_a_silence_the_scan_has_not_confirmed_is_no_loss(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    _node(sessions, "jp-0", beat_age=1, seen=NodeStatus.UP)
    _node(sessions, "jp-1", beat_age=100, seen=NodeStatus.UP)  # silent, not yet judged
    _gate(sessions, unready=1)
    result = _decide(sessions, tmp_path)
    assert result.decision is not None and result.decision.desired == 2
    assert result.lost_nodes == [] and result.gate is None
    with transaction(sessions) as session:  # the scan lets the down through
        node_store.record_status(session, "jp-1", NodeStatus.DOWN, NOW)
    result = _decide(sessions, tmp_path)  # down, but held until its lifecycle gives it up
    assert result.decision is not None and result.decision.desired == 2
    with transaction(sessions) as session:  # the lifecycle gives it up (down grace)
        node_store.set_lifecycle_state(session, "jp-1", NodeState.DELETE, "test", NOW)
    result = _decide(sessions, tmp_path)
    assert result.decision is not None and result.decision.desired == 3  # replaced
