"""Shared vocabulary of the control plane: node states and the observed world.

These types cross every boundary (store, API, workflows, pure algorithms, the
what-if CLI), so they live apart from any one of them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class NodeState(StrEnum):
    """Lifecycle state, owned by the node's lifecycle workflow (`docs/roadmap.md` phase 3.2)."""

    IDLE = "idle"
    WARM = "warm"
    ACTIVE = "active"
    DRAIN = "drain"
    DELETE = "delete"


class NodeStatus(StrEnum):
    """Observed status (`docs/roadmap.md` phase 1.2): from heartbeats, probes and drain requests."""

    UP = "up"
    DOWN = "down"
    DRAIN = "drain"


class StrictModel(BaseModel):
    """Base for every boundary model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class NodeSnapshot(StrictModel):
    """One node as the loops observe it (also a node of the what-if WORLD.json)."""

    id: str
    service: str
    region: str
    address: str
    state: NodeState = NodeState.ACTIVE
    status: NodeStatus = NodeStatus.UP
    rtt_ms: float | None = Field(default=None, ge=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    cpu: float | None = Field(default=None, ge=0, le=1)
    qps: float | None = Field(default=None, ge=0)
    heartbeat_age_seconds: float | None = Field(default=None, ge=0)
    # Result of XPlane's own active health check: None = not checked (yet).
    health_check_ok: bool | None = None
    registered_at: datetime | None = None


class PoolSnapshot(StrictModel):
    """A region's node pool as Git says (``infra/node-pool/<region>.tfvars``)."""

    service: str
    region: str
    node_count: int = Field(ge=0)
    last_scaled_at: datetime | None = None


class WorldSnapshot(StrictModel):
    """The what-if WORLD.json, and what the observe activities return."""

    now: datetime | None = None
    nodes: list[NodeSnapshot] = Field(default_factory=list)
    pools: list[PoolSnapshot] = Field(default_factory=list)
