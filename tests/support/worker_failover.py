"""A worker killed (SIGKILL) during a git push, and a surviving worker that resumes it.

Shared by tests/test_worker_failover.py (asserts) and bench/worker_failover.py
(reports). Everything is real: the Temporal dev server, two worker processes
running the autoscaler's workflow and activities, a SQLite store, and a bare git
repository whose ``post-receive`` hook holds the first push open -- the remote has
taken the commit, the pushing worker has not heard back -- until the worker dies.

``python -m tests.support.worker_failover worker ...`` is one worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import git

ROOT = Path(__file__).resolve().parent.parent.parent
TASK_QUEUE = "failover"
CONFIG = {
    "regions/jp.yaml": "provider: aws\nlocation: ap-northeast-1\n",
    "autoscale/svc.yaml": """
service: svc
global: {cpu_window: 60s}
regions:
  jp: {min_nodes: 1, max_nodes: 5, scale_up_cpu: 0.7, scale_down_cpu: 0.3}
cooldown: {scale_up: 300s, scale_down: 600s}
jitter: 0s
interval: 600s
terraform_timeout: 600s
node_ready_timeout: 60s
""",
}
TFVARS = 'region         = "ap-northeast-1"\nservice        = "svc"\nnode_count     = 1\n'
# The first push blocks after the remote took it; later ones pass. `pushes` gets a line each.
HOOK = """#!/bin/sh
cat >/dev/null
date +%s.%N >> "{dir}/pushes"
if [ ! -e "{dir}/held" ]; then
  touch "{dir}/held"
  sleep 600
fi
"""


# ------------------------------------------------------------------ worker process
async def _serve(args: argparse.Namespace) -> None:
    from temporalio.worker import Worker

    from activities.autoscale import AutoscaleActivities
    from activities.calendar import CalendarActivities
    from workflows.autoscale import AutoscaleWorkflow
    from xplane.store.db import make_engine, make_sessionmaker
    from xplane.temporal.client import connect

    client = await connect(args.address)
    sessions = make_sessionmaker(make_engine(args.db))
    acts = AutoscaleActivities(sessions, args.repo, Path(args.workdir))
    worker = Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[AutoscaleWorkflow],
        activities=[
            acts.decide_autoscale,
            acts.commit_node_pool,
            acts.record_terraform_result,
            acts.count_ready_nodes,
            acts.drain_nodes,
            acts.nodes_not_yet_drained,
            CalendarActivities(sessions).record_nodes_active,
        ],
        activity_executor=ThreadPoolExecutor(4),
    )
    async with worker:
        Path(args.ready).touch()
        await asyncio.Event().wait()  # until killed


# -------------------------------------------------------------------- the scenario
def _seed(tmp: Path) -> tuple[str, Path]:
    """(store URL, bare repo): config, a bootstrapped pool of 1 and one hot node."""
    import xplane.store.tables  # noqa: F401
    from xplane.config.loader import load_config_from_mapping
    from xplane.domain import NodeState
    from xplane.store import nodes as node_store
    from xplane.store.config_store import save_revision
    from xplane.store.db import Base, make_engine, make_sessionmaker, transaction, utcnow
    from xplane.store.heartbeats import Heartbeat, apply_heartbeats
    from xplane.store.pools import set_pool
    from xplane.store.registration import Registration, register_node

    bare = tmp / "infra.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    seed = git.Repo.clone_from(str(bare), tmp / "seed")
    (tmp / "seed/infra/node-pool").mkdir(parents=True)
    (tmp / "seed/infra/node-pool/jp.tfvars").write_text(TFVARS)
    seed.git.add(A=True)
    seed.index.commit("initial")
    seed.git.push("origin", "HEAD:refs/heads/main")
    hook = bare / "hooks" / "post-receive"
    hook.write_text(HOOK.format(dir=tmp))
    hook.chmod(0o755)

    url = f"sqlite:///{tmp}/store.db"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    now = utcnow()
    with transaction(sessions) as session:
        save_revision(session, "b" * 40, load_config_from_mapping(CONFIG), "test")
        set_pool(session, "svc", "jp", 1, scaled=False)
        register_node(
            session,
            Registration(
                node_id="jp-0", service="svc", region="jp", address="127.0.20.1", token_hash="t"
            ),
            now,
            timedelta(seconds=30),
        )
        node_store.set_lifecycle_state(session, "jp-0", NodeState.ACTIVE, "test", now)
    beats = [
        Heartbeat(
            node_id="jp-0",
            token_hash="t",
            at=now - timedelta(seconds=s),
            cpu=0.9,
            rtt_ms=10.0,
            error_rate=0.0,
            qps=None,
            probes_ok=0,
            probes_total=0,
            reported_status="up",
        )
        for s in (40, 20, 0)
    ]
    with transaction(sessions) as session:
        apply_heartbeats(session, beats, timedelta(seconds=30))
    engine.dispose()
    return url, bare


Proc = subprocess.Popen[bytes]


def _spawn_worker(tmp: Path, name: str, address: str, db: str, repo: Path) -> Proc:
    ready = tmp / f"{name}.ready"
    log = (tmp / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.worker_failover", "worker", "--address", address,
         "--db", db, "--repo", str(repo), "--workdir", str(tmp / name), "--ready", str(ready)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _wait(
    what: str, check: Any, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the worker exited ({proc.returncode})")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _stop(proc: Proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def _poll(check: Callable[[], Awaitable[Any]], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)
    return value


async def run_failover(
    tmp: Path, deadline_s: float = 60.0, hold_s: float | None = None
) -> dict[str, Any]:
    """Kill the worker holding ``commit_node_pool`` mid-push; measure the survivor's resume.

    ``deadline_s``: how long to wait for the retry and then for the Terraform wait.
    ``hold_s``: how long the push is held before the kill (default: the heartbeat
    timeout + 2 s, so the first attempt must have stayed alive by its beats).
    """
    from temporalio.api.enums.v1 import EventType
    from temporalio.service import RPCError
    from temporalio.testing import WorkflowEnvironment

    from workflows import policies
    from workflows.autoscale import AutoscaleParams, AutoscaleWorkflow
    from workflows.control_loop import LoopSettings
    from xplane.store.db import make_engine, make_sessionmaker
    from xplane.store.events import list_events
    from xplane.temporal.client import connect
    from xplane.temporal.dev import SEARCH_ATTRIBUTES

    if hold_s is None:
        hold_s = policies.HEARTBEAT_TIMEOUT.total_seconds() + 2
    db, bare = _seed(tmp)
    extra = [a for n, k in SEARCH_ATTRIBUTES.items() for a in ("--search-attribute", f"{n}={k}")]
    temporal = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal, ui=False, dev_server_extra_args=extra
    )
    procs: list[Proc] = []
    try:
        address = env.client.service_client.config.target_host
        client = await connect(address)
        first = _spawn_worker(tmp, "worker-1", address, db, bare)
        procs.append(first)
        await asyncio.to_thread(_wait, "worker 1 ready", (tmp / "worker-1.ready").exists, 60, first)
        handle = await client.start_workflow(
            AutoscaleWorkflow.run,
            AutoscaleParams(
                service="svc",
                region="jp",
                settings=LoopSettings(interval_seconds=600, jitter_seconds=0),
            ),
            id=f"autoscale-svc-jp-{uuid.uuid4().hex[:6]}",
            task_queue=TASK_QUEUE,
        )
        # Worker 1 pushes; the remote takes the commit and holds the push open.
        await asyncio.to_thread(_wait, "the first push", (tmp / "held").exists, 60, first)
        held_at = time.monotonic()
        second = _spawn_worker(tmp, "worker-2", address, db, bare)
        procs.append(second)
        await asyncio.to_thread(
            _wait, "worker 2 ready", (tmp / "worker-2.ready").exists, 60, second
        )
        # Held past the heartbeat timeout: a live worker's beats keep its attempt alive.
        await asyncio.sleep(max(0.0, held_at + hold_s - time.monotonic()))
        pending = (await handle.describe()).raw_description.pending_activities
        attempt_before_kill = pending[0].attempt if pending else 0
        held_s = time.monotonic() - held_at
        killed_at = datetime.now().astimezone()
        os.killpg(first.pid, signal.SIGKILL)  # the worker, its git push and the hook under it
        first.wait()

        async def commit_resumed() -> Any:
            history = await handle.fetch_history()
            return next(
                (
                    e
                    for e in history.events
                    if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                    and e.activity_task_started_event_attributes.attempt > 1
                ),
                None,
            )

        async def waiting_for_terraform() -> dict[str, Any] | None:
            try:  # answered once a live worker holds the workflow (sticky queue timeout)
                status = await handle.query(AutoscaleWorkflow.status)
            except RPCError:
                return None
            waiting = status.details.get("waiting")
            return waiting if waiting and waiting.get("phase") == "terraform" else None

        started = await _poll(commit_resumed, "commit_node_pool retried", deadline_s)
        resumed_at = started.event_time.ToDatetime(tzinfo=killed_at.tzinfo)
        waiting = await _poll(waiting_for_terraform, "the Terraform wait", deadline_s)
        moved_on_s = (datetime.now().astimezone() - killed_at).total_seconds()
        repo = git.Repo(bare)
        subjects = [str(c.message).splitlines()[0] for c in repo.iter_commits("main")]
        engine = make_engine(db)
        with make_sessionmaker(engine)() as session:
            events = [e.kind for e in list_events(session, kind_prefix="autoscale.")]
        engine.dispose()
        await handle.terminate()
        return {
            "killed_during": "git push (remote took the commit; post-receive held it open)",
            "held_before_kill_s": round(held_s, 2),
            "attempt_before_kill": attempt_before_kill,
            "resume_after_kill_s": round((resumed_at - killed_at).total_seconds(), 2),
            "heartbeat_timeout_s": policies.HEARTBEAT_TIMEOUT.total_seconds(),
            "start_to_close_timeout_s": policies.EXTERNAL_TIMEOUT.total_seconds(),
            "workflow_waiting_for_terraform_after_kill_s": round(moved_on_s, 2),
            "attempt": started.activity_task_started_event_attributes.attempt,
            "waiting_for_commit": waiting["commit"],
            "tip": repo.commit("main").hexsha,
            "scale_commits": [s for s in subjects if s.startswith("feat(xplane-autoscaler)")],
            "pushes": len((tmp / "pushes").read_text().split()),
            "events": events,
        }
    finally:
        for proc in procs:
            _stop(proc)
        await env.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.worker_failover")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker")
    for flag in ("--address", "--db", "--repo", "--workdir", "--ready"):
        worker.add_argument(flag, required=True)
    run = sub.add_parser("run")
    run.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    if args.command == "worker":
        asyncio.run(_serve(args))
    else:
        print(json.dumps(asyncio.run(run_failover(Path(args.dir))), indent=2))


if __name__ == "__main__":
    main()
