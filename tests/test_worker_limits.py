"""Worker limits (workers/limits.py): sized for a fleet's 10,000 live workflows, from env."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from workers.limits import WorkerLimits
from workers.main import build_worker
from xplane.settings import Settings
from xplane.store.db import make_engine, make_sessionmaker


def test_the_default_cache_holds_a_fleet_of_ten_thousand_node_lifecycles() -> None:
    limits = WorkerLimits.from_env({})
    # The SDK's default (1,000) would replay an evicted node's history on each signal.
    assert limits.max_cached_workflows >= 10_000


def test_each_limit_is_overridden_by_its_variable() -> None:
    limits = WorkerLimits.from_env(
        {
            "XPLANE_WORKER_MAX_CACHED_WORKFLOWS": "500",
            "XPLANE_WORKER_MAX_CONCURRENT_ACTIVITIES": "4",
        }
    )
    assert limits.max_cached_workflows == 500
    assert limits.max_concurrent_activities == 4


@pytest.mark.parametrize("value", ["-1", "lots"])
def test_a_bad_value_names_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="XPLANE_WORKER_MAX_CACHED_WORKFLOWS"):
        WorkerLimits.from_env({"XPLANE_WORKER_MAX_CACHED_WORKFLOWS": value})


async def test_the_worker_is_built_with_the_limits(time_env: Any, tmp_path: Path) -> None:
    settings = Settings.from_env(
        temporal_address="unused:7233",
        db_url=f"sqlite:///{tmp_path}/x.db",
        data_dir=tmp_path,
        config_repo=str(tmp_path / "config"),
        infra_repo=str(tmp_path / "infra"),
    )
    engine = make_engine(settings.db_url)
    limits = WorkerLimits(max_cached_workflows=321, max_concurrent_activities=3)
    worker = build_worker(time_env.client, settings, make_sessionmaker(engine), limits=limits)
    config = worker.config()
    assert config["max_cached_workflows"] == 321
    assert config["max_concurrent_activities"] == 3
    assert getattr(config["activity_executor"], "_max_workers", None) == 3
    engine.dispose()
