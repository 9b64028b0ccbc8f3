"""Replicas that find each other (`docs/roadmap.md` phase 6.1).

Store identity and the singleton loops.

Real parts: the Temporal dev server, SQLite (and PostgreSQL when running) stores
migrated by Alembic, and ``xplane worker`` / ``xplane api`` as real processes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import git
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from tests.support.waiting import until
from workers.loops import ensure_loops
from workflows.gitops_sync import GitOpsSyncWorkflow
from xplane import ids
from xplane.netutil import free_port
from xplane.settings import Settings
from xplane.store.migrate import upgrade
from xplane.temporal.client import connect
from xplane.temporal.cluster import ClusterMismatch, claim_cluster, store_id_of
from xplane.temporal.dev import TemporalDevServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(tmp_path_factory.mktemp("temporal"), ui=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(temporal: TemporalDevServer) -> AsyncIterator[Client]:
    yield await connect(temporal.address)


def _namespace(temporal: TemporalDevServer, name: str) -> str:
    """A namespace of the test's own: each test starts with no cluster claimed."""
    subprocess.run(
        [str(BIN / "temporal"), "operator", "namespace", "create", "--namespace", name,
         "--address", temporal.address],
        check=True, capture_output=True,
    )  # fmt: skip
    return name


def test_migration_creates_one_cluster_id_per_database(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    first = store_id_of(db_url)
    upgrade(db_url)  # a second replica migrating the same database

    assert store_id_of(db_url) == first and len(first) == 32
    other = f"sqlite:///{tmp_path}/other.db"
    upgrade(other)
    assert store_id_of(other) != first


async def test_two_stores_claiming_at_once_one_wins_the_other_names_both(
    temporal: TemporalDevServer,
) -> None:
    namespace = _namespace(temporal, "claim-race")
    client = await connect(temporal.address, namespace)
    results = await asyncio.gather(
        claim_cluster(client, "a" * 32, "xplane"),
        claim_cluster(client, "b" * 32, "xplane"),
        return_exceptions=True,
    )

    winners = [r for r in results if isinstance(r, str)]
    losers = [r for r in results if isinstance(r, ClusterMismatch)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert losers[0].temporal_id == winners[0]
    assert "a" * 32 in str(losers[0]) and "b" * 32 in str(losers[0])
    # The winner's store keeps its claim: claiming again is a no-op.
    assert await claim_cluster(client, winners[0], "xplane") == winners[0]


async def test_replicas_ensuring_loops_at_once_share_one_run_of_each(
    temporal: TemporalDevServer, tmp_path: Path
) -> None:
    namespace = _namespace(temporal, "ensure-race")
    settings = Settings(
        temporal_address=temporal.address,
        temporal_namespace=namespace,
        db_url=f"sqlite:///{tmp_path}/x.db",
        config_repo=str(tmp_path / "config"),
    )
    replicas = [await connect(temporal.address, namespace) for _ in range(3)]

    results = await asyncio.gather(*(ensure_loops(c, settings) for c in replicas))

    for loop_id in (ids.GITOPS_SYNC_ID, ids.WORLD_STATE_ID):
        runs = {loop.run_id for result in results for loop in result if loop.workflow_id == loop_id}
        assert len(runs) == 1, (loop_id, runs)
        listed = [
            w
            async for w in replicas[0].list_workflows(f"WorkflowId = '{loop_id}'")
            if w.status == WorkflowExecutionStatus.RUNNING
        ]
        assert [w.run_id for w in listed] == list(runs)
    # Without a config repo a replica still ensures world-state (and says why not the sync).
    bare = settings.model_copy(update={"config_repo": None})
    assert [loop.workflow_id for loop in await ensure_loops(replicas[0], bare)] == [
        ids.WORLD_STATE_ID
    ]


def _config_repo(path: Path) -> Path:
    shutil.copytree(ROOT / "example" / "gitops-config", path)
    repo = git.Repo.init(path, initial_branch="main")
    repo.git.add(A=True)
    repo.index.commit("config")
    return path


def _applied_config(db_url: str) -> object:
    from xplane.store.config_store import current_config
    from xplane.store.db import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            return current_config(session)
    finally:
        engine.dispose()


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def test_a_worker_on_another_database_refuses_and_names_both_ids(
    temporal: TemporalDevServer, tmp_path: Path
) -> None:
    """Worker 1 starts the loops with no manual step; a worker and an API replica on a
    second database refuse (exit 2), naming both cluster ids, and take no task."""
    namespace = "default"  # the one with XPlane's search attributes (the loops set them)
    db_a, db_b = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    env = {
        "XPLANE_TEMPORAL_ADDRESS": temporal.address,
        "XPLANE_TEMPORAL_NAMESPACE": namespace,
        "XPLANE_CONFIG_REPO": str(_config_repo(tmp_path / "config")),
        "XPLANE_DATA_DIR": str(tmp_path / "data"),
        "XPLANE_SYNC_INTERVAL": "1h",
    }
    first = _spawn([str(BIN / "xplane"), "worker", "--db", db_a], tmp_path / "w1.log", env)
    procs = [first]
    try:
        client = await connect(temporal.address, namespace)

        async def synced() -> bool:
            try:
                status = await client.get_workflow_handle(ids.GITOPS_SYNC_ID).query(
                    GitOpsSyncWorkflow.status
                )
            except Exception:
                return False
            return bool(status.runs)

        deadline = asyncio.get_running_loop().time() + 60
        while not await synced():
            assert first.poll() is None, (tmp_path / "w1.log").read_text()
            assert asyncio.get_running_loop().time() < deadline, "gitops-sync never ran"
            await asyncio.sleep(0.3)
        assert _applied_config(db_a) is not None  # the loop applied the repo to the store

        upgrade(db_b)
        id_a, id_b = store_id_of(db_a), store_id_of(db_b)
        second = _spawn([str(BIN / "xplane"), "worker", "--db", db_b], tmp_path / "w2.log", env)
        api = _spawn(
            [str(BIN / "xplane"), "api", "--db", db_b, "--port", str(free_port()),
             "--temporal", temporal.address],
            tmp_path / "api.log", env,
        )  # fmt: skip
        procs += [second, api]
        for proc, log in ((second, "w2.log"), (api, "api.log")):
            until(lambda p=proc: p.poll() is not None, f"{log} to exit", timeout=60)  # type: ignore[misc]
            output = (tmp_path / log).read_text()
            assert proc.returncode == 2, output
            assert id_a in output and id_b in output, output
        assert first.poll() is None  # the rightful worker keeps running
    finally:
        for proc in procs:
            _stop(proc)


def test_an_api_replica_serves_while_temporal_is_unreachable(tmp_path: Path) -> None:
    """The identity check never keeps the heartbeat path down: with Temporal unreachable
    the replica serves within the check's timeout and checks again in the background."""
    import httpx

    port = free_port()
    api = _spawn(
        [str(BIN / "xplane"), "api", "--db", f"sqlite:///{tmp_path}/x.db", "--port", str(port),
         "--temporal", f"127.0.0.1:{free_port()}"],
        tmp_path / "api.log", {},
    )  # fmt: skip

    def ready() -> bool:
        assert api.poll() is None, (tmp_path / "api.log").read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        until(ready, "the API to serve", timeout=45, every=0.2)
        assert "cannot check the cluster id" in (tmp_path / "api.log").read_text()
    finally:
        _stop(api)
