"""Temporal footprint of the GTM loop: history events per idle iteration, and the proof
that a long run continues-as-new well before Temporal's 4,096-event suggestion.

Runs the real GtmLoopWorkflow and activities on a real Temporal dev server, over a
SQLite store holding a policy with no DNS change to make (idle ticks).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus
from temporalio.worker import Worker

from activities.gtm import GtmActivities
from workflows.control_loop import LoopSettings
from workflows.gtm_loop import GtmLoopParams, GtmLoopWorkflow
from xplane.config.loader import load_config_from_mapping
from xplane.store.config_store import save_revision
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction
from xplane.temporal.client import connect
from xplane.temporal.dev import TemporalDevServer

CONFIG = {
    "regions/jp.yaml": "provider: local\n",
    "gtm/svc.yaml": (
        "service: svc\ndomain: api.svc.plus\nregions:\n  - {name: jp, weight: 100}\n"
        "interval: 100ms\nhealth: {interval: 100ms, timeout: 50ms}\n"
    ),
}


async def measure(iterations: int = 260, max_iterations: int = 200) -> dict[str, Any]:
    import xplane.store.tables  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        Base.metadata.create_all(engine)
        sessions = make_sessionmaker(engine)
        with transaction(sessions) as session:
            save_revision(session, "c" * 40, load_config_from_mapping(CONFIG), "bench")
        with TemporalDevServer(Path(tmp) / "temporal", ui=False) as server:
            client = await connect(server.address)
            acts = GtmActivities(sessions)
            async with Worker(
                client,
                task_queue="bench",
                workflows=[GtmLoopWorkflow],
                activities=[acts.observe_gtm, acts.apply_dns],
                activity_executor=ThreadPoolExecutor(2),
            ):
                handle = await client.start_workflow(
                    GtmLoopWorkflow.run,
                    GtmLoopParams(
                        service="svc",
                        settings=LoopSettings(interval_seconds=0.1, max_iterations=max_iterations),
                    ),
                    id="gtm-svc",
                    task_queue="bench",
                )
                first_run = handle.result_run_id
                started = time.monotonic()
                while True:
                    desc = await client.get_workflow_handle("gtm-svc", run_id=first_run).describe()
                    if desc.status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
                        break
                    if time.monotonic() - started > 600:
                        raise TimeoutError("no continue-as-new within 10 minutes")
                    await asyncio.sleep(1)
                history = await client.get_workflow_handle(
                    "gtm-svc", run_id=first_run
                ).fetch_history()
                events = history.events
                timers = sum(1 for e in events if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED)
                activities = sum(
                    1
                    for e in events
                    if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                )
                await client.get_workflow_handle("gtm-svc").terminate()
        engine.dispose()
    per_iteration = (len(events) - 5) / max(activities, 1)  # minus start/end bookkeeping
    return {
        "iterations_in_first_run": activities,
        "events_in_first_run": len(events),
        "events_per_idle_iteration": round(per_iteration, 2),
        "timers_fired": timers,
        "continued_as_new_at_events": len(events),
        "suggestion_limit": 4096,
    }


def run() -> dict[str, Any]:
    result = asyncio.run(measure())
    print("| measure | value |\n| --- | --- |")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    return result


if __name__ == "__main__":
    run()
    sys.exit(0)
