"""AutoscaleWorkflow in the time-skipping server, committing to a REAL git repo.

Metrics come from heartbeat samples in a real SQLite store; commits go to a
bare repository; CI's ``terraform_finished`` is signalled as the webhook would.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import git
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.autoscale import AutoscaleActivities, CommitRequest, DecideRequest, PoolCommit
from activities.calendar import CalendarActivities
from tests.support.gate import STALLED, store_gate
from tests.support.temporal import pydantic_client
from workflows.autoscale import AutoscaleParams, AutoscaleWorkflow
from workflows.control_loop import LoopSettings, LoopStatus
from xplane.config.loader import load_config_from_mapping
from xplane.domain import NodeState
from xplane.messages import TerraformOutcome
from xplane.observability.metrics import REGISTRY
from xplane.store import nodes as node_store
from xplane.store.config_store import save_revision
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction
from xplane.store.events import list_events
from xplane.store.heartbeats import Heartbeat, apply_heartbeats
from xplane.store.node_tables import MetricSampleRow
from xplane.store.pools import NodePoolRow, set_pool
from xplane.store.registration import Registration, register_node

TQ = "autoscale-tests"
CONFIG = {
    "regions/jp.yaml": "provider: aws\nlocation: ap-northeast-1\n",
    "autoscale/svc.yaml": """
service: svc
global: {cpu_window: 60s}
regions:
  jp: {min_nodes: 1, max_nodes: 5, scale_up_cpu: 0.7, scale_down_cpu: 0.3}
cooldown: {scale_up: 300s, scale_down: 600s}
jitter: 0s
interval: 30s
terraform_timeout: 120s
node_ready_timeout: 60s
""",
}
TFVARS = 'region         = "ap-northeast-1"\nservice        = "svc"\nnode_count     = 1\n'


@dataclass
class Rig:
    env: WorkflowEnvironment
    client: Client
    sessions: sessionmaker[Session]
    bare: Path

    def commits(self) -> list[str]:
        return [str(c.message).splitlines()[0] for c in git.Repo(self.bare).iter_commits("main")]

    def tip(self) -> str:
        return git.Repo(self.bare).commit("main").hexsha

    async def start(self, fast_ci: bool = False) -> WorkflowHandle:
        return await self.client.start_workflow(
            AutoscaleWorkflow.run,
            AutoscaleParams(
                service="svc",
                region="jp",
                settings=LoopSettings(interval_seconds=30, jitter_seconds=0),
            ),
            id=f"autoscale-svc-jp-{uuid.uuid4().hex[:6]}",
            task_queue=TQ,
        )


def _hot_node(sessions: sessionmaker[Session], node_id: str, cpu: float, now: datetime) -> None:
    """An active node that has reported ``cpu`` for the whole window up to ``now``."""
    with transaction(sessions) as session:
        register_node(
            session,
            Registration(
                node_id=node_id,
                service="svc",
                region="jp",
                address="127.0.20.1",
                token_hash=node_id,
            ),
            now,
            timedelta(seconds=30),
            authorize=lambda _row: True,  # the same node again: fresh samples
        )
        node_store.set_lifecycle_state(session, node_id, NodeState.ACTIVE, "test", now)
    beats = [
        Heartbeat(
            node_id=node_id,
            token_hash=node_id,
            at=now - timedelta(seconds=s),
            cpu=cpu,
            rtt_ms=10.0,
            error_rate=0.0,
            qps=None,
            probes_ok=0,
            probes_total=0,
            reported_status="up",
        )
        for s in (50, 30, 10, 0)
    ]
    with transaction(sessions) as session:
        apply_heartbeats(session, beats, timedelta(seconds=30))


@pytest.fixture
async def rig(time_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Rig]:
    import xplane.store.tables  # noqa: F401

    bare = tmp_path / "infra.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    seed = git.Repo.clone_from(str(bare), tmp_path / "seed")
    (tmp_path / "seed/infra/node-pool").mkdir(parents=True)
    (tmp_path / "seed/infra/node-pool/jp.tfvars").write_text(TFVARS)
    seed.git.add(A=True)
    seed.index.commit("initial")
    seed.git.push("origin", "HEAD:refs/heads/main")

    engine = make_engine(f"sqlite:///{tmp_path}/as.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        save_revision(session, "b" * 40, load_config_from_mapping(CONFIG), "test")
        set_pool(session, "svc", "jp", 1, scaled=False)  # bootstrapped by the region lifecycle
    _hot_node(sessions, "jp-0", cpu=0.9, now=await time_env.get_current_time())
    client = pydantic_client(time_env)
    yield Rig(time_env, client, sessions, bare)
    engine.dispose()


def _worker(
    rig: Rig,
    tmp: Path,
    commit_activity: Callable[..., Any] | None = None,
    count_activity: Callable[..., Any] | None = None,
) -> Worker:
    acts = AutoscaleActivities(rig.sessions, str(rig.bare), tmp / "work")
    return Worker(
        rig.client,
        task_queue=TQ,
        workflows=[AutoscaleWorkflow],
        activities=[
            acts.decide_autoscale,
            commit_activity or acts.commit_node_pool,
            acts.record_terraform_result,
            count_activity or acts.count_ready_nodes,
            acts.drain_nodes,
            acts.nodes_not_yet_drained,
            CalendarActivities(rig.sessions).record_nodes_active,
        ],
        activity_executor=ThreadPoolExecutor(4),
    )


async def _status(handle: WorkflowHandle) -> LoopStatus:
    return await handle.query(AutoscaleWorkflow.status)


async def test_scale_up_commit_wait_webhook_then_cooldown(rig: Rig, tmp_path: Path) -> None:
    async with _worker(rig, tmp_path):
        handle = await rig.start()
        await rig.env.sleep(2)
        status = await _status(handle)
        waiting = status.details["waiting"]
        assert waiting["phase"] == "terraform" and waiting["desired"] == 2
        assert waiting["commit"] == rig.tip()
        assert rig.commits()[0] == "feat(xplane-autoscaler): scale jp pool to 2 nodes"
        body = git.Repo(rig.bare).commit("main").message
        assert (
            "cpu 0.9" in str(body)
            and git.Repo(rig.bare).commit("main").author.name == "xplane-autoscaler"
        )

        # CI reports success; the second node registers and becomes active.
        _hot_node(rig.sessions, "jp-1", cpu=0.9, now=await rig.env.get_current_time())
        await handle.signal(
            AutoscaleWorkflow.terraform_finished,
            TerraformOutcome(commit=waiting["commit"], status="succeeded"),
        )
        await rig.env.sleep(2)
        status = await _status(handle)
        assert status.details["waiting"] is None
        assert status.details["last_outcome"] == "2 nodes ready"
        # Still hot, but inside the 300s scale-up cooldown: no new commit.
        await rig.env.sleep(170)
        for node in ("jp-0", "jp-1"):
            _hot_node(
                rig.sessions,
                node,
                cpu=0.9,
                now=await rig.env.get_current_time() + timedelta(seconds=30),
            )
        await rig.env.sleep(30)
        assert len(rig.commits()) == 2
        assert (await _status(handle)).details["reason"].startswith("cooldown")
        await rig.env.sleep(90)
        for node in ("jp-0", "jp-1"):  # fresh hot samples for the window after the cooldown
            _hot_node(
                rig.sessions,
                node,
                cpu=0.9,
                now=await rig.env.get_current_time() + timedelta(seconds=30),
            )
        await rig.env.sleep(60)
        assert rig.commits()[0] == "feat(xplane-autoscaler): scale jp pool to 3 nodes"
        with rig.sessions() as session:
            kinds = [e.kind for e in list_events(session, region="jp")]
        assert "terraform.succeeded" in kinds and kinds.count("autoscale.committed") == 2
        await handle.terminate()


async def test_the_status_query_shows_the_gate_closed_with_its_reason_then_open(
    rig: Rig, tmp_path: Path
) -> None:
    now = await rig.env.get_current_time()
    _hot_node(rig.sessions, "jp-0", cpu=0.1, now=now)  # neither hot nor cold: no commit
    store_gate(rig.sessions, now, stalled=True)
    async with _worker(rig, tmp_path):
        handle = await rig.start()
        await rig.env.sleep(2)
        status = await _status(handle)
        assert status.details["gate"] == f"held: {STALLED}"
        store_gate(rig.sessions, await rig.env.get_current_time(), stalled=False)
        await rig.env.sleep(31)  # the next tick
        status = await _status(handle)
        assert status.details["gate"] is None
        assert status.details["waiting"] is None and len(rig.commits()) == 1
        await handle.terminate()


async def test_webhook_before_the_wait_is_not_lost(rig: Rig, tmp_path: Path) -> None:
    acts = AutoscaleActivities(rig.sessions, str(rig.bare), tmp_path / "work")

    @activity.defn(name="commit_node_pool")
    async def commit_and_fast_ci(request: CommitRequest) -> PoolCommit:
        """The real commit, then CI answers before the workflow even starts waiting."""
        result = acts.commit_node_pool(request)
        _hot_node(rig.sessions, "jp-1", cpu=0.9, now=await rig.env.get_current_time())
        workflow_id = activity.info().workflow_id
        assert workflow_id is not None  # run by the workflow, not standalone
        await rig.client.get_workflow_handle(workflow_id).signal(
            AutoscaleWorkflow.terraform_finished,
            TerraformOutcome(commit=result.sha, status="succeeded"),
        )
        return result

    async with _worker(rig, tmp_path, commit_activity=commit_and_fast_ci):
        handle = await rig.start()
        await rig.env.sleep(5)
        status = await _status(handle)
        assert status.details["waiting"] is None
        assert status.details["last_outcome"] == "2 nodes ready"
        await handle.terminate()


async def test_terraform_timeout_is_recorded_and_not_retried_before_cooldown(
    rig: Rig, tmp_path: Path
) -> None:
    async with _worker(rig, tmp_path):
        handle = await rig.start()
        await rig.env.sleep(125)  # past terraform_timeout (120s)
        status = await _status(handle)
        assert status.details["last_outcome"] == "terraform timeout"
        with rig.sessions() as session:
            assert [e.kind for e in list_events(session, kind_prefix="terraform.")] == [
                "terraform.timeout"
            ]
        labels = {"service": "svc", "region": "jp", "status": "timeout"}
        assert (REGISTRY.get_sample_value("xplane_terraform_results_total", labels) or 0) >= 1
        await rig.env.sleep(120)  # ticks inside the cooldown: no second commit
        assert len(rig.commits()) == 2
        with contextlib.suppress(Exception):
            await handle.terminate()


async def test_a_node_lost_while_new_ones_are_awaited_ends_the_wait(
    rig: Rig, tmp_path: Path
) -> None:
    async with _worker(rig, tmp_path):
        handle = await rig.start()
        await rig.env.sleep(2)
        waiting = (await _status(handle)).details["waiting"]
        await handle.signal(
            AutoscaleWorkflow.terraform_finished,
            TerraformOutcome(commit=waiting["commit"], status="succeeded"),
        )
        await rig.env.sleep(2)
        assert (await _status(handle)).details["waiting"]["phase"] == "nodes"  # jp-1 never comes
        await handle.signal(AutoscaleWorkflow.node_lost, "jp-0")
        await rig.env.sleep(1)  # far less than node_ready_timeout (60s)
        status = await _status(handle)
        assert status.details["waiting"] is None
        assert status.details["last_outcome"] == "1 of 2 nodes ready when a node was lost"
        assert "node_lost:jp-0" in status.last_reasons  # decided again at once
        await handle.terminate()


async def test_scale_down_drains_the_highest_index_first_then_commits(
    rig: Rig, tmp_path: Path
) -> None:
    """Terraform's count destroys jp-2: that node is drained, and the commit waits for it."""
    with transaction(rig.sessions) as session:
        set_pool(session, "svc", "jp", 3, scaled=False)
        session.execute(sa.delete(MetricSampleRow))  # the rig's hot jp-0 samples
    start = await rig.env.get_current_time()
    for node in ("jp-0", "jp-1", "jp-2"):
        _hot_node(rig.sessions, node, cpu=0.05, now=start)
    async with _worker(rig, tmp_path):
        handle = await rig.start()
        for step in (1, 2, 3):  # low from the first tick; held for the window (60s) at 60s
            await rig.env.sleep(22)
            for node in ("jp-0", "jp-1", "jp-2"):
                _hot_node(rig.sessions, node, cpu=0.05, now=start + timedelta(seconds=22 * step))
        status = await _status(handle)
        assert status.details["waiting"]["phase"] == "drain", status.details["reason"]
        with rig.sessions() as session:
            drained = {n.id for n in node_store.list_nodes(session) if n.drain_requested}
            by = node_store.get_node(session, "jp-2").drain_requested_by
        assert drained == {"jp-2"} and by == "autoscaler"
        assert len(rig.commits()) == 1  # nothing committed while jp-2 drains

        with transaction(rig.sessions) as session:  # its lifecycle finishes the drain
            node_store.set_lifecycle_state(
                session, "jp-2", NodeState.DELETE, "drained", await rig.env.get_current_time()
            )
        await rig.env.sleep(6)
        assert rig.commits()[0] == "feat(xplane-autoscaler): scale jp pool to 2 nodes"
        assert (await _status(handle)).details["waiting"]["phase"] == "terraform"
        await handle.terminate()


async def test_silence_alone_replaces_nothing_and_nodes_given_up_are_replaced_within_budget(
    rig: Rig, tmp_path: Path
) -> None:
    """Four nodes go silent (an API replica died, say): no commit while their lifecycles
    hold them. Three are given up (deleted past the down grace): one decision replaces
    one of them, max_replace's default (1 node or 25 % of a pool of 4)."""
    config = {
        **CONFIG,
        "autoscale/svc.yaml": CONFIG["autoscale/svc.yaml"].replace(
            "jp: {min_nodes: 1, max_nodes: 5", "jp: {min_nodes: 4, max_nodes: 10"
        ),
    }
    start = await rig.env.get_current_time()
    with transaction(rig.sessions) as session:
        save_revision(session, "c" * 40, load_config_from_mapping(config), "test")
        set_pool(session, "svc", "jp", 4, scaled=False)
        session.execute(sa.delete(MetricSampleRow))  # the rig's hot jp-0 samples
    for node in ("jp-1", "jp-2", "jp-3"):  # in the CPU band: no load signal (and jp-0's)
        _hot_node(rig.sessions, node, cpu=0.5, now=start)
    async with _worker(rig, tmp_path):
        handle = await rig.start()
        await rig.env.sleep(150)  # five ticks, every node silent for minutes, still active
        status = await _status(handle)
        assert len(rig.commits()) == 1, rig.commits()
        assert status.details["desired"] == 4, status.details["reason"]
        assert "4 down, held until their lifecycle gives them up" in status.details["reason"]

        given_up = ("jp-1", "jp-2", "jp-3")
        now = await rig.env.get_current_time()
        with transaction(rig.sessions) as session:  # their lifecycles' down grace expired
            for node in given_up:
                node_store.set_lifecycle_state(session, node, NodeState.DELETE, "given up", now)
        for node in given_up:
            await handle.signal(AutoscaleWorkflow.node_lost, node)
        await rig.env.sleep(2)
        assert rig.commits()[0] == "feat(xplane-autoscaler): scale jp pool to 5 nodes"
        assert len(rig.commits()) == 2
        reason = (await _status(handle)).details["reason"]
        assert "replace 1 of 3 (max_replace 1)" in reason, reason
        # A loop left running on the shared time-skipping server slows every later test.
        await handle.terminate()


class _StoreDown(Exception):
    """The store refused the write (the worker died right after the push, as far as it goes)."""


def _no_store() -> Session:
    raise _StoreDown("store unreachable")


@pytest.mark.parametrize("died", ["after the push", "after recording the commit"])
async def test_a_retried_commit_that_finds_its_push_still_waits_for_terraform(
    rig: Rig, tmp_path: Path, died: str
) -> None:
    """The first attempt pushes, then dies before reporting back; its retry (same activity,
    same input) finds the commit on the remote: it is recorded once and awaited."""
    acts = AutoscaleActivities(rig.sessions, str(rig.bare), tmp_path / "work")
    # The same activity with no store: it pushes, then fails where it would record.
    storeless = AutoscaleActivities(
        cast(sessionmaker[Session], _no_store), str(rig.bare), tmp_path / "work"
    )
    attempts: list[int] = []

    @activity.defn(name="commit_node_pool")
    def commit_dies_once(request: CommitRequest) -> PoolCommit:
        attempts.append(activity.info().attempt)
        if activity.info().attempt > 1:
            return acts.commit_node_pool(request)
        if died == "after the push":
            storeless.commit_node_pool(request)  # raises _StoreDown after pushing
        acts.commit_node_pool(request)
        raise RuntimeError("worker died before reporting the result")

    async with _worker(rig, tmp_path, commit_activity=commit_dies_once):
        handle = await rig.start()
        await rig.env.sleep(10)
        status = await _status(handle)
        assert attempts == [1, 2]
        waiting = status.details["waiting"]
        assert waiting is not None, status.details["last_outcome"]
        assert waiting["phase"] == "terraform" and waiting["commit"] == rig.tip()
        assert rig.commits() == ["feat(xplane-autoscaler): scale jp pool to 2 nodes", "initial"]
        with rig.sessions() as session:
            kinds = [e.kind for e in list_events(session, kind_prefix="autoscale.")]
            pool = session.get(NodePoolRow, ("svc", "jp"))
            assert pool is not None and pool.pending_commit == rig.tip()
        assert kinds == ["autoscale.committed"]
        await handle.signal(
            AutoscaleWorkflow.terraform_finished,
            TerraformOutcome(commit=rig.tip(), status="succeeded"),
        )
        await rig.env.sleep(2)
        assert (await _status(handle)).details["waiting"]["phase"] == "nodes"
        await handle.terminate()


async def test_a_store_outage_while_nodes_are_awaited_is_waited_out(
    rig: Rig, tmp_path: Path
) -> None:
    """The store refuses every read for longer than the DB retry policy lasts (a minute,
    as in the fault test) while the autoscaler waits for the new node: the wait goes on,
    and once the store is back and the node is ready the commit's outcome is that node,
    not a failed run followed by a second decision."""
    acts = AutoscaleActivities(rig.sessions, str(rig.bare), tmp_path / "work")
    store_down = True
    refused = 0

    @activity.defn(name="count_ready_nodes")
    def count_ready_nodes(request: DecideRequest) -> int:
        nonlocal refused
        if store_down:
            refused += 1
            raise OSError("connection refused (the test's database outage)")
        return acts.count_ready_nodes(request)

    async with _worker(rig, tmp_path, count_activity=count_ready_nodes):
        handle = await rig.start()
        await rig.env.sleep(2)
        waiting = (await _status(handle)).details["waiting"]
        await handle.signal(
            AutoscaleWorkflow.terraform_finished,
            TerraformOutcome(commit=waiting["commit"], status="succeeded"),
        )
        await rig.env.sleep(40)  # well past the DB policy's 5 attempts (~3 s)
        assert refused > 5
        assert (await _status(handle)).details["waiting"]["phase"] == "nodes"
        store_down = False
        now = await rig.env.get_current_time()
        for node in ("jp-0", "jp-1"):  # jp-0 beat all along; jp-1 is the new node
            _hot_node(rig.sessions, node, cpu=0.9, now=now)
        await rig.env.sleep(10)
        status = await _status(handle)
        assert status.details["waiting"] is None
        assert status.details["last_outcome"] == "2 nodes ready"
        assert len(rig.commits()) == 2  # the initial commit and this one scale-up
        await handle.terminate()
