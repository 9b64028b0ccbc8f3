"""One notion of down: XPLANE_HEARTBEAT_* drives every reader of node liveness.

Two nodes, silent for 17 s and 25 s, straddle the timeouts the readers used to
hard-code (15 s for the world state and ``xplane status``, 30 s for GTM and the
autoscaler, 3 x the API's interval). With the setting at 5 s / 20 s exactly the
first is up for every reader; at 20 s (timeout 60 s) both are. Each reader is
reached the way production reaches it: the activities built by the worker's
``activities_for`` over SQLite, ``store_report`` and the HTTP API built from the
environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

import xplane.store.tables  # noqa: F401  (registers every table)
from activities.autoscale import DecideRequest, DecideResult
from activities.gtm import GtmTargets, ObserveRequest
from activities.nodes import ScanRequest, ScanResult
from activities.regions import RegionNodes
from tests.conftest import register_search_attributes
from tests.support.temporal import pydantic_client
from workers.main import activities_for
from xplane.api import ApiSettings, create_app
from xplane.api.serve import serve_in_thread
from xplane.config.errors import ConfigError
from xplane.config.loader import load_config_from_mapping
from xplane.config.models import (
    AutoscalePolicy,
    AutoscaleRegion,
    ConfigTree,
    GtmPolicy,
    GtmRegion,
    Region,
)
from xplane.domain import NodeState
from xplane.durations import parse_duration
from xplane.heartbeat import HeartbeatSettings
from xplane.netutil import free_port
from xplane.settings import Settings
from xplane.status import store_report
from xplane.store import nodes as node_store
from xplane.store.config_store import save_revision
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.pools import set_pool
from xplane.store.registration import Registration, register_node

BOOT, ADMIN = "boot-secret", "admin-secret"
AGES = {"jp-recent": 17.0, "jp-silent": 25.0}  # seconds since the last heartbeat


def _env(monkeypatch: pytest.MonkeyPatch, interval: str, timeout: str | None) -> None:
    monkeypatch.setenv("XPLANE_HEARTBEAT_INTERVAL", interval)
    if timeout is None:
        monkeypatch.delenv("XPLANE_HEARTBEAT_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("XPLANE_HEARTBEAT_TIMEOUT", timeout)


# ---------------------------------------------------------------- the setting
def test_timeout_defaults_to_three_intervals_and_follows_the_environment() -> None:
    assert HeartbeatSettings.from_env({}).timeout == timedelta(seconds=30)
    assert HeartbeatSettings.from_env({"XPLANE_HEARTBEAT_INTERVAL": "2s"}).timeout == timedelta(
        seconds=6
    )
    both = {"XPLANE_HEARTBEAT_INTERVAL": "0.5", "XPLANE_HEARTBEAT_TIMEOUT": "1m"}
    assert HeartbeatSettings.from_env(both) == HeartbeatSettings(
        interval=timedelta(milliseconds=500), timeout=timedelta(minutes=1)
    )
    # A flag overriding the interval moves the derived timeout with it.
    assert HeartbeatSettings.from_env({}, interval="4s").timeout == timedelta(seconds=12)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"XPLANE_HEARTBEAT_INTERVAL": "10s", "XPLANE_HEARTBEAT_TIMEOUT": "10s"}, "longer than"),
        ({"XPLANE_HEARTBEAT_INTERVAL": "0s"}, "between 100ms and 1h"),
        ({"XPLANE_HEARTBEAT_INTERVAL": "2h", "XPLANE_HEARTBEAT_TIMEOUT": "6h"}, "between"),
        ({"XPLANE_HEARTBEAT_INTERVAL": "ten"}, "invalid duration"),
    ],
)
def test_a_bad_setting_is_refused(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        HeartbeatSettings.from_env(env)


def test_the_interval_range_is_the_one_agents_honour() -> None:
    from xplane.agent.runner import MAX_INTERVAL_S, MIN_INTERVAL_S
    from xplane.heartbeat import MAX_INTERVAL, MIN_INTERVAL

    assert (MIN_INTERVAL.total_seconds(), MAX_INTERVAL.total_seconds()) == (
        MIN_INTERVAL_S,
        MAX_INTERVAL_S,
    )


def test_a_gtm_file_with_its_own_heartbeat_timeout_points_to_the_one_setting() -> None:
    files = {
        "regions/jp.yaml": "provider: aws\n",
        "gtm/web.yaml": "service: web\ndomain: web.svc.plus\nregions:\n  - name: jp\n"
        "heartbeat_timeout: 45s\n",
    }
    with pytest.raises(ConfigError) as caught:
        load_config_from_mapping(files)
    [issue] = [str(i) for i in caught.value.issues]
    assert issue.startswith("gtm/web.yaml:5: heartbeat_timeout: no longer set per service")
    assert "XPLANE_HEARTBEAT_TIMEOUT" in issue


@pytest.mark.parametrize("stored", [None, 45.0])
def test_a_policy_an_older_version_stored_still_decodes(stored: float | None) -> None:
    """Workflow histories and the config table hold policies with the retired key: a
    worker of this version must still read them (the key is dropped), or running loops
    fail to decode their own input after an upgrade."""
    old = {"service": "web", "domain": "web.svc.plus", "regions": [{"name": "jp"}]}
    policy = GtmPolicy.model_validate({**old, "heartbeat_timeout": stored})
    assert policy == GtmPolicy.model_validate(old)


# ---------------------------------------------------------------- every reader
def _seed(sessions: sessionmaker[Session]) -> None:
    tree = ConfigTree(
        regions={"jp": Region(name="jp")},
        gtm={
            "web": GtmPolicy(service="web", domain="web.svc.plus", regions=[GtmRegion(name="jp")])
        },
        autoscale={"web": AutoscalePolicy(service="web", regions={"jp": AutoscaleRegion()})},
    )
    closed = free_port()  # the active health check is refused at once (and flips nothing yet)
    with transaction(sessions) as session:
        save_revision(session, "a" * 40, tree, "test")
        set_pool(session, "web", "jp", len(AGES))
        for i, node_id in enumerate(AGES):
            register_node(
                session,
                Registration(
                    node_id=node_id,
                    service="web",
                    region="jp",
                    address=f"127.0.0.{i + 1}",
                    token_hash=node_id,
                    port=closed,
                ),
                utcnow(),
                timedelta(minutes=5),
            )
            node_store.set_lifecycle_state(session, node_id, NodeState.ACTIVE, "test", utcnow())


def _age(sessions: sessionmaker[Session], ages: dict[str, float] = AGES) -> None:
    """Heartbeats exactly ``ages`` old now: each reader is checked right after."""
    now = utcnow()
    with transaction(sessions) as session:
        for node_id, age in ages.items():
            row = node_store.get_node(session, node_id)
            row.last_heartbeat_at = now - timedelta(seconds=age)
            row.error_rate, row.rtt_ms = 0.0, 10.0


def test_xplane_status_judges_with_the_setting_or_that_of_xplane_up(tmp_path: Path) -> None:
    """The real command: ``XPLANE_HEARTBEAT_TIMEOUT``, or ``up.json``'s timeout under up."""
    db_url = f"sqlite:///{tmp_path}/xplane.db"
    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    _seed(sessions)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPLANE_")}
    env |= {"XPLANE_HEARTBEAT_INTERVAL": "5s", "XPLANE_HEARTBEAT_TIMEOUT": "25s"}

    def statuses() -> dict[str, str]:
        # 16 s: down for the old 15 s; 27 s: up for the default 30 s.
        _age(sessions, {"jp-recent": 16.0, "jp-silent": 27.0})
        dead_temporal = f"127.0.0.1:{free_port()}"
        args = ["status", "-o", "json", "--db", db_url, "--data-dir", str(tmp_path)]
        done = subprocess.run(
            [str(Path(sys.executable).parent / "xplane"), *args, "--temporal", dead_temporal],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        return {n["id"]: n["status"] for n in json.loads(done.stdout)["nodes"]}

    assert statuses() == {"jp-recent": "up", "jp-silent": "down"}
    (tmp_path / "up.json").write_text(
        json.dumps({"db_url": db_url, "heartbeat_timeout_seconds": 60})
    )
    assert statuses() == {"jp-recent": "up", "jp-silent": "up"}
    engine.dispose()


def _by_name(acts: list[Any]) -> dict[str, Callable[..., Any]]:
    return {fn.__name__: fn for fn in acts}


@pytest.fixture
async def own_temporal() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of its own: the scan signals lifecycles with no worker to
    run them, and the shared server was measured to stall later tests afterwards."""
    server = Path(sys.executable).parent / "temporal-test-server"
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=str(server))
    await register_search_attributes(env.client)
    yield env
    await env.shutdown()


@pytest.mark.parametrize(
    ("interval", "timeout", "up"),
    [("5s", "20s", {"jp-recent"}), ("20s", None, {"jp-recent", "jp-silent"})],
    ids=["timeout-20s", "interval-20s"],
)
async def test_every_reader_follows_the_heartbeat_setting(
    interval: str,
    timeout: str | None,
    up: set[str],
    own_temporal: WorkflowEnvironment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _env(monkeypatch, interval, timeout)
    db_url = f"sqlite:///{tmp_path}/xplane.db"
    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    _seed(sessions)
    settings = Settings.from_env(db_url=db_url, data_dir=tmp_path / "data")
    acts = _by_name(activities_for(pydantic_client(own_temporal), settings, sessions))
    env = ActivityEnvironment()

    # World state: the scan judges a new node's first status with the setting.
    _age(sessions)
    scan: ScanResult = await env.run(acts["scan_node_transitions"], ScanRequest())
    assert {t.node_id: t.status.value for t in scan.transitions} == {
        n: "up" if n in up else "down" for n in AGES
    }
    assert scan.heartbeat_timeout_seconds == settings.heartbeat.timeout_seconds

    # GTM: only nodes with a heartbeat within the timeout are ready.
    _age(sessions)
    targets: GtmTargets = await env.run(acts["observe_gtm"], ObserveRequest(service="web"))
    assert targets.weights is not None
    assert targets.weights.regions["jp"].ready_nodes == len(up)

    # Autoscaler: ready nodes, and the silent ones it holds (not replaced until their
    # lifecycle gives them up); region lifecycle: serving.
    _age(sessions)
    decided: DecideResult = env.run(
        acts["decide_autoscale"], DecideRequest(service="web", region="jp")
    )
    assert decided.ready_nodes == len(up)
    assert decided.held_nodes == sorted(set(AGES) - up) and decided.lost_nodes == []
    _age(sessions)
    ready: int = env.run(acts["count_ready_nodes"], DecideRequest(service="web", region="jp"))
    assert ready == len(up)
    _age(sessions)
    region: RegionNodes = env.run(acts["region_nodes"], "jp")
    assert region.active == len(up)

    # `xplane status`.
    _age(sessions)
    report = store_report(db_url)
    assert {n.id: n.status for n in report.nodes} == {n: "up" if n in up else "down" for n in AGES}

    # The API: its views, and the interval it tells a registering agent.
    monkeypatch.setenv("XPLANE_BOOTSTRAP_TOKEN", BOOT)
    monkeypatch.setenv("XPLANE_ADMIN_TOKEN", ADMIN)
    app = create_app(ApiSettings.from_env(db_url=db_url))
    with serve_in_thread(app) as served, httpx.Client(base_url=served.url, timeout=30) as http:
        _age(sessions)
        nodes = http.get("/nodes", headers={"Authorization": f"Bearer {ADMIN}"})
        assert nodes.status_code == 200, nodes.text
        assert {n["id"]: n["status"] for n in nodes.json()} == {
            n: "up" if n in up else "down" for n in AGES
        }
        reg = http.post(
            "/nodes/register",
            json={"service": "web", "region": "jp", "address": "10.0.0.9"},
            headers={"Authorization": f"Bearer {BOOT}"},
        )
        assert reg.status_code == 200, reg.text
        told = reg.json()["heartbeat_interval_seconds"]
        assert told == parse_duration(interval).total_seconds() != 10.0
    engine.dispose()
