"""The control-loop building block in Temporal's time-skipping test server."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.support.loop_workflows import CounterLoopWorkflow, CounterParams, count_reconcile
from tests.support.temporal import pydantic_client
from workflows.control_loop import LoopSettings, LoopStatus

TQ = "loop-tests"


async def _status(handle: WorkflowHandle[Any, Any]) -> LoopStatus:
    return await handle.query(CounterLoopWorkflow.status)


async def test_ticks_wakes_pause_resume_and_status(time_env: WorkflowEnvironment) -> None:
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
        # First reconcile runs at start, then one per tick.
        await time_env.sleep(1)
        assert (await _status(handle)).runs == 1
        await time_env.sleep(125)
        status = await _status(handle)
        assert status.runs == 3
        assert status.last_reasons == ["tick"]
        assert status.interval_seconds == 60

        # A wake-up reconciles at once, without waiting for the tick.
        await handle.signal(CounterLoopWorkflow.poke, "world_changed")
        await time_env.sleep(1)
        status = await _status(handle)
        assert status.runs == 4
        assert status.last_reasons == ["world_changed"]

        # Paused: neither ticks nor wakes reconcile; wakes are coalesced (duplicates
        # dropped) and resume catches up with exactly one reconcile.
        await handle.signal(CounterLoopWorkflow.pause, "maintenance")
        for why in ("world_changed", "policy_changed", "world_changed"):
            await handle.signal(CounterLoopWorkflow.poke, why)
        await time_env.sleep(300)
        status = await _status(handle)
        assert status.paused and status.pause_reason == "maintenance"
        assert status.runs == 4
        assert status.pending == ["world_changed", "policy_changed"]
        await handle.signal(CounterLoopWorkflow.resume)
        await time_env.sleep(1)
        status = await _status(handle)
        assert not status.paused
        assert status.runs == 5
        assert status.last_reasons == ["world_changed", "policy_changed"]
        assert status.pending == []
        await handle.terminate()


async def test_errors_are_recorded_and_the_loop_goes_on(time_env: WorkflowEnvironment) -> None:
    client = pydantic_client(time_env)
    async with Worker(
        client, task_queue=TQ, workflows=[CounterLoopWorkflow], activities=[count_reconcile]
    ):
        handle = await client.start_workflow(
            CounterLoopWorkflow.run,
            CounterParams(settings=LoopSettings(interval_seconds=10), fail_on=[2]),
            id=f"loop-{uuid.uuid4()}",
            task_queue=TQ,
        )
        await time_env.sleep(11)
        status = await _status(handle)
        assert status.errors == 1 and status.consecutive_errors == 1
        assert "reconcile 2 failed on purpose" in (status.last_error or "")
        await time_env.sleep(10)
        status = await _status(handle)
        assert status.runs == 2 and status.consecutive_errors == 0 and status.last_error is None
        await handle.terminate()


async def test_continue_as_new_keeps_state(time_env: WorkflowEnvironment) -> None:
    client = pydantic_client(time_env)
    async with Worker(
        client, task_queue=TQ, workflows=[CounterLoopWorkflow], activities=[count_reconcile]
    ):
        wf_id = f"loop-{uuid.uuid4()}"
        handle = await client.start_workflow(
            CounterLoopWorkflow.run,
            CounterParams(settings=LoopSettings(interval_seconds=10, max_iterations=3)),
            id=wf_id,
            task_queue=TQ,
        )
        first_run = handle.result_run_id
        await time_env.sleep(75)  # 1 immediate + 7 ticks = 8 reconciles over 3 runs
        latest = client.get_workflow_handle(wf_id)
        status = await _status(latest)
        assert status.runs == 8
        assert status.generation == 2
        desc = await latest.describe()
        assert desc.run_id != first_run
        assert desc.status == WorkflowExecutionStatus.RUNNING
        # The first run ended by continuing as new, not by failing.
        old = await client.get_workflow_handle(wf_id, run_id=first_run).describe()
        assert old.status == WorkflowExecutionStatus.CONTINUED_AS_NEW
        await latest.terminate()
