"""Request and response bodies of the nodes API.

Requests are strict: unknown keys, wrong types (no "0.5" for a number, no
true for a number), NaN and infinity are all refused with the field named.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from xplane.config.errors import NAME_PATTERN
from xplane.domain import NodeState, NodeStatus
from xplane.lifecycle.node_status import HeartbeatAction
from xplane.store.tables import column_length

NODE_ID_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$"
# PostgreSQL refuses NUL in text (a 500 if it reached the store): every free-text
# string of a request must match this.
NO_NUL_PATTERN = r"^[^\x00]*$"


def text(max_length: int, min_length: int = 0) -> Any:
    """Constraints of a free-text string: no NUL, at most ``max_length`` characters."""
    return Field(min_length=min_length, max_length=max_length, pattern=NO_NUL_PATTERN)


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"must be an IPv4 or IPv6 address, not {value[:64]!r}") from None


IpAddress = Annotated[str, Field(max_length=64), AfterValidator(_ip_address)]
NodeId = Annotated[str, Field(pattern=NODE_ID_PATTERN)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Fraction = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0)]


class RegisterRequest(RequestModel):
    node_id: NodeId | None = None
    service: Name
    region: Name
    address: IpAddress
    hostname: Annotated[str, text(column_length("nodes", "hostname"), 1)] | None = None
    labels: dict[Annotated[str, text(63)], Annotated[str, text(255)]] = Field(
        default_factory=dict, max_length=64
    )
    agent_version: Annotated[str, text(column_length("nodes", "agent_version"))] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None


class RegisterResponse(BaseModel):
    node_id: str
    token: str
    heartbeat_interval_seconds: float
    state: NodeState


class Probe(RequestModel):
    target: Annotated[str, text(255, 1)]
    ok: bool
    rtt_ms: NonNegative | None = None


class HeartbeatRequest(RequestModel):
    node_id: NodeId
    cpu: Fraction
    rtt_ms: NonNegative
    error_rate: Fraction
    qps: NonNegative | None = None
    probes: list[Probe] = Field(default_factory=list, max_length=64)
    status: Literal["up", "drain"] | None = None


class HeartbeatResponse(BaseModel):
    state: NodeState
    status: NodeStatus
    action: HeartbeatAction
    heartbeat_interval_seconds: float


class DrainRequest(RequestModel):
    """Body of a drain or undrain: why (required)."""

    reason: Annotated[str, text(column_length("nodes", "drain_reason"), 1)]


class NodeOut(BaseModel):
    """A node as the read endpoints show it (never its token hash)."""

    id: str
    service: str
    region: str
    address: str
    port: int | None
    hostname: str | None
    labels: dict[str, str]
    agent_version: str | None
    state: NodeState
    status: NodeStatus
    drain_requested: bool
    drain_requested_by: str | None
    reported_status: str | None
    registered_at: datetime
    last_heartbeat_at: datetime | None
    heartbeat_age_seconds: float | None
    cpu: float | None
    rtt_ms: float | None
    error_rate: float | None
    qps: float | None
    probes_ok: int | None
    probes_total: int | None
    health_check_ok: bool | None


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    error: str
    detail: list[FieldError] = Field(default_factory=list)
