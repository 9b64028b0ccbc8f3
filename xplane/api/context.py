"""What every handler of one app instance shares (kept on ``app.state.ctx``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from xplane.api.auth import TokenCache
from xplane.api.settings import ApiSettings
from xplane.api.writer import HeartbeatWriter


class NodeNotifier(Protocol):
    """Told after a registration commits (e.g. a Temporal signal-with-start).

    Its errors are logged and swallowed: the world-state loop catches up.
    """

    async def node_registered(self, node_id: str, service: str, region: str) -> None: ...


@dataclass
class ApiContext:
    settings: ApiSettings
    engine: Engine
    factory: sessionmaker[Session]
    writer: HeartbeatWriter
    tokens: TokenCache
    notifier: NodeNotifier | None = None


def get_ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


async def current_ctx(request: Request) -> ApiContext:
    """FastAPI dependency form of :func:`get_ctx`, async so it runs inline (hot path)."""
    return get_ctx(request)
