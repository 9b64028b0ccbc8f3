"""Operators' actions as Workflow Updates, in the time-skipping server: each validator
refuses what it should (the caller reads why; nothing reaches history) and accepts the
rest, and each handler answers what it did."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.gitops import SyncRequest
from activities.nodes import NodeActivities
from activities.regions import (
    RegionCommit,
    RegionCommitRequest,
    RegionEvent,
    RegionNodes,
    RegionView,
)
from tests.support.histories import keep
from tests.support.loop_workflows import CounterLoopWorkflow, CounterParams, count_reconcile
from tests.support.recorder import RecorderWorkflow
from tests.support.schedules import no_schedules
from tests.support.temporal import pydantic_client
from workflows.control_loop import LoopActionRequest, LoopActionResult, LoopSettings, loop_refusal
from workflows.gitops_sync import GitOpsSyncParams, GitOpsSyncWorkflow
from workflows.node_lifecycle import NodeLifecycleStatus, NodeLifecycleWorkflow
from workflows.region_lifecycle import (
    RegionActionResult,
    RegionLifecycleWorkflow,
    RegionParams,
    RegionRetryRequest,
    RegionStatus,
    RegionTimings,
    retry_refusal,
)
from xplane.domain import NodeState
from xplane.gitops.sync import SyncResult, SyncStatus
from xplane.lifecycle.node_fsm import NodeEvent, operator_refusal
from xplane.messages import (
    NodeActionRequest,
    NodeActionResult,
    NodeLifecycleParams,
    NodeStateRecord,
    NodeStatusChange,
    NodeTimings,
)
from xplane.store import nodes as node_store
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.events import list_events
from xplane.store.registration import Registration, register_node

TQ = "operator-update-tests"
TIMINGS = NodeTimings(
    warmup_seconds=10, down_grace_seconds=60, dns_ttl_seconds=30, drain_timeout_seconds=20
)


def refusal_of(exc: WorkflowUpdateFailedError) -> str:
    """The validator's (or handler's) message as the caller receives it."""
    cause = exc.cause
    assert isinstance(cause, ApplicationError), cause
    return cause.message


async def update_events(handle: WorkflowHandle[Any, Any]) -> list[int]:
    """The update events in the history (a rejected update leaves none)."""
    kinds = (
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
    )
    return [e.event_type async for e in handle.fetch_history_events() if e.event_type in kinds]


# --------------------------------------------------------------- pure rules
def test_operator_refusals_of_a_node() -> None:
    assert operator_refusal("jp-7", NodeState.DELETE, NodeEvent.DRAIN) == (
        "node jp-7 is already deleted"
    )
    assert operator_refusal("jp-7", NodeState.DELETE, NodeEvent.UNDRAIN) == (
        "node jp-7 is already deleted"
    )
    assert operator_refusal("jp-7", NodeState.DRAIN, NodeEvent.DRAIN) == (
        "node jp-7 is already draining"
    )
    assert operator_refusal("jp-7", NodeState.ACTIVE, NodeEvent.UNDRAIN) == (
        "node jp-7 is not draining (state active)"
    )
    for state in (NodeState.IDLE, NodeState.WARM, NodeState.ACTIVE):
        assert operator_refusal("jp-7", state, NodeEvent.DRAIN) is None
    assert operator_refusal("jp-7", NodeState.DRAIN, NodeEvent.UNDRAIN) is None


def test_loop_and_region_refusals() -> None:
    assert loop_refusal("gtm-svc-plus", "resume", False, None) == "loop gtm-svc-plus is not paused"
    assert loop_refusal("gtm-svc-plus", "pause", True, "dns change") == (
        "loop gtm-svc-plus is already paused (dns change)"
    )
    assert loop_refusal("gitops-sync", "sync", True, "freeze") == (
        "loop gitops-sync is paused (freeze); resume it first"
    )
    assert loop_refusal("gtm-a", "pause", False, None) is None
    assert loop_refusal("gtm-a", "resume", True, "x") is None
    assert retry_refusal("jp", "serving", "svc", None) == (
        "region jp has not failed (phase serving): nothing to retry"
    )
    assert retry_refusal("jp", "failed", "svc", "other") == "region jp serves svc, not other"
    assert retry_refusal("jp", "failed", "svc", "svc") is None
    assert retry_refusal("jp", "failed", None, None) is None


# ------------------------------------------------------------ node lifecycle
@contextlib.asynccontextmanager
async def node_rig(
    env: WorkflowEnvironment, tmp_path: Path
) -> AsyncIterator[tuple[Client, sessionmaker[Session], str]]:
    import xplane.store.tables  # noqa: F401

    engine = make_engine(f"sqlite:///{tmp_path}/nodes.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    client = pydantic_client(env)
    acts = NodeActivities(sessions, client, TQ)
    service = f"svc-{uuid.uuid4().hex[:6]}"
    async with Worker(
        client,
        task_queue=TQ,
        workflows=[NodeLifecycleWorkflow, RecorderWorkflow],
        activities=[acts.record_node_state, acts.gate_verdict],
        activity_executor=ThreadPoolExecutor(4),
    ):
        for loop in (f"gtm-{service}", f"autoscale-{service}-jp"):
            await client.start_workflow(RecorderWorkflow.run, id=loop, task_queue=TQ)
        yield client, sessions, service
    engine.dispose()


async def start_node(
    client: Client, sessions: sessionmaker[Session], service: str
) -> tuple[str, WorkflowHandle[Any, Any]]:
    node_id = f"jp-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        register_node(
            session,
            Registration(
                node_id=node_id,
                service=service,
                region="jp",
                address="127.0.0.2",
                token_hash=uuid.uuid4().hex,
            ),
            utcnow(),
            timedelta(seconds=15),
        )
    handle = await client.start_workflow(
        NodeLifecycleWorkflow.run,
        NodeLifecycleParams(node_id=node_id, service=service, region="jp", timings=TIMINGS),
        id=f"node-{node_id}",
        task_queue=TQ,
    )
    return node_id, handle


async def test_drain_and_undrain_are_answered_and_refused_when_they_cannot_apply(
    time_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with node_rig(time_env, tmp_path) as (client, sessions, service):
        node_id, handle = await start_node(client, sessions, service)
        up = NodeStatusChange(status="up")
        await handle.signal(NodeLifecycleWorkflow.node_status_changed, up)
        await time_env.sleep(12)
        assert (await handle.query(NodeLifecycleWorkflow.status)).state is NodeState.ACTIVE

        # Undrain of a node that is not draining: refused, and the history keeps no trace.
        before = len(await update_events(handle))
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                "undrain", NodeActionRequest(reason="oops"), result_type=NodeActionResult
            )
        assert refusal_of(refused.value) == f"node {node_id} is not draining (state active)"
        with pytest.raises(WorkflowUpdateFailedError) as no_reason:
            await handle.execute_update(
                "drain", NodeActionRequest(reason="  "), result_type=NodeActionResult
            )
        assert refusal_of(no_reason.value) == "a reason is required"
        assert len(await update_events(handle)) == before

        # Drain: answered once the transition is written (store and event log).
        drained: NodeActionResult = await handle.execute_update(
            "drain",
            NodeActionRequest(reason="kernel upgrade", by="alice"),
            result_type=NodeActionResult,
        )
        assert (drained.action, drained.from_state, drained.state) == (
            "drain",
            NodeState.ACTIVE,
            NodeState.DRAIN,
        )
        assert drained.message == f"node {node_id}: active -> drain"
        with sessions() as session:
            row = node_store.get_node(session, node_id)
            assert (row.state, row.drain_requested) == ("drain", True)
            assert row.drain_reason == "drain by alice: kernel upgrade"

        with pytest.raises(WorkflowUpdateFailedError) as again:
            await handle.execute_update(
                "drain", NodeActionRequest(reason="again"), result_type=NodeActionResult
            )
        assert refusal_of(again.value) == f"node {node_id} is already draining"

        # Undrain in time: back to idle, the agent no longer told to drain; healthy
        # heartbeats bring it through warm to active again.
        undrained: NodeActionResult = await handle.execute_update(
            "undrain", NodeActionRequest(reason="wrong node"), result_type=NodeActionResult
        )
        assert (undrained.from_state, undrained.state) == (NodeState.DRAIN, NodeState.IDLE)
        with sessions() as session:
            row = node_store.get_node(session, node_id)
            assert (row.state, row.drain_requested, row.drain_reason) == ("idle", False, None)
            kinds = [e.kind for e in reversed(list_events(session, node_id=node_id))]
        assert sorted(kinds[-3:-1]) == ["node.drain", "node.drain_requested"]
        assert kinds[-1] == "node.idle"
        await handle.signal(NodeLifecycleWorkflow.node_status_changed, up)
        await time_env.sleep(12)
        status: NodeLifecycleStatus = await handle.query(NodeLifecycleWorkflow.status)
        assert status.state is NodeState.ACTIVE
        assert [t.event for t in status.history][-4:] == [
            NodeEvent.DRAIN,
            NodeEvent.UNDRAIN,
            NodeEvent.UP,
            NodeEvent.WARMED,
        ]
        await keep(handle, "node_lifecycle_updates")


async def test_an_undrained_node_that_never_comes_back_is_given_up(
    time_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """Undrain starts the down grace period: a node whose agent already left is not
    kept in idle for ever."""
    async with node_rig(time_env, tmp_path) as (client, sessions, service):
        _, handle = await start_node(client, sessions, service)
        await handle.execute_update(
            "drain", NodeActionRequest(reason="x"), result_type=NodeActionResult
        )
        await handle.execute_update(
            "undrain", NodeActionRequest(reason="y"), result_type=NodeActionResult
        )
        await time_env.sleep(TIMINGS.down_grace_seconds + 2)
        result = await handle.result()
        assert result.state is NodeState.DELETE and "grace period" in result.reason


async def test_a_deleted_node_refuses_every_update(
    time_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """Deleted, the lifecycle is over: the server itself refuses the update."""
    async with node_rig(time_env, tmp_path) as (client, sessions, service):
        _, handle = await start_node(client, sessions, service)
        await handle.signal(NodeLifecycleWorkflow.deregistered, "pool shrank")
        assert (await handle.result()).state is NodeState.DELETE
        with pytest.raises(RPCError):
            await handle.execute_update(
                "drain", NodeActionRequest(reason="late"), result_type=NodeActionResult
            )


held_writes = asyncio.Event()


@activity.defn(name="record_node_state")
async def record_when_released(record: NodeStateRecord) -> None:
    """Holds the lifecycle inside a transition until the test lets it go."""
    await held_writes.wait()


async def test_a_drain_queued_behind_a_deregistration_is_refused_when_handled(
    time_env: WorkflowEnvironment,
) -> None:
    """Validated while the node is warm, the drain waits behind the deregistration that
    arrived first; the node is deleted before the drain's turn, so the handler answers
    with a refusal (and the run ends only once that answer is out)."""
    held_writes.clear()
    client = pydantic_client(time_env)
    queue = f"{TQ}-{uuid.uuid4().hex[:6]}"
    node_id = f"jp-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[NodeLifecycleWorkflow],
        activities=[record_when_released],
    ):  # fmt: skip
        handle = await client.start_workflow(
            NodeLifecycleWorkflow.run,
            NodeLifecycleParams(node_id=node_id, service="svc", region="jp", timings=TIMINGS),
            id=f"node-{node_id}",
            task_queue=queue,
        )
        await handle.signal(
            NodeLifecycleWorkflow.node_status_changed, NodeStatusChange(status="up")
        )
        await handle.signal(NodeLifecycleWorkflow.deregistered, "pool shrank")
        drain = asyncio.create_task(
            handle.execute_update(
                "drain", NodeActionRequest(reason="late"), result_type=NodeActionResult
            )
        )
        for _ in range(50):  # accepted (validated in warm) while the up transition is held
            if len(await update_events(handle)) == 1:
                break
            await asyncio.sleep(0.1)
        assert (await handle.query(NodeLifecycleWorkflow.status)).state is NodeState.WARM
        held_writes.set()
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await drain
        assert refusal_of(refused.value) == f"node {node_id} is already deleted"
        result = await handle.result()
        assert result.state is NodeState.DELETE and result.reason == "pool shrank"


# --------------------------------------------------------------- control loop
async def test_pause_and_resume_updates(time_env: WorkflowEnvironment) -> None:
    client = pydantic_client(time_env)
    async with Worker(
        client, task_queue=TQ, workflows=[CounterLoopWorkflow], activities=[count_reconcile]
    ):
        handle = await client.start_workflow(
            CounterLoopWorkflow.run,
            CounterParams(settings=LoopSettings(interval_seconds=60)),
            id=f"loop-{uuid.uuid4()}",
            task_queue=TQ,
        )
        await time_env.sleep(1)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                "resume", LoopActionRequest(reason="go"), result_type=LoopActionResult
            )
        assert refusal_of(refused.value) == f"loop {handle.id} is not paused"

        paused: LoopActionResult = await handle.execute_update(
            "pause", LoopActionRequest(reason="dns change", by="bob"), result_type=LoopActionResult
        )
        assert paused.paused and paused.action == "pause"
        assert paused.message == f"loop {handle.id} paused: no reconcile runs until it is resumed"
        with pytest.raises(WorkflowUpdateFailedError) as twice:
            await handle.execute_update(
                "pause", LoopActionRequest(reason="again"), result_type=LoopActionResult
            )
        assert refusal_of(twice.value) == (
            f"loop {handle.id} is already paused (dns change (by bob))"
        )
        runs = (await handle.query(CounterLoopWorkflow.status)).runs
        await handle.signal(CounterLoopWorkflow.poke, "world_changed")
        await time_env.sleep(180)
        assert (await handle.query(CounterLoopWorkflow.status)).runs == runs

        resumed: LoopActionResult = await handle.execute_update(
            "resume", LoopActionRequest(reason="done"), result_type=LoopActionResult
        )
        assert not resumed.paused
        assert resumed.message == f"loop {handle.id} resumed (was paused: dns change (by bob))"
        await time_env.sleep(1)
        status = await handle.query(CounterLoopWorkflow.status)
        assert status.runs == runs + 1 and status.last_reasons == ["world_changed"]
        # The old signals still work beside the updates.
        await handle.signal(CounterLoopWorkflow.pause, "by signal")
        await time_env.sleep(1)
        assert (await handle.query(CounterLoopWorkflow.status)).pause_reason == "by signal"
        await handle.terminate()


# ----------------------------------------------------------- region lifecycle
commits: list[str] = []


@activity.defn(name="describe_region")
async def describe_region(region: str) -> RegionView:
    return RegionView(region=region, exists=True, service="svc", min_nodes=1, ttl_seconds=30)


@activity.defn(name="commit_region_pool")
async def commit_region_pool(request: RegionCommitRequest) -> RegionCommit:
    commits.append(request.action)
    return RegionCommit(status="unchanged", sha="")


@activity.defn(name="region_nodes")
async def region_nodes(region: str) -> RegionNodes:
    return RegionNodes(active=0)  # no node ever comes: the bootstrap fails


@activity.defn(name="record_region_event")
async def record_region_event(event: RegionEvent) -> None:
    return None


async def phase_is(handle: WorkflowHandle[Any, Any], phase: str) -> None:
    """Wait (real time, a loaded machine) until the region's status shows ``phase``."""
    status: RegionStatus | None = None
    for _ in range(100):
        status = await handle.query(RegionLifecycleWorkflow.status)
        if status.phase == phase:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"phase {phase} never reached: {status}")


@contextlib.asynccontextmanager
async def region_waiting_for_its_node(
    time_env: WorkflowEnvironment,
) -> AsyncIterator[tuple[str, WorkflowHandle[Any, Any]]]:
    """A region lifecycle on a worker, bootstrapped and waiting for its first node (it
    fails 30 s later: no node ever comes)."""
    commits.clear()
    client = pydantic_client(time_env)
    async with Worker(
        client,
        task_queue=TQ,
        workflows=[RegionLifecycleWorkflow],
        activities=[describe_region, commit_region_pool, region_nodes, record_region_event],
    ):
        region = f"r{uuid.uuid4().hex[:6]}"
        handle = await client.start_workflow(
            RegionLifecycleWorkflow.run,
            RegionParams(region=region, timings=RegionTimings(first_node_timeout_seconds=30)),
            id=f"region-{region}",
            task_queue=TQ,
        )
        await time_env.sleep(5)
        await phase_is(handle, "waiting_node")
        yield region, handle


async def test_retry_is_refused_unless_the_bootstrap_failed(
    time_env: WorkflowEnvironment,
) -> None:
    async with region_waiting_for_its_node(time_env) as (region, handle):
        with pytest.raises(WorkflowUpdateFailedError) as early:
            await handle.execute_update(
                "retry", RegionRetryRequest(reason="now"), result_type=RegionActionResult
            )
        assert refusal_of(early.value) == (
            f"region {region} has not failed (phase waiting_node): nothing to retry"
        )
        await time_env.sleep(40)  # past the first-node timeout: failed
        await phase_is(handle, "failed")
        with pytest.raises(WorkflowUpdateFailedError) as wrong:
            await handle.execute_update(
                "retry",
                RegionRetryRequest(reason="now", service="other"),
                result_type=RegionActionResult,
            )
        assert refusal_of(wrong.value) == f"region {region} serves svc, not other"
        answer: RegionActionResult = await handle.execute_update(
            "retry",
            RegionRetryRequest(reason="node image fixed", service="svc"),
            result_type=RegionActionResult,
        )
        assert (answer.region, answer.service, answer.from_phase) == (region, "svc", "failed")
        assert answer.message.startswith(f"region {region}: bootstrap starts again")
        await time_env.sleep(5)
        await phase_is(handle, "waiting_node")
        assert commits == ["bootstrap", "bootstrap"]
        await keep(handle, "region_lifecycle_retry_update")
        await handle.terminate()


async def test_retire_is_answered_once_and_refused_for_another_service(
    time_env: WorkflowEnvironment,
) -> None:
    async with region_waiting_for_its_node(time_env) as (region, handle):
        with pytest.raises(WorkflowUpdateFailedError) as wrong:
            await handle.execute_update(
                "retire",
                RegionRetryRequest(reason="move to sg", service="other"),
                result_type=RegionActionResult,
            )
        assert refusal_of(wrong.value) == f"region {region} serves svc, not other"
        with pytest.raises(WorkflowUpdateFailedError) as blank:
            await handle.execute_update(
                "retire", RegionRetryRequest(reason=" "), result_type=RegionActionResult
            )
        assert refusal_of(blank.value) == "a reason is required"
        answer: RegionActionResult = await handle.execute_update(
            "retire",
            RegionRetryRequest(reason="move to sg", by="alice", service="svc"),
            result_type=RegionActionResult,
        )
        assert (answer.action, answer.from_phase) == ("retire", "waiting_node")
        assert answer.message == f"region {region}: retiring (by alice: move to sg)"
        with pytest.raises(WorkflowUpdateFailedError) as again:
            await handle.execute_update(
                "retire", RegionRetryRequest(reason="twice"), result_type=RegionActionResult
            )
        assert refusal_of(again.value) in (
            f"region {region} is already asked to retire",
            f"region {region} is already retiring",
            f"region {region} is already retired",
        )
        await keep(handle, "region_lifecycle_retire_update")
        await handle.terminate()


# ------------------------------------------------------------- gitops sync
pulls: list[str] = []


@activity.defn(name="sync_config_repo")
async def sync_config_repo(request: SyncRequest) -> SyncResult:
    pulls.append(request.source)
    if request.source == "unreachable":
        raise ApplicationError("cannot fetch the config repo", non_retryable=True)
    return SyncResult(status=SyncStatus.UNCHANGED, sha="c" * 40, message="up to date")


async def test_sync_update_pulls_now_and_answers_the_sync(time_env: WorkflowEnvironment) -> None:
    pulls.clear()
    client = pydantic_client(time_env)
    async with Worker(
        client,
        task_queue=TQ,
        workflows=[GitOpsSyncWorkflow],
        activities=[sync_config_repo, no_schedules],
    ):
        handles = []
        for source in ("repo", "unreachable"):
            handles.append(
                await client.start_workflow(
                    GitOpsSyncWorkflow.run,
                    GitOpsSyncParams(source=source, settings=LoopSettings(interval_seconds=600)),
                    id=f"gitops-sync-{uuid.uuid4().hex[:6]}",
                    task_queue=TQ,
                )
            )
        good, bad = handles
        await time_env.sleep(1)
        assert pulls.count("repo") == 1
        answer: LoopActionResult = await good.execute_update(
            "sync",
            LoopActionRequest(reason="pushed a fix", by="carol"),
            result_type=LoopActionResult,
        )
        assert pulls.count("repo") == 2  # pulled now, not at the tick ten minutes away
        assert answer.action == "sync" and answer.error is None
        assert answer.result == {
            "status": "unchanged",
            "sha": "c" * 40,
            "message": "up to date",
            "issues": 0,
        }
        status = await good.query(GitOpsSyncWorkflow.status)
        assert status.last_reasons == ["sync by carol: pushed a fix"] and status.runs == 2

        failed: LoopActionResult = await bad.execute_update(
            "sync", LoopActionRequest(reason="try"), result_type=LoopActionResult
        )
        assert failed.message == f"loop {bad.id} reconcile failed"
        assert failed.error is not None and "cannot fetch the config repo" in failed.error

        await good.execute_update(
            "pause", LoopActionRequest(reason="f"), result_type=LoopActionResult
        )
        with pytest.raises(WorkflowUpdateFailedError) as paused:
            await good.execute_update(
                "sync", LoopActionRequest(reason="now"), result_type=LoopActionResult
            )
        assert refusal_of(paused.value) == (
            f"loop {good.id} is paused (f (by operator)); resume it first"
        )
        resumed = await good.execute_update(
            "resume", LoopActionRequest(reason="thaw"), result_type=LoopActionResult
        )
        assert not resumed.paused
        await keep(good, "gitops_sync_updates")
        for handle in handles:
            await handle.terminate()
