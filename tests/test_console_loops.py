"""Loop states in the console from the loops' own ``status`` query (real Temporal)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.support.loop_workflows import CounterLoopWorkflow, CounterParams, count_reconcile
from tests.support.temporal import pydantic_client
from workflows.control_loop import LoopSettings
from xplane.api.console_loops import CachedLoops, loop_state, query_loops, with_loop_states
from xplane.api.console_views import GateView, LoopState, Overview, OverviewService

TQ = "console-loops"


def test_loop_state_says_paused_failing_or_running_and_why() -> None:
    paused = loop_state("gtm-web", {"paused": True, "pause_reason": "DNS migration"})
    assert (paused.state, paused.why) == ("paused", "DNS migration")
    failing = loop_state("gtm-web", {"consecutive_errors": 3, "last_error": "PowerDNS 500"})
    assert failing.state == "failing" and "3 failed run(s)" in failing.why
    running = loop_state("gtm-web", {"runs": 7, "last_reasons": ["tick"]})
    assert (running.state, running.why) == ("running", "7 run(s); last: tick")


async def test_the_overview_shows_a_paused_loop_and_a_missing_one(
    time_env: WorkflowEnvironment,
) -> None:
    client = pydantic_client(time_env)
    loop_id, missing = f"gtm-{uuid.uuid4().hex[:8]}", f"gtm-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=TQ, workflows=[CounterLoopWorkflow], activities=[count_reconcile]
    ):
        handle = await client.start_workflow(
            CounterLoopWorkflow.run,
            CounterParams(settings=LoopSettings(interval_seconds=60)),
            id=loop_id,
            task_queue=TQ,
        )
        await time_env.sleep(1)
        await handle.signal(CounterLoopWorkflow.pause, "operator: DNS migration")
        await time_env.sleep(1)
        states = await query_loops(client, [loop_id, missing])
        assert states[loop_id].state == "paused"
        assert states[loop_id].why == "operator: DNS migration"
        assert states[missing].state == "stopped"

        async def connect() -> object:
            return client

        view = Overview(
            generated_at=datetime.now(UTC),
            revision=None,
            gate=GateView(open=True, lines=["open"]),
            services=[
                OverviewService(
                    service="web",
                    domain="web.svc.plus",
                    regions=[],
                    loops=[LoopState(id=loop_id, state="running", why="from events")],
                )
            ],
        )
        view = await with_loop_states(view, CachedLoops(connect))  # type: ignore[arg-type]
        assert view.services[0].loops[0].state == "paused"
        await handle.terminate()


async def test_requests_queued_behind_a_silent_temporal_never_wait_past_the_budget() -> None:
    """Temporal accepts connections but never answers: every overview request, however
    many arrive at once, gets the events' view within the console's budget (they do not
    each wait their turn behind the previous one's timeout)."""
    import asyncio
    import time

    from xplane.api.console_loops import QUERY_TIMEOUT_S, TEMPORAL_BUDGET_S

    async def silent() -> object:
        await asyncio.sleep(3600)
        raise AssertionError("never")

    querier = CachedLoops(silent)  # type: ignore[arg-type]
    started = time.monotonic()
    answers = await asyncio.gather(*(querier(["gtm-web"]) for _ in range(6)))
    took = time.monotonic() - started
    assert answers == [{}] * 6
    assert QUERY_TIMEOUT_S <= took < TEMPORAL_BUDGET_S + 0.5, took
    assert TEMPORAL_BUDGET_S <= 5
    started = time.monotonic()  # and the failure is remembered for a while: no new wait
    assert await querier(["gtm-web"]) == {}
    assert time.monotonic() - started < 0.1
