"""WorldStateWorkflow in the time-skipping server: transitions become signals, heartbeats don't."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import activities.nodes
from activities.nodes import NodeActivities
from tests.support.recorder import AnyWorkflowRecorder, RecorderWorkflow
from tests.support.temporal import pydantic_client
from workflows.control_loop import LoopSettings
from workflows.world_state import WorldStateParams, WorldStateWorkflow
from xplane.heartbeat import HeartbeatSettings
from xplane.store import nodes as node_store
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction
from xplane.store.events import list_events
from xplane.store.heartbeats import Heartbeat, apply_heartbeats
from xplane.store.registration import Registration, register_node

TIMEOUT = 15.0  # heartbeat timeout
SCAN = 2.0  # scan interval
# A new node's signal; the transition id ends with the scan's time.
NEW_UP = (
    "heartbeat_state_changed:{'status': 'up', 'reason': 'status new -> up', 'transition': 'new->up@"
)


def _beat(sessions: sessionmaker[Session], node_id: str, at: datetime) -> None:
    beat = Heartbeat(
        node_id=node_id, token_hash=node_id, at=at, cpu=0.1, rtt_ms=5.0, error_rate=0.0,
        qps=None, probes_ok=0, probes_total=0, reported_status="up",
    )  # fmt: skip
    with transaction(sessions) as session:
        assert apply_heartbeats(session, [beat], timedelta(seconds=TIMEOUT))[0]


async def _signals(client: Client, workflow_id: str) -> list[str]:
    try:
        return await client.get_workflow_handle(workflow_id).query(RecorderWorkflow.signals)
    except Exception:
        return []


async def test_down_once_then_up_and_silence_while_nothing_changes(
    time_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    import xplane.store.tables  # noqa: F401

    engine = make_engine(f"sqlite:///{tmp_path}/ws.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    node = f"jp-{uuid.uuid4().hex[:6]}"
    start = await time_env.get_current_time()
    with transaction(sessions) as session:
        register_node(
            session,
            Registration(
                node_id=node, service="svc", region="jp", address="127.0.30.1", token_hash=node
            ),
            start,
            timedelta(seconds=TIMEOUT),
        )
    _beat(sessions, node, start)

    client = pydantic_client(time_env)
    queue = f"world-state-{uuid.uuid4().hex[:6]}"
    # The timeout is the worker's heartbeat setting, not a workflow parameter.
    heartbeat = HeartbeatSettings(timeout=timedelta(seconds=TIMEOUT))
    acts = NodeActivities(sessions, client, queue, heartbeat)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[WorldStateWorkflow, AnyWorkflowRecorder],
        activities=[acts.scan_node_transitions],
        activity_executor=ThreadPoolExecutor(4),
    ):
        handle = await client.start_workflow(
            WorldStateWorkflow.run,
            WorldStateParams(settings=LoopSettings(interval_seconds=SCAN)),
            id=f"world-state-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
        )
        await time_env.sleep(1)
        # A new node is one transition (new -> up).
        signals = await _signals(client, f"node-{node}")
        assert len(signals) == 1 and signals[0].startswith(NEW_UP), signals
        assert len(await _signals(client, "gtm-svc")) == 1

        # Heartbeats keep coming: many scans, no signal.
        for _ in range(5):
            await time_env.sleep(SCAN)
            _beat(sessions, node, await time_env.get_current_time())
        assert len(await _signals(client, f"node-{node}")) == 1
        last_beat = await time_env.get_current_time()

        # They stop: down within the timeout plus one scan interval, reported once.
        await time_env.sleep(TIMEOUT - SCAN)
        assert len(await _signals(client, f"node-{node}")) == 1
        await time_env.sleep(2 * SCAN + 0.5)
        signals = await _signals(client, f"node-{node}")
        assert len(signals) == 2 and "'status': 'down'" in signals[1]
        with sessions() as session:
            down = [e for e in list_events(session, node_id=node) if e.kind == "node.status.down"]
        assert len(down) == 1
        assert (down[0].at - last_beat).total_seconds() <= TIMEOUT + SCAN + 0.5
        await time_env.sleep(10 * SCAN)
        assert len(await _signals(client, f"node-{node}")) == 2

        # Heartbeats resume: reported up again, once.
        _beat(sessions, node, await time_env.get_current_time())
        await time_env.sleep(SCAN + 0.5)
        signals = await _signals(client, f"node-{node}")
        assert len(signals) == 3 and "'status': 'up'" in signals[2]
        assert len(await _signals(client, "gtm-svc")) == 3
        status = await handle.query(WorldStateWorkflow.status)
        assert status.details["transitions_total"] == 3
        assert status.details["heartbeat_timeout_seconds"] == TIMEOUT
        await handle.terminate()
    engine.dispose()


async def test_a_scan_retried_after_a_partial_run_sends_and_records_each_transition_once(
    time_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six new nodes; the first attempt's signal to the last one fails after the others
    went out (concurrently). The retry (same scan) delivers only that one: one signal and
    one event per node, and the loop counts six transitions, not eleven or one."""
    import xplane.store.tables  # noqa: F401

    engine = make_engine(f"sqlite:///{tmp_path}/ws.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    tag = uuid.uuid4().hex[:6]
    nodes = [f"jp-{tag}-{i}" for i in range(6)]
    service = f"svc-{tag}"  # its own gtm-<service> recorder
    start = await time_env.get_current_time()
    with transaction(sessions) as session:
        for i, node in enumerate(nodes):
            registration = Registration(
                node_id=node, service=service, region="jp", address=f"127.0.31.{i}", token_hash=node
            )
            register_node(session, registration, start, timedelta(seconds=TIMEOUT))
    for node in nodes:
        _beat(sessions, node, start)

    failed: list[str] = []
    real_signal = activities.nodes.signal_with_start

    in_flight = [0, 0]  # now, most at once

    async def flaky_signal(client: Client, **kwargs: Any) -> None:
        """The last node's signal fails once, after the others were sent (a partial run)."""
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        try:
            if kwargs["workflow_id"] == f"node-{nodes[-1]}" and not failed:
                await asyncio.sleep(0.2)  # the other signals are out by then
                failed.append(kwargs["workflow_id"])
                raise RuntimeError("temporal unreachable")
            await real_signal(client, **kwargs)
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(activities.nodes, "signal_with_start", flaky_signal)
    client = pydantic_client(time_env)
    queue = f"world-state-{tag}"
    acts = NodeActivities(sessions, client, queue, HeartbeatSettings(timeout=timedelta(seconds=30)))
    async with Worker(
        client,
        task_queue=queue,
        workflows=[WorldStateWorkflow, AnyWorkflowRecorder],
        activities=[acts.scan_node_transitions],
        activity_executor=ThreadPoolExecutor(4),
    ):
        handle = await client.start_workflow(
            WorldStateWorkflow.run,
            WorldStateParams(settings=LoopSettings(interval_seconds=60)),
            id=f"world-state-{tag}",
            task_queue=queue,
        )
        await time_env.sleep(5)  # the failed attempt, its retry, no second tick
        assert failed == [f"node-{nodes[-1]}"]
        assert in_flight[1] > 1  # the signals went out concurrently
        for node in nodes:
            signals = await _signals(client, f"node-{node}")
            assert len(signals) == 1 and signals[0].startswith(NEW_UP), (node, signals)
        with sessions() as session:
            events = [e.node_id or "" for e in list_events(session) if e.kind == "node.status.up"]
            recorded = {n.id: n.recorded_status for n in node_store.list_nodes(session)}
        assert sorted(events) == nodes
        assert recorded == dict.fromkeys(nodes, "up")
        status = await handle.query(WorldStateWorkflow.status)
        assert status.details["transitions_total"] == len(nodes)
        assert status.runs == 1 and status.errors == 0
        await handle.terminate()
        for owner in [f"node-{n}" for n in nodes] + [f"gtm-{service}"]:  # the recorders
            await client.get_workflow_handle(owner).terminate()
    engine.dispose()
