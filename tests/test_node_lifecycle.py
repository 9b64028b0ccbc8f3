"""Node lifecycle: the workflow in the time-skipping server (the pure FSM: ``test_node_fsm.py``)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.nodes import NodeActivities
from tests.support.histories import keep
from tests.support.recorder import RecorderWorkflow
from tests.support.temporal import pydantic_client
from workflows.node_lifecycle import NodeLifecycleStatus, NodeLifecycleWorkflow
from xplane.domain import NodeState
from xplane.messages import DrainRequest, NodeLifecycleParams, NodeStatusChange, NodeTimings
from xplane.store import gate as gate_store
from xplane.store import nodes as node_store
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.events import list_events
from xplane.store.registration import Registration, register_node

# ------------------------------------------------------------------ workflow
TQ = "node-lifecycle-tests"
TIMINGS = NodeTimings(
    warmup_seconds=10, down_grace_seconds=60, dns_ttl_seconds=30, drain_timeout_seconds=20
)


@dataclass
class Harness:
    env: WorkflowEnvironment
    client: Client
    sessions: sessionmaker[Session]
    gtm: WorkflowHandle
    autoscale: WorkflowHandle
    service: str

    async def start_node(self) -> tuple[str, WorkflowHandle]:
        node_id = f"jp-{uuid.uuid4().hex[:8]}"
        with transaction(self.sessions) as session:
            register_node(
                session,
                Registration(
                    node_id=node_id,
                    service=self.service,
                    region="jp",
                    address="127.0.0.2",
                    token_hash=uuid.uuid4().hex,
                ),
                utcnow(),
                timedelta(seconds=15),
            )
        handle = await self.client.start_workflow(
            NodeLifecycleWorkflow.run,
            NodeLifecycleParams(
                node_id=node_id, service=self.service, region="jp", timings=TIMINGS
            ),
            id=f"node-{node_id}",
            task_queue=TQ,
        )
        return node_id, handle

    def stored_state(self, node_id: str) -> str:
        with self.sessions() as session:
            return node_store.get_node(session, node_id).state


async def _status(handle: WorkflowHandle) -> NodeLifecycleStatus:
    return await handle.query(NodeLifecycleWorkflow.status)


@pytest.fixture
async def harness(time_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Harness]:
    import xplane.store.tables  # noqa: F401

    engine = make_engine(f"sqlite:///{tmp_path}/nodes.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    client = pydantic_client(time_env)
    acts = NodeActivities(sessions, client, TQ)
    service = f"svc-{uuid.uuid4().hex[:6]}"
    async with Worker(
        client,
        task_queue=TQ,
        workflows=[NodeLifecycleWorkflow, RecorderWorkflow],
        activities=[acts.record_node_state, acts.gate_verdict],
        activity_executor=ThreadPoolExecutor(4),
    ):
        gtm = await client.start_workflow(RecorderWorkflow.run, id=f"gtm-{service}", task_queue=TQ)
        autoscale = await client.start_workflow(
            RecorderWorkflow.run, id=f"autoscale-{service}-jp", task_queue=TQ
        )
        yield Harness(time_env, client, sessions, gtm, autoscale, service)
        for handle in (gtm, autoscale):
            with contextlib.suppress(RPCError):  # already over is fine
                await handle.terminate()
    engine.dispose()


async def test_up_warm_active_down_recover_within_grace(harness: Harness) -> None:
    node_id, handle = await harness.start_node()
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, NodeStatusChange(status="up"))
    await harness.env.sleep(2)
    assert (await _status(handle)).state is NodeState.WARM
    assert harness.stored_state(node_id) == "warm"
    await harness.env.sleep(10)
    assert (await _status(handle)).state is NodeState.ACTIVE
    assert harness.stored_state(node_id) == "active"
    assert await harness.gtm.query(RecorderWorkflow.signals) == [
        f"world_changed:node {node_id} active"
    ]

    # Down: out of service at once, GTM told.
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, NodeStatusChange(status="down"))
    await harness.env.sleep(1)
    status = await _status(handle)
    assert status.state is NodeState.IDLE and status.down_since is not None
    assert harness.stored_state(node_id) == "idle"
    assert (await harness.gtm.query(RecorderWorkflow.signals))[
        -1
    ] == f"world_changed:node {node_id} idle"

    # Back within the grace period: through warm to active again; nothing lost.
    await harness.env.sleep(30)
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, NodeStatusChange(status="up"))
    await harness.env.sleep(1)
    assert (await _status(handle)).state is NodeState.WARM
    await harness.env.sleep(120)  # past where the grace period would have ended
    status = await _status(handle)
    assert status.state is NodeState.ACTIVE and status.down_since is None
    assert await harness.autoscale.query(RecorderWorkflow.signals) == []
    with harness.sessions() as session:
        kinds = [e.kind for e in reversed(list_events(session, node_id=node_id))]
    assert kinds == ["node.warm", "node.active", "node.idle", "node.warm", "node.active"]
    await keep(handle, "node_lifecycle_down_and_recover")


async def test_down_past_grace_is_deleted_and_node_lost_sent_once(harness: Harness) -> None:
    node_id, handle = await harness.start_node()
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, NodeStatusChange(status="up"))
    await harness.env.sleep(12)
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, NodeStatusChange(status="down"))
    await harness.env.sleep(59)
    assert (await _status(handle)).state is NodeState.IDLE
    await harness.env.sleep(2)
    result = await handle.result()
    assert result.state is NodeState.DELETE
    assert "grace period" in result.reason
    assert harness.stored_state(node_id) == "delete"
    with harness.sessions() as session:  # given up: its token no longer works
        assert node_store.get_node(session, node_id).token_hash.startswith("revoked-")
    assert await harness.autoscale.query(RecorderWorkflow.signals) == [f"node_lost:{node_id}"]
    await keep(handle, "node_lifecycle_lost")


async def test_give_up_waits_while_the_self_health_gate_holds(harness: Harness) -> None:
    """Down past the grace while the gate is closed: not deleted, token kept, no node_lost;
    given up within a quarter of the grace once the gate opens."""
    node_id, handle = await harness.start_node()
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, NodeStatusChange(status="up"))
    await harness.env.sleep(12)
    with transaction(harness.sessions) as session:
        gate_store.set_operator(session, True, "network change", by="test")
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, NodeStatusChange(status="down"))
    await harness.env.sleep(150)
    status = await _status(handle)
    assert status.state is NodeState.IDLE
    assert status.held_by_gate == "closed by operator: network change"
    assert harness.stored_state(node_id) == "idle"
    with harness.sessions() as session:
        assert not node_store.get_node(session, node_id).token_hash.startswith("revoked-")
    assert await harness.autoscale.query(RecorderWorkflow.signals) == []

    with transaction(harness.sessions) as session:
        gate_store.set_operator(session, False, "done", by="test")
    await harness.env.sleep(16)  # the give-up is asked again every grace / 4
    result = await handle.result()
    assert result.state is NodeState.DELETE and result.held_by_gate is None
    assert await harness.autoscale.query(RecorderWorkflow.signals) == [f"node_lost:{node_id}"]
    await keep(handle, "node_lifecycle_gate_held")


async def test_drain_waits_ttl_plus_timeout_then_deletes(harness: Harness) -> None:
    node_id, handle = await harness.start_node()
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, NodeStatusChange(status="up"))
    await harness.env.sleep(12)
    await handle.signal(
        NodeLifecycleWorkflow.drain, DrainRequest(by="autoscaler", reason="scale down")
    )
    await harness.env.sleep(1)
    assert (await _status(handle)).state is NodeState.DRAIN
    with harness.sessions() as session:
        row = node_store.get_node(session, node_id)
        assert row.state == "drain" and row.drain_requested  # the agent is told to drain
    await harness.env.sleep(30 + 20 - 3)  # TTL + drain timeout not yet over
    assert (await _status(handle)).state is NodeState.DRAIN
    await harness.env.sleep(4)
    assert (await handle.result()).state is NodeState.DELETE
    assert await harness.autoscale.query(RecorderWorkflow.signals) == []
    await keep(handle, "node_lifecycle_drain")


async def test_illegal_events_are_refused_not_fatal(harness: Harness) -> None:
    _node_id, handle = await harness.start_node()
    # idle and never down: "down" is not a transition; drain twice: the second is refused.
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, NodeStatusChange(status="down"))
    await handle.signal(NodeLifecycleWorkflow.drain, DrainRequest())
    await handle.signal(NodeLifecycleWorkflow.drain, DrainRequest())
    await harness.env.sleep(1)
    status = await _status(handle)
    assert status.state is NodeState.DRAIN
    assert len(status.refused) == 2
    assert "'down' is not allowed in state 'idle'" in status.refused[0]
    assert "'drain' is not allowed in state 'drain'" in status.refused[1]
    await handle.signal(NodeLifecycleWorkflow.deregistered, "operator removed it")
    assert (await handle.result()).state is NodeState.DELETE
    await keep(handle, "node_lifecycle_refused")


async def test_a_transition_resent_by_a_retried_scan_is_applied_once(harness: Harness) -> None:
    """The world-state scan delivered "down", died before recording it, and its retry
    sent the same transition again: the lifecycle ignores the copy (nothing refused,
    one idle transition); another transition with the same status still counts."""
    node_id, handle = await harness.start_node()
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, NodeStatusChange(status="up"))
    await harness.env.sleep(12)
    assert (await _status(handle)).state is NodeState.ACTIVE
    down = NodeStatusChange(status="down", transition="up->down@2026-01-01T00:00:00+00:00")
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, down)
    await harness.env.sleep(1)
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, down)  # the retry
    await harness.env.sleep(1)
    status = await _status(handle)
    assert status.state is NodeState.IDLE and status.refused == []
    with harness.sessions() as session:
        kinds = [e.kind for e in reversed(list_events(session, node_id=node_id))]
    assert kinds == ["node.warm", "node.active", "node.idle"]
    again = down.model_copy(update={"transition": "up->down@2026-01-01T00:05:00+00:00"})
    await handle.signal(NodeLifecycleWorkflow.node_status_changed, again)
    await harness.env.sleep(1)
    assert len((await _status(handle)).refused) == 1  # a new transition is not deduplicated
    await handle.terminate()
