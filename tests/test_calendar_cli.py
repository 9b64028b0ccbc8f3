"""`xplane autoscale plan --at` (floor, lead, desired with reasons) and `xplane autoscale
forecast` (hour-of-week profile from a real SQLite store, read-only) through the real CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from xplane.cli.main import app
from xplane.config.loader import load_config
from xplane.store.config_store import save_revision
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction
from xplane.store.node_tables import MetricSampleRow
from xplane.store.pools import list_pools

REGIONS = "regions:\n  - name: jp\n  - name: sg\n"
AUTOSCALE = """\
service: svc
regions:
  jp:
    min_nodes: 1
    max_nodes: 10
    target_qps_per_node: 100
    schedules:
      - {name: tokyo-day, cron: "0 9 * * 1-5", timezone: Asia/Tokyo, duration: 9h, min_nodes: 6}
      - {name: launch, cron: "0 12 7 12 *", timezone: Asia/Tokyo, duration: 1h, min_nodes: 8}
  sg:
    min_nodes: 1
    max_nodes: 4
lead_min: 15m
"""
GTM = """\
service: svc
domain: api.svc.plus
regions: [{name: jp}, {name: sg}]
maintenance:
  - {name: sg-patch, region: sg, start: "2026-12-07T08:30:00", end: "2026-12-07T10:00:00",
     timezone: Asia/Tokyo}
"""
WORLD = {
    "now": "2026-12-06T12:00:00Z",
    "nodes": [
        {"id": "jp-0", "service": "svc", "region": "jp", "address": "10.0.0.1", "cpu": 0.5},
        {"id": "jp-1", "service": "svc", "region": "jp", "address": "10.0.0.2", "cpu": 0.5},
        {"id": "sg-0", "service": "svc", "region": "sg", "address": "10.0.1.1", "cpu": 0.5},
        {"id": "sg-1", "service": "svc", "region": "sg", "address": "10.0.1.2", "status": "drain"},
    ],
    "pools": [
        {"service": "svc", "region": "jp", "node_count": 2},
        {"service": "svc", "region": "sg", "node_count": 2},
    ],
}
runner = CliRunner()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    for rel, text in {
        "regions/all.yaml": REGIONS,
        "autoscale/svc.yaml": AUTOSCALE,
        "gtm/svc.yaml": GTM,
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _plan(config_dir: Path, tmp_path: Path, at: str) -> dict[str, Any]:
    world = tmp_path / "world.json"
    world.write_text(json.dumps(WORLD))
    args = ["autoscale", "plan", "--config", str(config_dir), "--world", str(world)]
    result = runner.invoke(app, [*args, "--at", at, "--output", "json"])
    assert result.exit_code == 0, result.output
    plan: dict[str, Any] = json.loads(result.output)
    return plan


def test_plan_at_an_instant_shows_floor_lead_and_desired(config_dir: Path, tmp_path: Path) -> None:
    before = _plan(config_dir, tmp_path, "2026-12-07T08:40+09:00")["services"]["svc"]["jp"]
    assert before["floor"] == 0 and before["desired"] == 2  # 20m ahead > lead 15m
    assert before["lead_seconds"] == 900 and before["lead"] == "lead_min 15m (no measurement)"

    prewarm = _plan(config_dir, tmp_path, "2026-12-07T08:50+09:00")["services"]["svc"]["jp"]
    assert prewarm["floor"] == 6 and prewarm["desired"] == 6 and not prewarm["no_scale_in"]
    assert prewarm["reason"].startswith(
        "below scheduled floor 6: pre-warm for window 'tokyo-day' opening in 10m"
    )
    assert [w["name"] for w in prewarm["windows"]] == ["tokyo-day"]

    launch = _plan(config_dir, tmp_path, "2026-12-07T12:10+09:00")["services"]["svc"]["jp"]
    assert launch["floor"] == 8 and launch["desired"] == 8 and launch["no_scale_in"]
    assert "window 'launch'" in launch["reason"] and "also 'tokyo-day'" in launch["reason"]

    sg = _plan(config_dir, tmp_path, "2026-12-07T09:00+09:00")["services"]["svc"]["sg"]
    assert sg["maintenance"] == "sg-patch" and sg["desired"] == 2  # drained sg-1: not replaced
    sg_after = _plan(config_dir, tmp_path, "2026-12-07T10:30+09:00")["services"]["svc"]["sg"]
    assert sg_after["maintenance"] is None


def test_plan_table_and_bad_at(config_dir: Path, tmp_path: Path) -> None:
    world = tmp_path / "world.json"
    world.write_text(json.dumps(WORLD))
    args = ["autoscale", "plan", "--config", str(config_dir), "--world", str(world)]
    table = runner.invoke(app, [*args, "--at", "2026-12-07T09:00+09:00"])
    assert table.exit_code == 0, table.output
    assert "floor" in table.output and "15m" in table.output
    bare = runner.invoke(app, [*args, "--at", "2026-12-07T09:00"])
    assert bare.exit_code == 1 and "--at: give an offset or Z" in bare.output
    junk = runner.invoke(app, [*args, "--at", "monday"])
    assert junk.exit_code == 1 and "--at: not an ISO 8601 time: 'monday'" in junk.output


def test_forecast_fits_the_hour_of_week_profile_and_changes_nothing(
    config_dir: Path, tmp_path: Path
) -> None:
    import xplane.store.tables  # noqa: F401

    url = f"sqlite:///{tmp_path}/store.db"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    tokyo = ZoneInfo("Asia/Tokyo")
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        save_revision(session, "f" * 40, load_config(config_dir), "test")
        # 14 days, one sample per node every 20 minutes: 2 nodes; 400 qps each on
        # weekdays 10:00-12:59 Tokyo, 50 otherwise.
        at = now - timedelta(days=14)
        while at < now:
            local = at.astimezone(tokyo)
            busy = local.weekday() < 5 and 10 <= local.hour < 13
            for node in ("jp-0", "jp-1"):
                session.add(
                    MetricSampleRow(
                        node_id=node,
                        service="svc",
                        region="jp",
                        at=at,
                        cpu=0.5,
                        rtt_ms=10,
                        error_rate=0,
                        qps=400.0 if busy else 50.0,
                    )
                )
            at += timedelta(minutes=20)
    args = ["autoscale", "forecast", "--region", "jp", "--db", url, "--hours", "168"]
    result = runner.invoke(app, [*args, "--output", "json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)["svc"]
    assert body["timezone"] == "Asia/Tokyo" and body["history_hours"] >= 14 * 24 - 1
    rows = body["hours"]
    assert len(rows) == 168
    for row in rows:
        local = datetime.fromisoformat(row["at"]).astimezone(tokyo)
        busy = local.weekday() < 5 and 10 <= local.hour < 13
        assert row["suggested"] == (8 if busy else 1), row  # 800 qps / 100 per node
        in_day = local.weekday() < 5 and 9 <= local.hour < 18
        assert row["configured"] in ((6, 8) if in_day else (0,)), row
    with sessions() as session:
        assert {p.node_count for p in list_pools(session, "svc")} == set()  # read-only
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "read-only" in table.output
    missing = runner.invoke(app, ["autoscale", "forecast", "--region", "us", "--db", url])
    assert missing.exit_code == 1 and "no autoscale policy has region 'us'" in missing.output
    engine.dispose()


def test_forecast_reads_the_hourly_rollup_the_autoscaler_keeps(
    config_dir: Path, tmp_path: Path
) -> None:
    """Samples are pruned after minutes: two weeks of history come from region_load_hours."""
    import xplane.store.tables  # noqa: F401
    from xplane.store.load_hours import KEEP, RegionLoadHourRow, add_load

    url = f"sqlite:///{tmp_path}/rollup.db"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    tokyo = ZoneInfo("Asia/Tokyo")
    # On the hour: both ticks of an hour (:00 and :30) fall in that hour whatever the
    # wall clock's minute (unaligned, a busy and a quiet tick shared an hour).
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with transaction(sessions) as session:
        save_revision(session, "e" * 40, load_config(config_dir), "test")
        at = now - timedelta(days=40)  # older than KEEP: pruned as newer hours come in
        while at < now:
            busy = at.astimezone(tokyo).hour == 20
            for minute in (0, 30):  # two autoscaler ticks an hour
                add_load(
                    session,
                    "svc",
                    "jp",
                    at + timedelta(minutes=minute),
                    qps_total=550.0 if busy else 90.0,
                    cpu_nodes=1.0,
                )
            at += timedelta(hours=1)
    with sessions() as session:
        oldest = min(r.hour for r in session.query(RegionLoadHourRow))
    assert now - oldest <= KEEP + timedelta(hours=2)
    args = ["autoscale", "forecast", "--region", "jp", "--db", url, "--output", "json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)["svc"]
    assert body["samples"] == 0 and body["history_hours"] >= 14 * 24 - 1
    for row in body["hours"]:
        busy = datetime.fromisoformat(row["at"]).astimezone(tokyo).hour == 20
        assert row["suggested"] == (6 if busy else 1), row  # ceil(550 / 100); 90 -> 1
    engine.dispose()
