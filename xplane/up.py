"""``xplane up``: the whole control plane on one machine, with no cloud account.

Starts, in order, and stops in reverse order (every child by PID):
the Temporal dev server (web UI), the store (SQLite, migrated), a local config
repo seeded from ``example/gitops-config`` (unless ``--repo``), the worker, and
the ``gitops-sync`` loop; then waits for the first sync and prints what it
understood. ``up.json`` in the data directory records addresses and PIDs for
``xplane status`` and for tests.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from workflows import ids
from workflows.control_loop import LoopSettings, LoopStatus
from workflows.gitops_sync import GitOpsSyncParams, GitOpsSyncWorkflow
from xplane.localrepo import example_dir, seed_repo
from xplane.runtime import install_stop_signals
from xplane.settings import Settings
from xplane.temporal_client import connect
from xplane.temporal_dev import TemporalDevServer


class UpOptions(BaseModel):
    data_dir: Path = Path(".xplane")
    repo: str | None = None  # config repo; default: a local repo seeded from the example
    temporal_port: int = 7233  # 0 = pick a free port
    ui_port: int = 8233  # 0 = pick a free port
    sync_interval_seconds: float = 15.0


class UpInfo(BaseModel):
    """Written to ``<data_dir>/up.json`` while XPlane is up."""

    pid: int
    temporal_address: str
    temporal_ui: str
    temporal_pid: int | None
    db_url: str
    config_repo: str


Say = Callable[[str], None]


def _prepare_config_repo(options: UpOptions, say: Say) -> str:
    if options.repo:
        return options.repo
    path = options.data_dir / "config-repo"
    fresh = not (path / ".git").exists()
    sha = seed_repo(path, example_dir("gitops-config"), "chore: seed from example/gitops-config")
    say(f"config repo: {path} ({'seeded from example/gitops-config' if fresh else 'existing'}, "
        f"HEAD {sha[:8]})")  # fmt: skip
    return str(path.resolve())


async def _wait_first_sync(handle: WorkflowHandle, timeout: float = 60.0) -> LoopStatus:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status: LoopStatus = await handle.query("status", result_type=LoopStatus)
        if status.runs or status.errors:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the first GitOps sync did not finish in time")
        await asyncio.sleep(0.2)


async def run_up(options: UpOptions, say: Say = print) -> None:
    """Bring everything up, wait for Ctrl-C/SIGTERM, bring everything down."""
    from workers.main import build_worker
    from xplane.store.db import make_engine, make_sessionmaker
    from xplane.store.migrate import upgrade

    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    options = options.model_copy(update={"data_dir": data_dir})
    db_url = f"sqlite:///{data_dir / 'xplane.db'}"
    stop = asyncio.Event()
    install_stop_signals(stop)

    say("[1/4] store: migrating " + db_url)
    upgrade(db_url)
    engine = make_engine(db_url)
    repo = _prepare_config_repo(options, say)

    say("[2/4] temporal: starting the dev server")
    server = TemporalDevServer(
        data_dir / "temporal",
        port=options.temporal_port or None,
        ui_port=options.ui_port or None,
    )
    server.start()
    info_path = data_dir / "up.json"
    try:
        settings = Settings.from_env(
            temporal_address=server.address, db_url=db_url, data_dir=data_dir, config_repo=repo
        )
        client: Client = await connect(server.address)
        say(f"      Temporal {server.address}, web UI {server.ui_url}")
        say("[3/4] worker: starting")
        async with build_worker(client, settings, make_sessionmaker(engine)):
            say("[4/4] gitops-sync: starting the loop")
            handle = await client.start_workflow(
                GitOpsSyncWorkflow.run,
                GitOpsSyncParams(
                    source=repo,
                    settings=LoopSettings(interval_seconds=options.sync_interval_seconds),
                ),
                id=ids.GITOPS_SYNC_ID,
                task_queue=settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                run_timeout=None,
                task_timeout=timedelta(seconds=10),
            )
            await handle.signal(GitOpsSyncWorkflow.sync_now)
            status = await _wait_first_sync(handle)
            last = status.details.get("last_sync", {})
            say(f"      synced {str(last.get('sha', '?'))[:8]}: {last.get('status')} "
                f"({last.get('message', '')})")  # fmt: skip
            info = UpInfo(
                pid=os.getpid(),
                temporal_address=server.address,
                temporal_ui=server.ui_url,
                temporal_pid=server.process.pid if server.process else None,
                db_url=db_url,
                config_repo=repo,
            )
            info_path.write_text(json.dumps(info.model_dump(mode="json"), indent=2))
            say(f"XPlane is up. Temporal UI: {server.ui_url}  (Ctrl-C stops everything)")
            await stop.wait()
            say("stopping: worker")
    finally:
        info_path.unlink(missing_ok=True)
        say("stopping: temporal dev server")
        server.stop()
        engine.dispose()
        say("stopped")
