"""The GitOps sync and the calendar's schedules (time-skipping server): a Schedules API
that fails never holds config events back, and the schedules are retried next tick."""

from __future__ import annotations

import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import git
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.gitops import GitOpsActivities
from activities.publish import PublishActivities
from activities.schedules import ScheduleSync
from tests.support.recorder import AnyWorkflowRecorder
from tests.support.temporal import pydantic_client
from tests.test_gitops_sync_workflow import EXAMPLE, _push, _signals
from workflows.control_loop import LoopSettings
from workflows.gitops_sync import GitOpsSyncParams, GitOpsSyncWorkflow
from xplane.store.db import Base, make_engine, make_sessionmaker


async def test_failing_schedules_do_not_hold_config_events_back(
    time_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    import xplane.store.tables  # noqa: F401

    bare = tmp_path / "config.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    clone = git.Repo.clone_from(str(bare), tmp_path / "clone")
    shutil.copytree(EXAMPLE, tmp_path / "clone", dirs_exist_ok=True)
    first = _push(clone, "initial")
    engine = make_engine(f"sqlite:///{tmp_path}/sync.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    client = pydantic_client(time_env)
    queue = f"sync-schedules-{uuid.uuid4().hex[:6]}"
    calls: list[str] = []
    broken = [True]

    @activity.defn(name="reconcile_schedules")
    async def flaky_schedules() -> ScheduleSync:
        calls.append("call")
        if broken[0]:
            raise ApplicationError("schedules API unavailable", non_retryable=True)
        return ScheduleSync(created=["xplane-window-svc-plus-jp-day"])

    gitops = GitOpsActivities(sessions, tmp_path / "work")
    publish = PublishActivities(client, queue)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[GitOpsSyncWorkflow, AnyWorkflowRecorder],
        activities=[gitops.sync_config_repo, publish.publish_config_events, flaky_schedules],
        activity_executor=ThreadPoolExecutor(4),
    ):
        handle = await client.start_workflow(
            GitOpsSyncWorkflow.run,
            GitOpsSyncParams(source=str(bare), settings=LoopSettings(interval_seconds=60)),
            id=f"gitops-sync-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
        )
        await time_env.sleep(2)
        assert len(await _signals(client, "gtm-svc-plus")) == 1  # delivered all the same
        status = await handle.query(GitOpsSyncWorkflow.status)
        assert status.details["last_sync"]["sha"] == first
        assert status.details["last_sync"]["schedules"] == "failed"
        assert calls == ["call"]

        broken[0] = False
        await time_env.sleep(61)  # the next tick, same revision: schedules tried again
        status = await handle.query(GitOpsSyncWorkflow.status)
        assert status.details["last_sync"]["schedules"]["created"] == 1
        await time_env.sleep(61)  # done for this revision: not called again
        assert calls == ["call", "call"]
        await handle.terminate()
    engine.dispose()
