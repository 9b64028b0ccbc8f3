"""RegionLifecycleWorkflow in the time-skipping server, committing to a REAL infra repo.

Bootstrap and retire run their real activities (render, git commit/push, store);
CI's ``terraform_finished`` is signalled as the webhook does, and the region's
first node is written to the store as the node lifecycle would. The whole chain
with real Terraform and agents runs in ``tests/test_e2e_up.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import git
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.regions import RegionActivities
from tests.support.histories import keep
from tests.support.recorder import AnyWorkflowRecorder, RecorderWorkflow
from tests.support.temporal import pydantic_client
from workflows.region_lifecycle import (
    RegionLifecycleWorkflow,
    RegionParams,
    RegionStatus,
    RegionTimings,
)
from xplane.config.loader import load_config_from_mapping
from xplane.domain import NodeState
from xplane.messages import TerraformOutcome
from xplane.store import nodes as node_store
from xplane.store.config_store import save_revision
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.pools import list_pools
from xplane.store.registration import Registration, register_node

CONFIG = {
    "regions/jp.yaml": "provider: aws\nlocation: ap-northeast-1\ninstance_type: t3.small\n",
    # A service name of its own: the session's test server also runs other tests' gtm-svc.
    "gtm/svc.yaml": "service: regsvc\ndomain: api.svc.plus\nregions:\n  - {name: jp}\n"
    "dns: {provider: powerdns, ttl: 30}\n",
    "autoscale/svc.yaml": "service: regsvc\nregions:\n  jp: {min_nodes: 2, max_nodes: 4}\n",
}


def _files(bare: Path) -> dict[str, str]:
    tree = git.Repo(bare).commit("main").tree
    return {
        str(b.path): b.data_stream.read().decode()
        for b in tree.traverse()
        if isinstance(b, git.Blob)
    }


async def _status(handle: WorkflowHandle) -> RegionStatus:
    return await handle.query(RegionLifecycleWorkflow.status)


async def _until(handle: WorkflowHandle, phase: str, timeout: float = 30) -> RegionStatus:
    """Wait (real time: activities run in real time) until the workflow reaches ``phase``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await _status(handle)
        if status.phase == phase:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"phase {status.phase}, not {phase}: {status.steps}")
        await asyncio.sleep(0.1)


async def test_bootstrap_then_retire_through_git(
    time_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    import xplane.store.tables  # noqa: F401

    bare = tmp_path / "infra.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    seed = git.Repo.clone_from(str(bare), tmp_path / "seed")
    (tmp_path / "seed" / "README.md").write_text("infra\n")
    seed.git.add(A=True)
    seed.index.commit("initial")
    seed.git.push("origin", "HEAD:refs/heads/main")

    engine = make_engine(f"sqlite:///{tmp_path}/region.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        save_revision(session, "d" * 40, load_config_from_mapping(CONFIG), "test")

    client = pydantic_client(time_env)
    queue = f"region-{uuid.uuid4().hex[:6]}"
    acts = RegionActivities(
        sessions, client, str(bare), tmp_path / "work", provider_override="local"
    )
    async with Worker(
        client,
        task_queue=queue,
        workflows=[RegionLifecycleWorkflow, AnyWorkflowRecorder],
        activities=[
            acts.describe_region,
            acts.commit_region_pool,
            acts.region_nodes,
            acts.drain_region_nodes,
            acts.record_region_event,
        ],
        activity_executor=ThreadPoolExecutor(4),
    ):
        gtm = await client.start_workflow(RecorderWorkflow.run, id="gtm-regsvc", task_queue=queue)
        handle = await client.start_workflow(
            RegionLifecycleWorkflow.run,
            RegionParams(region="jp", timings=RegionTimings(terraform_timeout_seconds=600)),
            id=f"region-jp-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
        )
        status = await _until(handle, "waiting_terraform")
        assert status.service == "regsvc"
        tip = git.Repo(bare).commit("main")
        assert str(tip.message).startswith("feat(xplane-region): bootstrap jp node pool")
        files = _files(bare)
        assert "infra/node-pool/jp/main.tf" in files
        assert "../modules/local" in files["infra/node-pool/jp/main.tf"]  # xplane up's override
        assert "node_count" in files["infra/node-pool/jp.tfvars"]
        assert "= 2" in next(
            line for line in files["infra/node-pool/jp.tfvars"].splitlines()
            if line.startswith("node_count")
        )  # fmt: skip
        with sessions() as session:
            pool = list_pools(session, "regsvc")[0]
            assert (pool.node_count, pool.pending_commit) == (2, tip.hexsha)

        # CI reports the apply; no node yet: the region waits, and stays out of GTM.
        await handle.signal(
            RegionLifecycleWorkflow.terraform_finished,
            TerraformOutcome(commit=tip.hexsha, status="succeeded"),
        )
        await time_env.sleep(30)
        await _until(handle, "waiting_node")
        assert await gtm.query(RecorderWorkflow.signals) == []

        # The first node becomes active: serving, and GTM is told (slow start is its job).
        with transaction(sessions) as session:
            register_node(
                session,
                Registration(
                    node_id="jp-0", service="regsvc", region="jp", address="127.0.40.1",
                    token_hash="t",
                ),
                utcnow(),
                timedelta(seconds=30),
            )  # fmt: skip
            node_store.set_lifecycle_state(session, "jp-0", NodeState.ACTIVE, "test", utcnow())
            node_store.get_node(session, "jp-0").last_heartbeat_at = utcnow()
        await time_env.sleep(10)
        await _until(handle, "serving")
        assert await gtm.query(RecorderWorkflow.signals) == ["world_changed:region jp serving"]

        # Retire: GTM first, TTL, drain, pool to 0 through Git, then the directory goes.
        node = await client.start_workflow(RecorderWorkflow.run, id="node-jp-0", task_queue=queue)
        await handle.signal(RegionLifecycleWorkflow.retire, "test")
        await _until(handle, "retiring")
        await time_env.sleep(30 + 30 + 2)  # TTL + drain period
        await _until(handle, "waiting_terraform")
        assert (await node.query(RecorderWorkflow.signals))[0].startswith("drain:")
        tip = git.Repo(bare).commit("main")
        assert str(tip.message).startswith("feat(xplane-region): scale jp pool to 0 nodes")
        await handle.signal(
            RegionLifecycleWorkflow.terraform_finished,
            TerraformOutcome(commit=tip.hexsha, status="succeeded"),
        )
        result = await handle.result()
        assert result.phase == "retired"
        assert str(git.Repo(bare).commit("main").message).startswith(
            "feat(xplane-region): remove jp node pool"
        )
        assert not [p for p in _files(bare) if p.startswith("infra/node-pool/jp")]
        await keep(handle, "region_lifecycle_bootstrap_retire")
        for h in (gtm, node):
            with contextlib.suppress(Exception):
                await h.terminate()
    engine.dispose()


def test_a_retried_bootstrap_commit_finds_its_push_and_records_it_once(tmp_path: Path) -> None:
    """A retry on another worker (same activity id, its own clone) of a bootstrap whose push
    landed reports that commit (the lifecycle then waits for Terraform), not "unchanged"."""
    import dataclasses

    from temporalio.testing import ActivityEnvironment

    import xplane.store.tables  # noqa: F401
    from activities.regions import RegionCommitRequest
    from xplane.store.events import list_events

    bare = tmp_path / "infra.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    seed = git.Repo.clone_from(str(bare), tmp_path / "seed")
    (tmp_path / "seed" / "README.md").write_text("infra\n")
    seed.git.add(A=True)
    seed.index.commit("initial")
    seed.git.push("origin", "HEAD:refs/heads/main")
    engine = make_engine(f"sqlite:///{tmp_path}/region.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        save_revision(session, "d" * 40, load_config_from_mapping(CONFIG), "test")

    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, workflow_id="region-jp", workflow_run_id="run-1", activity_id="4"
    )
    request = RegionCommitRequest(region="jp", service="regsvc", action="bootstrap", node_count=2)
    results = []
    for attempt, worker in ((1, "worker-1"), (2, "worker-2")):
        env.info = dataclasses.replace(env.info, attempt=attempt)
        acts = RegionActivities(sessions, None, str(bare), tmp_path / worker, "main", "local")
        results.append(env.run(acts.commit_region_pool, request))
    first, retry = results
    assert (first.status, retry.status) == ("committed", "committed")
    assert retry.sha == first.sha == git.Repo(bare).commit("main").hexsha
    assert len(list(git.Repo(bare).iter_commits("main"))) == 2
    with sessions() as session:
        events = list_events(session, kind_prefix="region.bootstrap.committed")
        assert [e.data["commit"] for e in events] == [first.sha]
        assert [p.pending_commit for p in list_pools(session, "regsvc")] == [first.sha]
    engine.dispose()
