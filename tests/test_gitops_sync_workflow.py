"""GitOpsSyncWorkflow end to end in the time-skipping server: real git, real store,
events delivered by signal-with-start to stand-in owner workflows."""

from __future__ import annotations

import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import git
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.gitops import GitOpsActivities
from activities.publish import PublishActivities
from tests.support.recorder import AnyWorkflowRecorder, RecorderWorkflow
from tests.support.schedules import no_schedules
from tests.support.temporal import pydantic_client
from workflows.control_loop import LoopSettings
from workflows.gitops_sync import GitOpsSyncParams, GitOpsSyncWorkflow
from xplane.store.config_store import current_revision, last_revision
from xplane.store.db import Base, make_engine, make_sessionmaker

EXAMPLE = Path(__file__).resolve().parent.parent / "example" / "gitops-config"
TQ = "gitops-sync-tests"


def _push(clone: git.Repo, message: str) -> str:
    clone.git.add(A=True)
    clone.index.commit(message)
    clone.git.push("origin", "HEAD:refs/heads/main")
    return clone.head.commit.hexsha


async def _signals(client: Client, workflow_id: str) -> list[str]:
    try:
        return await client.get_workflow_handle(workflow_id).query(RecorderWorkflow.signals)
    except Exception:
        return []


async def test_sync_loop_publishes_only_what_changed(
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
    gitops = GitOpsActivities(sessions, tmp_path / "work")
    # A fresh task queue per test: the dynamic recorder must not serve other tests' types.
    queue = f"{TQ}-{uuid.uuid4().hex[:6]}"
    publish = PublishActivities(client, queue)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[GitOpsSyncWorkflow, AnyWorkflowRecorder],
        activities=[gitops.sync_config_repo, publish.publish_config_events, no_schedules],
        activity_executor=ThreadPoolExecutor(4),
    ):
        handle = await client.start_workflow(
            GitOpsSyncWorkflow.run,
            GitOpsSyncParams(source=str(bare), settings=LoopSettings(interval_seconds=60)),
            id=f"gitops-sync-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
        )
        await time_env.sleep(2)
        with sessions() as session:
            revision = current_revision(session)
            assert revision is not None and revision.sha == first
        assert await _signals(client, "gtm-svc-plus") == [
            f"OnGtmPolicyChanged:{{'sha': '{first}', 'service': 'svc-plus', 'region': None, "
            "'removed': False}"
        ]
        for region in ("jp", "sg", "cn-hangzhou"):
            assert len(await _signals(client, f"region-{region}")) == 1
            assert len(await _signals(client, f"autoscale-svc-plus-{region}")) == 1

        # Change only sg's autoscale policy; sync_now wakes the loop before its tick.
        path = tmp_path / "clone" / "autoscale" / "svc-plus.yaml"
        text = path.read_text()
        assert "max_nodes: 5" in text
        path.write_text(text.replace("max_nodes: 5", "max_nodes: 6", 1))
        second = _push(clone, "raise a max")
        await handle.signal(GitOpsSyncWorkflow.sync_now)
        await time_env.sleep(1)
        status = await handle.query(GitOpsSyncWorkflow.status)
        assert status.details["last_sync"]["sha"] == second
        assert status.last_reasons == ["sync_now"]
        autoscale_counts = [
            len(await _signals(client, f"autoscale-svc-plus-{r}"))
            for r in ("jp", "sg", "cn-hangzhou")
        ]
        assert sorted(autoscale_counts) == [1, 1, 2]
        assert len(await _signals(client, "gtm-svc-plus")) == 1
        assert len(await _signals(client, "region-jp")) == 1

        # A broken commit is rejected whole on the next tick; the last good one stays.
        (tmp_path / "clone" / "gtm" / "svc-plus.yaml").write_text("service: [unclosed\n")
        bad = _push(clone, "break it")
        await time_env.sleep(61)
        status = await handle.query(GitOpsSyncWorkflow.status)
        assert status.details["last_sync"]["status"] == "rejected"
        with sessions() as session:
            assert current_revision(session).sha == second  # type: ignore[union-attr]
            latest = last_revision(session)
            assert latest is not None and latest.sha == bad and latest.status == "rejected"
        assert len(await _signals(client, "gtm-svc-plus")) == 1

        # Unchanged ticks publish nothing; status counts the runs.
        before = status.runs
        await time_env.sleep(121)
        status = await handle.query(GitOpsSyncWorkflow.status)
        assert status.runs >= before + 2
        assert len(await _signals(client, "gtm-svc-plus")) == 1
        await handle.terminate()
    engine.dispose()
