"""WorldStateWorkflow in the time-skipping server: transitions become signals, heartbeats don't."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.nodes import NodeActivities
from tests.support.recorder import AnyWorkflowRecorder, RecorderWorkflow
from tests.support.temporal import pydantic_client
from workflows.control_loop import LoopSettings
from workflows.world_state import WorldStateParams, WorldStateWorkflow
from xplane.heartbeat import HeartbeatSettings
from xplane.store import nodes as node_store
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction
from xplane.store.events import list_events

TIMEOUT = 15.0  # heartbeat timeout
SCAN = 2.0  # scan interval


def _beat(sessions: sessionmaker[Session], node_id: str, at: datetime) -> None:
    beat = node_store.Heartbeat(
        node_id=node_id, token_hash=node_id, at=at, cpu=0.1, rtt_ms=5.0, error_rate=0.0,
        qps=None, probes_ok=0, probes_total=0, reported_status="up",
    )  # fmt: skip
    with transaction(sessions) as session:
        assert node_store.apply_heartbeats(session, [beat], timedelta(seconds=TIMEOUT))[0]


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
        node_store.register_node(
            session,
            node_store.Registration(
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
        assert await _signals(client, f"node-{node}") == [
            "heartbeat_state_changed:{'status': 'up', 'reason': 'status new -> up'}"
        ]
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
