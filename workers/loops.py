"""The singleton loops a deployment needs, ensured by every worker replica at start.

``gitops-sync`` (from ``XPLANE_CONFIG_REPO``) and ``world-state`` are the only
loops nothing else starts: GTM loops, autoscalers and region lifecycles are
started by the sync's events (signal-with-start), node lifecycles by
registration. Starting with ``USE_EXISTING`` makes this idempotent: replicas
starting together, or a restarted one, find the running loop and leave it be; a
loop that ended (terminated by hand, failed) is started afresh.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from workflows.control_loop import LoopSettings
from workflows.gitops_sync import GitOpsSyncParams, GitOpsSyncWorkflow
from workflows.world_state import WorldStateParams, WorldStateWorkflow
from xplane import ids
from xplane.settings import Settings

log = logging.getLogger(__name__)

ENSURE_LOOPS_ENV = "XPLANE_ENSURE_LOOPS"


class EnsuredLoop(BaseModel):
    workflow_id: str
    run_id: str | None  # the one open run: the same for every replica that ensured it


async def ensure_loops(client: Client, settings: Settings) -> list[EnsuredLoop]:
    """Start ``gitops-sync`` (when a config repo is set) and ``world-state`` unless running."""
    ensured: list[EnsuredLoop] = []
    if settings.config_repo:
        handle = await client.start_workflow(
            GitOpsSyncWorkflow.run,
            GitOpsSyncParams(
                source=settings.config_repo,
                branch=settings.config_branch,
                settings=LoopSettings(interval_seconds=settings.sync_interval_seconds),
            ),
            id=ids.GITOPS_SYNC_ID,
            task_queue=settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        ensured.append(EnsuredLoop(workflow_id=ids.GITOPS_SYNC_ID, run_id=handle.result_run_id))
    else:
        log.warning(
            "XPLANE_CONFIG_REPO is not set: not starting %s (no config is synced unless "
            "another replica or an operator starts it)",
            ids.GITOPS_SYNC_ID,
        )
    world = await client.start_workflow(
        WorldStateWorkflow.run,
        WorldStateParams(
            settings=LoopSettings(interval_seconds=settings.world_state_interval_seconds)
        ),
        id=ids.WORLD_STATE_ID,
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    ensured.append(EnsuredLoop(workflow_id=ids.WORLD_STATE_ID, run_id=world.result_run_id))
    for loop in ensured:
        log.info("loop %s running (run %s)", loop.workflow_id, loop.run_id)
    return ensured
