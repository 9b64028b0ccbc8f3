"""Scheduled capacity and maintenance in the time-skipping server (real git, SQLite, PowerDNS).

The autoscale workflow commits a window's floor ahead by the lead and releases it after;
overlapping windows take the larger floor; a window seen too late says so; nodes drained
during maintenance are not replaced. The GTM loop takes a region to 0 for maintenance and
brings it back through slow start, writing to a real PowerDNS.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import git
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.test_autoscale_workflow import CONFIG, Rig, _hot_node, _status, _worker, rig
from tests.test_gtm_loop import _answers, _beat, _config, _gtm_loop, _seed, health_port, pdns
from workflows.autoscale import AutoscaleParams, AutoscaleWorkflow
from workflows.control_loop import LoopSettings
from workflows.gtm_loop import GtmLoopWorkflow
from xplane.autoscale.calendar import WindowSignal
from xplane.config.loader import load_config_from_mapping
from xplane.dns.pdns_server import PdnsServer
from xplane.messages import TerraformOutcome
from xplane.store import nodes as node_store
from xplane.store.config_store import save_revision
from xplane.store.db import transaction
from xplane.store.events import list_events
from xplane.store.load_hours import hourly_loads
from xplane.store.node_tables import MetricSampleRow
from xplane.store.pools import set_pool

__all__ = ["health_port", "pdns", "rig"]  # fixtures used here

AUTOSCALE = """
service: svc
global: {{cpu_window: 60s}}
regions:
  jp:
    min_nodes: {min_nodes}
    max_nodes: 5
    scale_up_cpu: 0.7
    scale_down_cpu: 0.3
    schedules: [{schedules}]
cooldown: {{scale_up: 300s, scale_down: 600s}}
jitter: 0s
interval: 30s
terraform_timeout: 120s
node_ready_timeout: 60s
lead_min: 10m
"""


def _cron(at: datetime) -> str:
    """A UTC cron line that fires at ``at`` (to the minute), this year only in practice."""
    return f"{at.minute} {at.hour} {at.day} {at.month} *"


def _window(name: str, opens: datetime, duration: str, min_nodes: int) -> str:
    return (
        f"{{name: {name}, cron: '{_cron(opens)}', timezone: UTC, duration: {duration}, "
        f"min_nodes: {min_nodes}}}"
    )


def _configure(rig: Rig, *windows: str, min_nodes: int = 1, gtm: str | None = None) -> None:
    files = {
        **CONFIG,
        "autoscale/svc.yaml": AUTOSCALE.format(min_nodes=min_nodes, schedules=", ".join(windows)),
    }
    if gtm is not None:
        files["gtm/svc.yaml"] = gtm
    with transaction(rig.sessions) as session:
        save_revision(session, uuid.uuid4().hex, load_config_from_mapping(files), "test")
        session.execute(sa.delete(MetricSampleRow))  # the rig's hot jp-0: load in band


async def _feed(rig: Rig, cpu: float, *nodes: str) -> None:
    """Fresh samples of ``cpu`` for the whole metrics window, for every node given."""
    now = await rig.env.get_current_time()
    for node in nodes:
        _hot_node(rig.sessions, node, cpu=cpu, now=now)


async def _start(rig: Rig) -> WorkflowHandle[AutoscaleWorkflow, None]:
    return await rig.client.start_workflow(
        AutoscaleWorkflow.run,
        AutoscaleParams(
            service="svc",
            region="jp",
            settings=LoopSettings(interval_seconds=30, jitter_seconds=0),
        ),
        id=f"autoscale-svc-jp-{uuid.uuid4().hex[:6]}",
        task_queue="autoscale-tests",
    )


def _events(rig: Rig, prefix: str) -> list[str]:
    with rig.sessions() as session:
        return [e.message for e in list_events(session, kind_prefix=prefix)]


def _minute(at: datetime, minutes: int) -> datetime:
    return (at + timedelta(minutes=minutes)).replace(second=0, microsecond=0)


async def test_a_window_floor_is_committed_ahead_by_the_lead_and_released_after(
    rig: Rig, tmp_path: Path
) -> None:
    t0 = await rig.env.get_current_time()
    opens = _minute(t0, 16)
    _configure(rig, _window("peak", opens, "10m", 3))
    await _feed(rig, 0.5, "jp-0")
    async with _worker(rig, tmp_path):
        handle = await _start(rig)
        # Until opens - lead (10m): nothing to do.
        await rig.env.sleep((opens - timedelta(minutes=10, seconds=40) - t0).total_seconds())
        assert len(rig.commits()) == 1, rig.commits()
        await rig.env.sleep(70)  # a tick past opens - lead
        assert rig.commits()[0] == "feat(xplane-autoscaler): scale jp pool to 3 nodes"
        status = await _status(handle)
        assert "below scheduled floor 3: pre-warm for window 'peak'" in status.details["reason"]
        assert "(lead 10m: lead_min 10m" in status.details["reason"]
        assert _events(rig, "autoscale.window_prewarm") and not _events(
            rig, "autoscale.window_late"
        )

        # CI applies it; two more nodes become active: the measured lead is recorded.
        await _feed(rig, 0.5, "jp-0", "jp-1", "jp-2")
        waiting = status.details["waiting"]
        await handle.signal(
            AutoscaleWorkflow.terraform_finished,
            TerraformOutcome(commit=waiting["commit"], status="succeeded"),
        )
        await rig.env.sleep(3)
        assert (await _status(handle)).details["last_outcome"] == "3 nodes ready"
        measured = _events(rig, "autoscale.nodes_active")
        assert len(measured) == 1 and "3 nodes active" in measured[0]
        with rig.sessions() as session:  # each tick's load is kept for the forecast
            loads = hourly_loads(session, "svc", "jp", t0 - timedelta(hours=1))
        assert loads and all(cpu > 0 for _, cpu in loads.values())

        # Inside the window, load is low for minutes: no scale-in.
        now = await rig.env.get_current_time()
        await rig.env.sleep((opens + timedelta(minutes=5) - now).total_seconds())
        for _ in range(4):
            await _feed(rig, 0.05, "jp-0", "jp-1", "jp-2")
            await rig.env.sleep(30)
        status = await _status(handle)
        assert status.details["desired"] == 3
        assert "at scheduled floor 3: window 'peak' open until" in status.details["reason"]
        assert len(rig.commits()) == 2

        # After it closes (and the scale-down cooldown), the low load scales in.
        now = await rig.env.get_current_time()
        await rig.env.sleep((opens + timedelta(minutes=10) - now).total_seconds())
        for _ in range(8):
            await _feed(rig, 0.05, "jp-0", "jp-1", "jp-2")
            await rig.env.sleep(30)
        assert rig.commits()[0] == "feat(xplane-autoscaler): scale jp pool to 2 nodes"
        await handle.terminate()


async def test_overlapping_windows_take_the_larger_floor(rig: Rig, tmp_path: Path) -> None:
    t0 = await rig.env.get_current_time()
    opens = _minute(t0, 12)
    _configure(rig, _window("day", opens, "1h", 2), _window("launch", opens, "30m", 4))
    await _feed(rig, 0.5, "jp-0")
    async with _worker(rig, tmp_path):
        handle = await _start(rig)
        await rig.env.sleep((opens - t0).total_seconds() - 9 * 60)
        assert rig.commits()[0] == "feat(xplane-autoscaler): scale jp pool to 4 nodes"
        reason = (await _status(handle)).details["reason"]
        assert "window 'launch'" in reason and "also 'day'" in reason
        await handle.terminate()


async def test_a_window_whose_prewarm_cannot_finish_in_time_says_so(
    rig: Rig, tmp_path: Path
) -> None:
    t0 = await rig.env.get_current_time()
    opens = _minute(t0, 4)  # added to Git 3-4 minutes before it opens; the lead is 10m
    _configure(rig, _window("surprise", opens, "30m", 3))
    await _feed(rig, 0.5, "jp-0")
    async with _worker(rig, tmp_path):
        handle = await _start(rig)
        await rig.env.sleep(5)
        late = _events(rig, "autoscale.window_late")
        assert len(late) == 1
        assert "window 'surprise' opens at" in late[0] and "pre-warm lead is 10m" in late[0]
        assert "3 nodes (from 1) may not be ready when it opens" in late[0]
        assert rig.commits()[0] == "feat(xplane-autoscaler): scale jp pool to 3 nodes"
        await rig.env.sleep(90)  # later ticks record nothing more for this occurrence
        assert len(_events(rig, "autoscale.window_")) == 1
        await handle.terminate()


GTM = """
service: svc
domain: api.svc.plus
regions: [{{name: jp}}]
maintenance:
  - {{name: kernel, region: jp, start: '{start}', end: '{end}', weight: 0}}
"""


async def test_nodes_drained_for_maintenance_are_not_replaced(rig: Rig, tmp_path: Path) -> None:
    t0 = await rig.env.get_current_time()
    start, end = t0 - timedelta(minutes=1), t0 + timedelta(minutes=5)
    gtm = GTM.format(start=start.isoformat(), end=end.isoformat())
    _configure(rig, min_nodes=2, gtm=gtm)
    with transaction(rig.sessions) as session:
        set_pool(session, "svc", "jp", 2, scaled=False)
    await _feed(rig, 0.5, "jp-0", "jp-1")
    with transaction(rig.sessions) as session:  # the operator drains jp-1 for the work
        node_store.request_drain(session, "jp-1", by="operator", reason="kernel upgrade")
    async with _worker(rig, tmp_path):
        handle = await _start(rig)
        for _ in range(6):  # 3 minutes of maintenance, with fresh samples
            await _feed(rig, 0.5, "jp-0", "jp-1")
            await rig.env.sleep(30)
        assert len(rig.commits()) == 1, rig.commits()  # not replaced, not scaled in
        # The same drained node after the window: replaced (one healthy < min_nodes 2).
        now = await rig.env.get_current_time()
        await rig.env.sleep((end - now).total_seconds() + 1)
        for _ in range(2):
            await _feed(rig, 0.5, "jp-0", "jp-1")
            await rig.env.sleep(30)
        assert rig.commits()[0] == "feat(xplane-autoscaler): scale jp pool to 3 nodes"
        await handle.terminate()


async def test_a_schedule_action_enters_a_window_the_config_would_not_open(
    rig: Rig, tmp_path: Path
) -> None:
    """``temporal schedule trigger`` runs the action off-calendar: the window opens now."""
    t0 = await rig.env.get_current_time()
    _configure(rig, _window("peak", t0 + timedelta(days=3), "10m", 4))
    await _feed(rig, 0.5, "jp-0")
    async with _worker(rig, tmp_path):
        handle = await _start(rig)
        await rig.env.sleep(5)
        assert len(rig.commits()) == 1
        now = await rig.env.get_current_time()
        await handle.signal(
            WindowSignal.NAME,
            WindowSignal(
                kind="capacity", name="peak", opens=now, closes=now + timedelta(minutes=10)
            ),
        )
        await rig.env.sleep(2)
        assert rig.commits()[0] == "feat(xplane-autoscaler): scale jp pool to 4 nodes"
        assert "window 'peak' open until" in (await _status(handle)).details["reason"]
        await handle.terminate()


def _jp_addresses(shares: dict[str, float]) -> set[str]:
    return {a for a in shares if a in ("127.0.10.1", "127.0.10.2")}


async def test_maintenance_takes_a_region_to_zero_and_back_through_slow_start(
    time_env: WorkflowEnvironment,
    tmp_path: Path,
    pdns: PdnsServer,
    health_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PDNS_API_KEY", pdns.api_key)
    engine, sessions = _seed(tmp_path, pdns, health_port)
    t0 = (await time_env.get_current_time()).astimezone(UTC)
    start, end = t0 + timedelta(seconds=30), t0 + timedelta(seconds=90)
    files = _config(pdns, health_port)
    files["gtm/svc.yaml"] += (
        f"maintenance:\n  - {{name: kernel, region: jp, start: '{start.isoformat()}',"
        f" end: '{end.isoformat()}', weight: 0}}\n"
    )
    with transaction(sessions) as session:
        save_revision(session, "c" * 40, load_config_from_mapping(files), "test")

    async def tick(handle: WorkflowHandle[GtmLoopWorkflow, None]) -> dict[str, float]:
        _beat_all(sessions)
        await handle.signal(GtmLoopWorkflow.world_changed, "tick")
        await time_env.sleep(1)
        status = await handle.query(GtmLoopWorkflow.status)
        weights: dict[str, float] = status.details["weights"]
        return weights

    async with _gtm_loop(time_env, sessions, "svc") as handle:
        await time_env.sleep(1)
        assert (await tick(handle)) == {"jp": 100.0, "sg": 100.0}
        assert len(_jp_addresses(_answers(pdns))) == 2
        await time_env.sleep(40)  # inside the window
        assert (await tick(handle)) == {"jp": 0.0, "sg": 100.0}
        assert _jp_addresses(_answers(pdns)) == set()  # out of DNS at once
        status = await handle.query(GtmLoopWorkflow.status)
        assert status.details["maintenance"] == {"jp": "kernel x0"}
        await time_env.sleep(60)  # closed: back through slow start (100s), not at once
        assert (await tick(handle))["jp"] < 30
        await time_env.sleep(50)
        assert 30 <= (await tick(handle))["jp"] <= 80
        await time_env.sleep(60)
        assert (await tick(handle)) == {"jp": 100.0, "sg": 100.0}
        assert len(_jp_addresses(_answers(pdns))) == 2
    engine.dispose()


def _beat_all(sessions: sessionmaker[Session]) -> None:
    for node in ("jp-1", "jp-2", "sg-1"):
        _beat(sessions, node)


def test_cron_helper_matches_the_minute() -> None:
    at = datetime(2026, 12, 7, 9, 5, tzinfo=UTC)
    assert _cron(at) == "5 9 7 12 *"
    assert git is not None
