"""How much one worker holds and runs at once: sized for a fleet, overridable by env.

A NodeLifecycle workflow lives as long as its node, so 10,000 nodes are 10,000
open workflows. The SDK keeps 1,000 in its sticky cache by default; past that,
every signal to an evicted node's workflow replays its whole history first (a
region going down is hundreds of such replays at once). A cached idle workflow
costs a few tens of KiB, so caching the fleet is cheaper than replaying it.
Concurrency stays bounded: the activities are store and DNS I/O on threads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "XPLANE_WORKER_"


class WorkerLimits(BaseModel):
    """``XPLANE_WORKER_<FIELD>`` overrides each (e.g. ``XPLANE_WORKER_MAX_CACHED_WORKFLOWS``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Workflows kept in memory between tasks: the fleet's node lifecycles and the loops.
    max_cached_workflows: int = Field(default=12_000, ge=0)
    max_concurrent_workflow_tasks: int = Field(default=200, ge=1)
    # Activity threads (store, git, DNS I/O) -- also the size of the activity executor.
    max_concurrent_activities: int = Field(default=16, ge=1)
    max_concurrent_workflow_task_polls: int = Field(default=8, ge=1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerLimits:
        """The limits with env overrides; ValueError naming the variable on bad input."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw:
                values[name] = raw
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(problems) from None
