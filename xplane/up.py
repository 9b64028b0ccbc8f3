"""``xplane up``: the whole control plane on one machine, with no cloud account.

Before anything starts it refuses a second ``xplane up`` on the same data directory,
stops what an earlier one that died left running (pid files with start times), and
checks its ports (one-line error naming the holder and the flag). What it starts dies
with it even on SIGKILL (parent-death signal; ``XPLANE_LIFELINE`` for the agents and
CI workers started through git and terraform), and gets none of its secrets.

Starts, in order, and stops in reverse order (every child by PID):

1. the store (SQLite, migrated) and local secrets (``<data>/secrets``, mode 600);
2. a config repo seeded from ``example/gitops-config`` (unless ``--repo``) and a
   bare infra repo seeded with the shared Terraform modules, whose
   ``post-receive`` hook is the local CI runner (terraform apply + signed webhook);
3. PowerDNS (when ``pdns_server`` is installed) with the example zone;
4. the Temporal dev server with its web UI and XPlane's search attributes;
5. the API (registrations, heartbeats, CI webhooks, ``/metrics``) and the worker;
6. the ``gitops-sync`` and ``world-state`` loops. The first sync starts every
   region's lifecycle, which commits its node pool (``local`` module: real
   ``xplane agent`` processes on loopback addresses); agents register, warm up,
   become active, and the GTM loop publishes them to PowerDNS by weight.

``up.json`` in the data directory records addresses and PIDs for ``xplane
status``, ``xplane demo`` and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import git
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from workflows.control_loop import LoopSettings, LoopStatus
from workflows.gitops_sync import GitOpsSyncParams, GitOpsSyncWorkflow
from workflows.world_state import WorldStateParams, WorldStateWorkflow
from xplane import ids
from xplane.heartbeat import INTERVAL_ENV, HeartbeatSettings
from xplane.localrepo import AUTHOR, example_dir, seed_repo
from xplane.procs import (
    PortNeed,
    ProcRef,
    check_ports,
    describe,
    lifeline_env,
    read_pid_file,
    stop,
    stop_pid_file,
    write_pid_file,
)
from xplane.settings import Settings
from xplane.temporal.client import connect
from xplane.temporal.dev import TemporalDevServer
from xplane.temporal.runtime import install_stop_signals

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.engine import Engine

    from xplane.dns.pdns_server import PdnsServer

# Fast failover for the local demo; XPLANE_HEARTBEAT_* still win. One setting for the
# API, the worker and `xplane status`: every reader agrees when a node is down.
HEARTBEAT_INTERVAL = "2s"


class UpOptions(BaseModel):
    data_dir: Path = Path(".xplane")
    repo: str | None = None  # config repo; default: a local repo seeded from the example
    temporal_port: int = 7233  # 0 = pick a free port
    ui_port: int = 8233  # 0 = pick a free port
    api_port: int = 8080  # 0 = pick a free port
    pdns_api_port: int = 8081  # the example's gtm/svc-plus.yaml names 127.0.0.1:8081
    dns_port: int = 5354
    # Each local node serves /healthz on <its loopback address>:<this>; 0 = a port free
    # on every address (two `xplane up` on one machine then never collide).
    node_health_port: int = 18080
    sync_interval_seconds: float = 15.0
    wait_dns_seconds: float = 120.0  # how long to show progress until DNS answers


class UpInfo(BaseModel):
    """Written to ``<data_dir>/up.json`` while XPlane is up."""

    pid: int
    temporal_address: str
    temporal_ui: str
    temporal_pid: int | None
    api_url: str
    db_url: str
    config_repo: str
    infra_repo: str
    dns_port: int | None
    pdns_api_url: str | None
    pool_state_dir: str
    heartbeat_timeout_seconds: float | None = None  # for `xplane status` in another shell


Say = Callable[[str], None]


def _secret(directory: Path, name: str) -> tuple[str, Path]:
    """A random secret kept in a 0600 file (created once)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / name
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip(), path


def admin_login(factory: sessionmaker[Session], secret_dir: Path, api_url: str, say: Say) -> Path:
    """A fresh admin API token for this machine's operator (the one of an earlier run
    is replaced), kept in a 0600 file, and how to use it."""
    from xplane.store.api_tokens import create_token
    from xplane.store.db import transaction, utcnow

    with transaction(factory) as session:
        expires = utcnow() + timedelta(days=30)
        new = create_token(session, "local-admin", "admin", [], expires, "xplane up", replace=True)
    path = secret_dir / "admin-api.token"
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_text(new.token + "\n")
    say(f"      log in as admin: export XPLANE_API_URL={api_url} "
        f"XPLANE_ADMIN_TOKEN=$(cat {path})  (API token local-admin, 30 days)")  # fmt: skip
    return path


def _prepare_config_repo(options: UpOptions, say: Say) -> str:
    if options.repo:
        return options.repo
    path = options.data_dir / "config-repo"
    fresh = not (path / ".git").exists()
    sha = seed_repo(path, example_dir("gitops-config"), "chore: seed from example/gitops-config")
    say(f"      config repo {path} ({'seeded from example/gitops-config' if fresh else 'kept'}, "
        f"HEAD {sha[:8]}); edit, commit, and XPlane syncs it")  # fmt: skip
    return str(path.resolve())


def _prepare_infra_repo(data_dir: Path) -> Path:
    """A bare infra repo holding the shared modules; pools are committed by XPlane."""
    from xplane.infra.skeleton import skeleton_files

    bare = data_dir / "infra.git"
    if (bare / "HEAD").exists():
        return bare
    seed = data_dir / "infra-seed"
    shutil.rmtree(seed, ignore_errors=True)
    repo = git.Repo.init(seed, initial_branch="main")
    for rel, text in skeleton_files().items():
        target = seed / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if rel.endswith(".sh"):
            target.chmod(0o755)
    repo.git.add(A=True)
    repo.index.commit("chore: shared node-pool modules", author=AUTHOR, committer=AUTHOR)
    git.Repo.init(bare, bare=True, initial_branch="main")
    repo.git.push(str(bare), "main:main")
    shutil.rmtree(seed, ignore_errors=True)
    return bare


def _pool_agent(pid_file: Path) -> ProcRef | None:
    """The running agent a local pool's pid file names, if it is still that agent.

    ``"<pid> <start time>"`` is checked by start time; an older ``"<pid>"`` file by the
    agent's command line (``--node-id <node>``), so a recycled pid is never stopped."""
    ref = read_pid_file(pid_file)
    if ref is not None:
        return ref
    with contextlib.suppress(ValueError, OSError):
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if f"--node-id {pid_file.stem} ".encode() in cmdline:
            return ProcRef.of(pid)
    return None


def stop_pool_agents(state_dir: Path) -> int:
    """SIGTERM every agent the local node pool started (PID files), SIGKILL stragglers."""
    pid_files = list(state_dir.glob("*.pid"))
    count = stop([ref for path in pid_files if (ref := _pool_agent(path)) is not None])
    for pid_file in pid_files:
        pid_file.unlink(missing_ok=True)
    return count


class UpError(Exception):
    """``xplane up`` cannot start; the message is one line for the user."""


def _claim(data_dir: Path) -> Path:
    """Record this ``xplane up`` in ``<data_dir>/up.pid``; refuse a second one on the same
    data directory (a dead one's file is just replaced)."""
    path = data_dir / "up.pid"
    other = read_pid_file(path)
    if other is not None and other.pid != os.getpid():
        raise UpError(
            f"xplane up is already running for {data_dir} ({describe(other.pid)}); "
            "stop it (Ctrl-C) or choose another --data-dir"
        )
    write_pid_file(path, os.getpid())
    return path


def stop_leftovers(data_dir: Path) -> int:
    """Stop what an earlier ``xplane up`` of ``data_dir`` that died left running, by its
    pid files (each checked by start time): Temporal, PowerDNS, CI workers, node agents."""
    from xplane.infra.local_runner import stop_workers

    count = stop_pid_file(data_dir / "temporal" / "temporal.pid", group=True)
    count += stop_pid_file(data_dir / "pdns" / "pdns_server.pid", group=True)
    count += stop_workers(data_dir / "runner")
    return count + stop_pool_agents(data_dir / "pool")


def port_needs(options: UpOptions, dns: bool) -> list[PortNeed]:
    """The fixed ports ``xplane up`` listens on (0 = any free: nothing to check)."""
    needs = [
        PortNeed(options.temporal_port, "Temporal", "--temporal-port"),
        PortNeed(options.ui_port, "Temporal web UI", "--ui-port"),
        PortNeed(options.api_port, "XPlane API", "--api-port"),
        # The local nodes' addresses are loopback /24s: a holder on any address collides.
        PortNeed(options.node_health_port, "local nodes' /healthz", "--node-health-port",
                 host="0.0.0.0"),
    ]  # fmt: skip
    if dns:
        needs += [
            PortNeed(options.pdns_api_port, "PowerDNS API", "--pdns-api-port"),
            PortNeed(options.dns_port, "PowerDNS DNS", "--dns-port", protos=("tcp", "udp")),
        ]
    return needs


def _reapply_pools(runner_dir: Path, bare: Path) -> None:
    """After a restart the agents are gone: apply every pool at HEAD again, from scratch."""
    from xplane.infra.changes import ZERO_SHA
    from xplane.infra.local_runner import enqueue, start_runner

    shutil.rmtree(runner_dir / "state", ignore_errors=True)
    head = git.Repo(bare).commit("main").hexsha
    enqueue(runner_dir, [f"{ZERO_SHA} {head} refs/heads/main"])
    start_runner(runner_dir)


async def _wait_first_sync(handle: WorkflowHandle, timeout: float = 60.0) -> LoopStatus:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await handle.query(GitOpsSyncWorkflow.status)
        if status.runs or status.errors:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the first GitOps sync did not finish in time")
        await asyncio.sleep(0.2)


def _dns_answers(name: str, port: int) -> list[str]:
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.lifetime = 1.0
    try:
        return sorted(str(r) for r in resolver.resolve(name, "A"))
    except Exception:
        return []


async def _show_progress(
    stop: asyncio.Event,
    options: UpOptions,
    say: Say,
    settings: Settings,
    domain: str | None,
    dns: bool,
) -> None:
    """Long steps show progress: nodes by state until the service resolves."""
    from xplane.status import store_report

    deadline = time.monotonic() + options.wait_dns_seconds
    last = ""
    while not stop.is_set() and time.monotonic() < deadline:
        report = await asyncio.to_thread(store_report, settings.db_url, settings.heartbeat.timeout)
        states: dict[str, int] = {}
        for node in report.nodes:
            states[node.state] = states.get(node.state, 0) + 1
        answers = (
            await asyncio.to_thread(_dns_answers, domain, options.dns_port)
            if dns and domain
            else []
        )
        line = f"      nodes: {states or 'none yet'}" + (f"; {domain} -> {answers}" if dns else "")
        if line != last:
            say(line)
            last = line
        if answers:
            say(f"      {domain} resolves: dig @127.0.0.1 -p {options.dns_port} {domain}")
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=2)
    if not stop.is_set():
        say("      still converging; watch it with `xplane status --watch`")


async def run_up(options: UpOptions, say: Say = print) -> None:
    """Bring everything up, wait for Ctrl-C/SIGTERM, bring everything down.

    Raises :class:`UpError` or :class:`~xplane.procs.PortBusy` (one-line messages) when it
    cannot start: another ``xplane up`` on the data directory, or a port in use."""
    from xplane.dns.pdns_server import pdns_available

    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    claim = _claim(data_dir)
    try:
        # Descendants this process cannot signal (agents started through git, terraform and
        # setsid) watch this and exit when it is gone, even after a SIGKILL.
        os.environ.update(lifeline_env())
        stopped = stop_leftovers(data_dir)
        if stopped:
            say(f"      stopped {stopped} process(es) left running by an earlier `xplane up`")
        check_ports(port_needs(options, pdns_available()))
        await _run_up(options.model_copy(update={"data_dir": data_dir}), say)
    finally:
        claim.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Secrets:
    """The local secrets ``xplane up`` hands to its API, worker, CI runner and PowerDNS."""

    bootstrap: str
    bootstrap_file: Path
    admin: str
    webhook: str
    pdns_api_key: str


@dataclass(frozen=True)
class _Repos:
    config: str  # the config repo's path or URL
    infra: Path  # the bare infra repo
    pool_dir: Path  # the local node pool's state (agents' pid files)
    runner_dir: Path  # the local CI runner's directory


async def _run_up(options: UpOptions, say: Say) -> None:
    from xplane.netutil import free_port

    data_dir = options.data_dir
    db_url = f"sqlite:///{data_dir / 'xplane.db'}"
    stop = asyncio.Event()
    install_stop_signals(stop)
    api_port = options.api_port or free_port()
    api_url = f"http://127.0.0.1:{api_port}"

    say("[1/6] store and secrets: " + db_url)
    engine = _open_store(db_url)
    secrets = _create_secrets(data_dir / "secrets")
    _export_environment(secrets)

    say("[2/6] repos: config and infra (local CI runner as the infra repo's post-receive hook)")
    repos = _prepare_repos(options, api_url, secrets, say)
    pdns = _start_dns(options, secrets, say)
    server = _temporal_server(options)
    info_path = data_dir / "up.json"
    try:
        if pdns is not None:
            _create_zones(pdns, repos.config, data_dir)
        say("[4/6] temporal: starting the dev server")
        server.start()
        say(f"      Temporal {server.address}, web UI {server.ui_url}")
        settings = _settings(server, db_url, data_dir, repos)
        await _serve_api_worker_and_loops(
            options, say, stop, settings, engine, server, api_port, repos, pdns, info_path
        )
    finally:
        _stop_everything(say, info_path, repos, server, pdns, engine)


def _open_store(db_url: str) -> Engine:
    """Step 1: the SQLite store, migrated to head."""
    from xplane.store.db import make_engine
    from xplane.store.migrate import upgrade

    upgrade(db_url)
    return make_engine(db_url)


def _create_secrets(secret_dir: Path) -> _Secrets:
    """Step 1: the local secrets, each in a 0600 file (created once, then kept)."""
    bootstrap, bootstrap_file = _secret(secret_dir, "bootstrap.token")
    return _Secrets(
        bootstrap=bootstrap,
        bootstrap_file=bootstrap_file,
        admin=_secret(secret_dir, "admin.token")[0],
        webhook=_secret(secret_dir, "webhook.secret")[0],
        pdns_api_key=_secret(secret_dir, "pdns-api.key")[0],
    )


def _export_environment(secrets: _Secrets) -> None:
    """Step 1: the secrets and the demo's node timings, for the API and worker in this process."""
    # Fast lifecycles for the local demo (a killed agent is replaced within a minute).
    os.environ.setdefault("XPLANE_NODE_WARMUP", "5")
    os.environ.setdefault("XPLANE_NODE_DOWN_GRACE", "20")
    os.environ.setdefault("XPLANE_NODE_DRAIN_TIMEOUT", "5")
    os.environ.update(
        XPLANE_BOOTSTRAP_TOKEN=secrets.bootstrap,
        XPLANE_ADMIN_TOKEN=secrets.admin,
        XPLANE_WEBHOOK_SECRET=secrets.webhook,
        PDNS_API_KEY=secrets.pdns_api_key,
    )


def _prepare_repos(options: UpOptions, api_url: str, secrets: _Secrets, say: Say) -> _Repos:
    """Step 2: the config repo, and the bare infra repo with the local CI runner as its hook."""
    from xplane.infra.local_runner import install_hook
    from xplane.netutil import free_port

    data_dir = options.data_dir
    config = _prepare_config_repo(options, say)
    bare = _prepare_infra_repo(data_dir)
    pool_dir = data_dir / "pool"
    pool_dir.mkdir(exist_ok=True)
    empty_rc = data_dir / "terraformrc"
    empty_rc.touch()
    runner_dir = install_hook(
        bare,
        {
            "TF_VAR_api_url": api_url,
            "TF_VAR_token_file": str(secrets.bootstrap_file),
            "TF_VAR_state_dir": str(pool_dir),
            "TF_VAR_health_port": str(options.node_health_port or free_port("0.0.0.0")),
            "TF_VAR_agent_command": str(Path(sys.executable).parent / "xplane"),
            "XPLANE_WEBHOOK_URL": f"{api_url}/webhooks/terraform",
            "XPLANE_WEBHOOK_SECRET": secrets.webhook,
            "TF_CLI_CONFIG_FILE": str(empty_rc),
            "TF_IN_AUTOMATION": "1",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        },
        work_dir=data_dir / "runner",
    )
    return _Repos(config=config, infra=bare, pool_dir=pool_dir, runner_dir=runner_dir)


def _start_dns(options: UpOptions, secrets: _Secrets, say: Say) -> PdnsServer | None:
    """Step 3: PowerDNS with its API, when ``pdns_server`` is installed (else None)."""
    from xplane.dns.pdns_server import PdnsServer, pdns_available

    if not pdns_available():
        say("[3/6] dns: pdns_server not installed (apt-get install pdns-server "
            "pdns-backend-sqlite3): weights are computed and shown by `xplane status`, "
            "DNS applies fail and are reported")  # fmt: skip
        return None
    say(f"[3/6] dns: PowerDNS on 127.0.0.1:{options.dns_port} (API :{options.pdns_api_port})")
    pdns = PdnsServer(
        options.data_dir / "pdns",
        api_key=secrets.pdns_api_key,
        api_port=options.pdns_api_port,
        dns_port=options.dns_port,
    )
    pdns.start()
    return pdns


def _create_zones(pdns: PdnsServer, config_repo: str, data_dir: Path) -> None:
    """Step 3: the zones the config publishes into (PowerDNS refuses records without one)."""
    for zone in _zones(config_repo, data_dir):
        pdns.ensure_zone(zone)


def _temporal_server(options: UpOptions) -> TemporalDevServer:
    """Step 4: the Temporal dev server (started by the caller, inside its clean-up)."""
    return TemporalDevServer(
        options.data_dir / "temporal",
        port=options.temporal_port or None,
        ui_port=options.ui_port or None,
    )


def _settings(server: TemporalDevServer, db_url: str, data_dir: Path, repos: _Repos) -> Settings:
    """The worker's settings; the heartbeat interval is the demo's unless the environment's."""
    return Settings.from_env(
        temporal_address=server.address,
        db_url=db_url,
        data_dir=data_dir,
        config_repo=repos.config,
        infra_repo=str(repos.infra),
        heartbeat=HeartbeatSettings.from_env(
            interval=os.environ.get(INTERVAL_ENV) or HEARTBEAT_INTERVAL
        ),
    )


async def _serve_api_worker_and_loops(
    options: UpOptions,
    say: Say,
    stop: asyncio.Event,
    settings: Settings,
    engine: Engine,
    server: TemporalDevServer,
    api_port: int,
    repos: _Repos,
    pdns: PdnsServer | None,
    info_path: Path,
) -> None:
    """Steps 5 and 6: the API and the worker, then the loops; returns once stopped."""
    from workers.main import build_worker
    from xplane.api.serve import serve_in_thread
    from xplane.store.db import make_sessionmaker

    client: Client = await connect(server.address)
    app = _create_api(settings, server.address, api_port)
    api_url = f"http://127.0.0.1:{api_port}"
    say(f"[5/6] api {api_url} and worker")
    with serve_in_thread(app, port=api_port):
        worker = build_worker(
            client, settings, make_sessionmaker(engine), pool_provider_override="local"
        )
        async with worker:
            if git.Repo(repos.infra).commit("main").tree.join("infra/node-pool").trees:
                _reapply_pools(repos.runner_dir, repos.infra)  # a restart: bring the agents back
            say("[6/6] loops: gitops-sync, world-state")
            handle = await _start_loops(client, settings, repos.config, options)
            _report_first_sync(await _wait_first_sync(handle), say)
            info = _up_info(server, api_url, settings, repos, pdns, options)
            info_path.write_text(json.dumps(info.model_dump(mode="json"), indent=2))
            say(f"XPlane is up. Temporal UI: {server.ui_url}  API: {api_url}  "
                f"Console: {api_url}/ui  (Ctrl-C stops everything)")  # fmt: skip
            admin_login(make_sessionmaker(engine), options.data_dir / "secrets", api_url, say)
            await _show_progress_until_stopped(stop, options, say, settings, pdns is not None)
            say("stopping: worker and api")


def _create_api(settings: Settings, temporal_address: str, api_port: int) -> FastAPI:
    """Step 5: the API app, signalling workflows through Temporal."""
    from xplane.api.actions import TemporalActions
    from xplane.api.app import create_app
    from xplane.api.settings import ApiSettings
    from xplane.temporal.notifier import TemporalNotifier

    notifier = TemporalNotifier(None, settings.task_queue, address=temporal_address)
    actions = TemporalActions(address=temporal_address)
    api_settings = ApiSettings.from_env(
        db_url=settings.db_url, port=api_port, heartbeat=settings.heartbeat
    )
    return create_app(api_settings, notifier=notifier, webhook_notifier=notifier, actions=actions)


def _report_first_sync(status: LoopStatus, say: Say) -> None:
    last = status.details.get("last_sync", {})
    say(f"      synced {str(last.get('sha', '?'))[:8]}: {last.get('status')} "
        f"({last.get('message', '')})")  # fmt: skip


def _up_info(
    server: TemporalDevServer,
    api_url: str,
    settings: Settings,
    repos: _Repos,
    pdns: PdnsServer | None,
    options: UpOptions,
) -> UpInfo:
    """What ``up.json`` records for ``xplane status``, ``xplane demo`` and tests."""
    return UpInfo(
        pid=os.getpid(),
        temporal_address=server.address,
        temporal_ui=server.ui_url,
        temporal_pid=server.process.pid if server.process else None,
        api_url=api_url,
        db_url=settings.db_url,
        config_repo=repos.config,
        infra_repo=str(repos.infra),
        dns_port=options.dns_port if pdns else None,
        pdns_api_url=pdns.api_url if pdns else None,
        pool_state_dir=str(repos.pool_dir),
        heartbeat_timeout_seconds=settings.heartbeat.timeout_seconds,
    )


async def _show_progress_until_stopped(
    stop: asyncio.Event, options: UpOptions, say: Say, settings: Settings, dns: bool
) -> None:
    domain = _first_domain(settings.db_url)
    progress = asyncio.create_task(_show_progress(stop, options, say, settings, domain, dns))
    await stop.wait()
    progress.cancel()


def _stop_everything(
    say: Say,
    info_path: Path,
    repos: _Repos,
    server: TemporalDevServer,
    pdns: PdnsServer | None,
    engine: Engine,
) -> None:
    """In reverse order: CI workers, node agents, Temporal, PowerDNS, the store."""
    from xplane.infra.local_runner import stop_workers, wait_idle

    info_path.unlink(missing_ok=True)
    with contextlib.suppress(Exception):
        wait_idle(repos.runner_dir, timeout=10)
    stop_workers(repos.runner_dir)  # still applying after 10 s: no agent may start after this
    stopped = stop_pool_agents(repos.pool_dir)
    say(f"stopping: {stopped} node agent(s), temporal, dns")
    server.stop()
    if pdns is not None:
        pdns.stop()
    engine.dispose()
    say("stopped")


async def _start_loops(
    client: Client, settings: Settings, repo: str, options: UpOptions
) -> WorkflowHandle:
    handle = await client.start_workflow(
        GitOpsSyncWorkflow.run,
        GitOpsSyncParams(
            source=repo, settings=LoopSettings(interval_seconds=options.sync_interval_seconds)
        ),
        id=ids.GITOPS_SYNC_ID,
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        task_timeout=timedelta(seconds=10),
    )
    await client.start_workflow(
        WorldStateWorkflow.run,
        WorldStateParams(settings=LoopSettings(interval_seconds=1)),
        id=ids.WORLD_STATE_ID,
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    await handle.signal(GitOpsSyncWorkflow.sync_now)
    return handle


def _zones(repo: str, data_dir: Path) -> list[str]:
    """Zones the config's DNS providers publish into (PowerDNS needs them to exist)."""
    from xplane.config.errors import ConfigError
    from xplane.config.loader import load_config
    from xplane.gitops.repo import RepoError, fetch_repo

    try:
        fetched = fetch_repo(repo, "main", data_dir / "checkouts")
        config = load_config(fetched.path)
    except (ConfigError, RepoError):
        # The sync reports these properly; without zones, DNS applies fail visibly.
        return []
    return sorted(
        {p.zone for policy in config.gtm.values() for p in policy.dns_providers() if p.zone}
    )


def _first_domain(db_url: str) -> str | None:
    from xplane.store.config_store import current_config
    from xplane.store.db import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            config = current_config(session)
    finally:
        engine.dispose()
    if config is None or not config.gtm:
        return None
    return next(iter(config.gtm.values())).domain
