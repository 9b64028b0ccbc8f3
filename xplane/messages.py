"""Messages between the layers: workflow inputs and signal payloads.

Whoever starts or signals a workflow (the world-state scan and region activities,
the API's notifier, the CLI) and the workflow itself speak these types; they live in
the core so neither side imports the other. Workflow histories hold them as JSON:
add fields with defaults, never rename or remove one.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from xplane.domain import NodeState
from xplane.lifecycle.node_fsm import NodeEvent


# ------------------------------------------------------------ node lifecycle
class NodeTimings(BaseModel):
    warmup_seconds: float = 10.0  # healthy this long in warm -> active
    down_grace_seconds: float = 120.0  # down this long -> given up
    dns_ttl_seconds: float = 30.0  # clients may cache the record this long
    drain_timeout_seconds: float = 30.0  # extra time for connections to finish

    @classmethod
    def from_env(cls) -> NodeTimings:
        """Defaults, overridden by XPLANE_NODE_WARMUP / _DOWN_GRACE / _DRAIN_TIMEOUT (seconds).

        Read by whoever starts the workflow (API, world-state activity), never in
        workflow code, so the values are fixed in the run's input.
        """
        names = {
            "warmup_seconds": "XPLANE_NODE_WARMUP",
            "down_grace_seconds": "XPLANE_NODE_DOWN_GRACE",
            "drain_timeout_seconds": "XPLANE_NODE_DRAIN_TIMEOUT",
        }
        return cls(**{k: float(os.environ[v]) for k, v in names.items() if os.environ.get(v)})


class NodeStatusChange(BaseModel):
    """From the world-state loop: the node's observed status changed."""

    status: Literal["up", "down", "drain"]
    reason: str = ""
    # Names the scan's transition ("<was>-><status>@<scan time>"): a retried scan that
    # re-sends one it delivered before dying is ignored. None (older senders): applied.
    transition: str | None = None


class DrainRequest(BaseModel):
    by: str = "operator"
    reason: str = "drain requested"


class NodeActionRequest(BaseModel):
    """An operator's ``drain`` / ``undrain`` Workflow Update: answered, or refused."""

    reason: str
    by: str = "operator"


class NodeActionResult(BaseModel):
    """What a ``drain`` / ``undrain`` update did."""

    node_id: str
    action: Literal["drain", "undrain"]
    from_state: NodeState
    state: NodeState
    message: str


class Transition(BaseModel):
    at: datetime
    from_state: NodeState
    to_state: NodeState
    event: NodeEvent
    reason: str


class NodeLifecycleCarry(BaseModel):
    """The lifecycle's state, carried across continue-as-new in its input."""

    state: NodeState = NodeState.IDLE
    since: datetime | None = None
    reason: str = "registered"
    down_since: datetime | None = None
    # The self-health gate held the give-up: ask again at this time (and why).
    gate_held_until: datetime | None = None
    gate_reason: str | None = None
    history: list[Transition] = Field(default_factory=list)
    refused: list[str] = Field(default_factory=list)
    inbox: list[tuple[NodeEvent, str]] = Field(default_factory=list)
    transitions_seen: list[str] = Field(default_factory=list)  # recent NodeStatusChange ids


class NodeLifecycleParams(BaseModel):
    node_id: str
    service: str
    region: str
    timings: NodeTimings = Field(default_factory=NodeTimings)
    carry: NodeLifecycleCarry | None = None


class NodeStateRecord(BaseModel):
    """Input of the ``record_node_state`` activity."""

    node_id: str
    service: str
    region: str
    from_state: NodeState
    state: NodeState
    event: NodeEvent
    reason: str
    at: datetime
    request_drain: bool = False
    withdraw_drain: bool = False  # undrain: the agent is no longer told to drain


# ----------------------------------------------------------------- node pools
class TerraformOutcome(BaseModel):
    """Signalled by the CI webhook: ``terraform_finished``."""

    commit: str
    status: Literal["succeeded", "failed"]
    run_url: str | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
