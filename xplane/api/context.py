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
from xplane.webhooks.dispatcher import DeliveryDispatcher


class NodeNotifier(Protocol):
    """Told of a registration (e.g. a Temporal signal-with-start), by the outbox
    dispatcher after the registration committed, never in the request: a failure
    is retried (and the world-state loop catches up on new nodes anyway)."""

    async def node_registered(self, node_id: str, service: str, region: str) -> None: ...


@dataclass
class ApiContext:
    settings: ApiSettings
    engine: Engine
    factory: sessionmaker[Session]
    writer: HeartbeatWriter
    tokens: TokenCache
    notifier: NodeNotifier | None = None
    dispatcher: DeliveryDispatcher | None = None  # delivers stored registrations and webhooks


def get_ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


async def current_ctx(request: Request) -> ApiContext:
    """FastAPI dependency form of :func:`get_ctx`, async so it runs inline (hot path)."""
    return get_ctx(request)
