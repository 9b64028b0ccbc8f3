"""Process settings from the environment (12-factor): one place, one name each."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from xplane.durations import parse_duration
from xplane.heartbeat import HeartbeatSettings
from xplane.ids import TASK_QUEUE
from xplane.store.db import db_url_from_env


class Settings(BaseModel):
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = TASK_QUEUE
    db_url: str
    data_dir: Path = Path(".xplane")
    config_repo: str | None = None  # local path or URL of the GitOps config repo
    config_branch: str = "main"
    infra_repo: str | None = None  # local path or URL of the infra (node-pool) repo
    infra_branch: str = "main"
    # When a node is down, for every reader in this process (XPLANE_HEARTBEAT_*).
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    # The singleton loops every worker ensures at start (workers/loops.py).
    sync_interval_seconds: float = Field(default=30.0, gt=0)  # XPLANE_SYNC_INTERVAL
    world_state_interval_seconds: float = Field(default=2.0, gt=0)  # XPLANE_WORLD_STATE_INTERVAL

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        values: dict[str, object] = {
            "temporal_address": env.get("XPLANE_TEMPORAL_ADDRESS", "127.0.0.1:7233"),
            "temporal_namespace": env.get("XPLANE_TEMPORAL_NAMESPACE", "default"),
            "task_queue": env.get("XPLANE_TASK_QUEUE", TASK_QUEUE),
            "db_url": db_url_from_env(None),
            "data_dir": Path(env.get("XPLANE_DATA_DIR", ".xplane")),
            "config_repo": env.get("XPLANE_CONFIG_REPO"),
            "config_branch": env.get("XPLANE_CONFIG_BRANCH", "main"),
            "infra_repo": env.get("XPLANE_INFRA_REPO"),
            "infra_branch": env.get("XPLANE_INFRA_BRANCH", "main"),
            "heartbeat": HeartbeatSettings.from_env(env),
        }
        for key, name in (
            ("sync_interval_seconds", "XPLANE_SYNC_INTERVAL"),
            ("world_state_interval_seconds", "XPLANE_WORLD_STATE_INTERVAL"),
        ):
            if env.get(name):
                values[key] = parse_duration(env[name]).total_seconds()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
