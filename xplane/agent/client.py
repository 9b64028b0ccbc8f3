"""Typed client of the control plane's node API (``/nodes/register``, ``/nodes/heartbeat``).

Every outcome the agent reacts to differently is its own exception, so the loop in
:mod:`xplane.agent.runner` reads as policy, not status-code plumbing.

Several API URLs (replicas of one control plane) are tried in turn within one
request: a refused or timed-out connection, a dropped one or a 5xx/429 moves to
the next URL at once, so an API replica's death costs the agent no heartbeat;
the URL that answered is used first from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xplane.agent.probes import ProbeResult
from xplane.domain import StrictModel


class RegisterRequest(StrictModel):
    node_id: str | None = None
    service: str
    region: str
    address: str
    hostname: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    agent_version: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class HeartbeatRequest(StrictModel):
    node_id: str
    cpu: float = Field(ge=0, le=1)
    rtt_ms: float = Field(ge=0)
    error_rate: float = Field(ge=0, le=1)
    qps: float | None = Field(default=None, ge=0)
    probes: list[ProbeResult] = Field(default_factory=list)
    status: Literal["up", "drain"] = "up"


class _Reply(BaseModel):
    # Lenient on purpose: a newer server may add fields without breaking older agents.
    model_config = ConfigDict(extra="ignore")


class RegisterResponse(_Reply):
    node_id: str
    token: str = Field(repr=False)
    heartbeat_interval_seconds: float = Field(gt=0)
    state: str


class HeartbeatResponse(_Reply):
    state: str
    status: str
    action: Literal["none", "drain", "deregister"] = "none"
    heartbeat_interval_seconds: float = Field(gt=0)


R = TypeVar("R", bound=_Reply)


class ControlPlaneUnavailable(Exception):
    """Network error, timeout, 5xx or 429: retry later with backoff."""


class NeedsRegistration(Exception):
    """401/403/404 on a heartbeat: the token or node is unknown here, register again."""


class Rejected(Exception):
    """The control plane refused the request (4xx); the message carries its detail."""

    def __init__(self, path: str, status: int, detail: str) -> None:
        super().__init__(f"POST {path} rejected with {status}: {detail}")
        self.status = status


def _detail(response: httpx.Response) -> str:
    """The server's error text: ``{"error": .., "detail": [{field, message}]}`` or FastAPI's."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if not isinstance(body, dict):
        return str(body)[:200]
    parts = [str(body["error"])] if "error" in body else []
    detail = body.get("detail")
    if isinstance(detail, list):
        parts += [
            f"{d.get('field') or d.get('loc')}: {d.get('message') or d.get('msg')}"
            for d in detail
            if isinstance(d, dict)
        ]
    elif detail:
        parts.append(str(detail))
    return "; ".join(parts)[:500] or f"HTTP {response.status_code}"


class ControlPlaneClient:
    def __init__(
        self,
        client: httpx.AsyncClient,
        server: str | Sequence[str],
        timeout_s: float = 5.0,
        connect_timeout_s: float | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.client = client
        urls = [server] if isinstance(server, str) else list(server)
        if not urls:
            raise ValueError("no control plane URL")
        self.servers = [u.rstrip("/") for u in urls]
        self.timeout = httpx.Timeout(
            timeout_s, connect=min(timeout_s, connect_timeout_s or timeout_s)
        )
        self.log = log
        self._current = 0  # the URL that answered last

    @property
    def server(self) -> str:
        return self.servers[self._current]

    async def _post(self, path: str, token: str, body: StrictModel) -> httpx.Response:
        content = body.model_dump_json(exclude_none=True)
        failures: list[str] = []
        for step in range(len(self.servers)):
            index = (self._current + step) % len(self.servers)
            try:
                response = await self._post_to(self.servers[index], path, token, content)
            except ControlPlaneUnavailable as exc:
                failures.append(str(exc))
                continue
            if index != self._current:
                self._current = index
                if self.log:
                    after = {"fields": {"after": failures}}
                    self.log.warning(f"failed over to {_where(self.server)}", extra=after)
            return response
        # All down: the next attempt (after the caller's backoff) starts with the next URL.
        self._current = (self._current + 1) % len(self.servers)
        raise ControlPlaneUnavailable("; ".join(failures))

    async def _post_to(self, server: str, path: str, token: str, content: str) -> httpx.Response:
        where = f"POST {path}" if len(self.servers) == 1 else f"POST {_where(server)}{path}"
        try:
            response = await self.client.post(
                server + path,
                content=content,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            raise ControlPlaneUnavailable(f"{where}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise ControlPlaneUnavailable(f"{where}: HTTP {response.status_code}")
        return response

    async def register(self, bootstrap_token: str, request: RegisterRequest) -> RegisterResponse:
        response = await self._post("/nodes/register", bootstrap_token, request)
        if response.status_code != 200:
            raise Rejected("/nodes/register", response.status_code, _detail(response))
        return _parse(RegisterResponse, response, "/nodes/register")

    async def heartbeat(self, node_token: str, request: HeartbeatRequest) -> HeartbeatResponse:
        response = await self._post("/nodes/heartbeat", node_token, request)
        if response.status_code in (401, 403, 404):
            raise NeedsRegistration(f"POST /nodes/heartbeat: HTTP {response.status_code}")
        if response.status_code != 200:
            raise Rejected("/nodes/heartbeat", response.status_code, _detail(response))
        return _parse(HeartbeatResponse, response, "/nodes/heartbeat")


def _parse(model: type[R], response: httpx.Response, path: str) -> R:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        # A server speaking another contract: treat like an outage, it may be mid-upgrade.
        # Only locations and messages: str(exc) would echo input values, i.e. the token.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ControlPlaneUnavailable(f"POST {path}: unexpected reply: {problems}") from exc


def _where(url: str) -> str:
    """host:port of a URL, without any credentials it may carry."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
