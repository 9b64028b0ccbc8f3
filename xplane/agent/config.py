"""The agent's settings, validated once at start-up (the CLI builds this from its flags)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Self

from pydantic import Field, field_validator, model_validator

from xplane.agent.backoff import Backoff
from xplane.agent.health import parse_host_port
from xplane.agent.probes import validate_target
from xplane.agent.prom import CounterSelector
from xplane.domain import StrictModel


class AgentConfig(StrictModel):
    # API URLs in order of preference (--server repeated, or comma-separated): every
    # replica of one control plane, or a load balancer and the replicas behind it.
    servers: list[str] = Field(min_length=1)
    service: str
    region: str
    token_file: Path
    address: str | None = None  # None: the local address that routes to the server
    node_id: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    state_file: Path | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    probes: list[str] = Field(default_factory=list)
    probe_timeout_s: float = Field(default=2.0, gt=0)
    metrics_url: str | None = None
    metrics_file: Path | None = None
    # CPU share to report when the local source gives none (None: this machine's CPU).
    cpu_default: float | None = Field(default=None, ge=0, le=1)
    counters: CounterSelector = Field(default_factory=CounterSelector)
    serve_health: str | None = None
    request_timeout_s: float = Field(default=5.0, gt=0)
    # Short, so a dead host (no RST, packets dropped) costs this long before the next URL.
    connect_timeout_s: float = Field(default=1.0, gt=0)
    backoff: Backoff = Field(default_factory=Backoff)

    @model_validator(mode="before")
    @classmethod
    def _one_server(cls, data: Any) -> Any:
        """``server`` (one URL, or several comma-separated) is accepted for ``servers``."""
        if isinstance(data, dict) and "server" in data:
            data = dict(data)
            data.setdefault("servers", data.pop("server"))
        return data

    @field_validator("servers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return value
        return [u.strip() for item in items for u in str(item).split(",") if u.strip()]

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        urls: list[str] = []
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"--server {url!r}: expected an http:// or https:// URL")
            if url.rstrip("/") not in urls:
                urls.append(url.rstrip("/"))
        return urls

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"--address {value!r}: expected an IPv4 or IPv6 address") from None

    @field_validator("probes")
    @classmethod
    def _probes(cls, value: list[str]) -> list[str]:
        return [validate_target(t) for t in value]

    @field_validator("serve_health")
    @classmethod
    def _serve_health(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value)
        return value

    @model_validator(mode="after")
    def _one_local_source(self) -> Self:
        if self.metrics_url and self.metrics_file:
            raise ValueError("give --metrics-url or --metrics-file, not both")
        return self

    @property
    def server(self) -> str:
        """The first URL: where the agent starts, and the one its state file names."""
        return self.servers[0]

    @property
    def health_address(self) -> tuple[str, int] | None:
        return parse_host_port(self.serve_health) if self.serve_health else None
