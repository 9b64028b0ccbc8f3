"""The FastAPI app factory. Stateless over the store: run as many replicas as needed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.telemetry import TelemetryConfig
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from xplane.api.actions import WorkflowActions
from xplane.api.auth import TokenCache
from xplane.api.authz import Authenticator, AuthzMiddleware, missing_rules
from xplane.api.context import ApiContext, NodeNotifier
from xplane.api.errors import BodyLimitMiddleware, install_error_handlers
from xplane.api.guards import BodyDeadlines, InFlightLimit
from xplane.api.hot_path import XPlaneApi
from xplane.api.routes_actions import router as actions_router
from xplane.api.routes_admin import health_router
from xplane.api.routes_admin import router as admin_router
from xplane.api.routes_console import router as console_router
from xplane.api.routes_nodes import router as nodes_router
from xplane.api.routes_tokens import router as tokens_router
from xplane.api.routes_ui import router as ui_router
from xplane.api.routes_webhooks import TerraformWebhook, WebhookNotifier
from xplane.api.routes_webhooks import make_router as make_webhook_router
from xplane.api.schemas import ErrorBody
from xplane.api.settings import ApiSettings
from xplane.api.writer import HeartbeatWriter
from xplane.observability.metrics import metrics_router
from xplane.observability.tracing import tracing_requested
from xplane.store.db import make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.events import prune_events
from xplane.store.samples import prune_samples
from xplane.store.webhook_deliveries import prune_deliveries
from xplane.webhooks.dispatcher import DeliveryDispatcher, DeliveryRefused, DispatchSettings

log = logging.getLogger(__name__)

# What any route may answer before its handler runs: a stalled body (408), headers
# over the limit (431, from the HTTP layer) and a saturated replica (503).
COMMON_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (408, 431, 503)
}


def create_app(
    settings: ApiSettings,
    notifier: NodeNotifier | None = None,
    extra_routers: Sequence[APIRouter] = (),
    webhook_notifier: WebhookNotifier | None = None,
    actions: WorkflowActions | None = None,
) -> FastAPI:
    """The API: nodes, read endpoints, CI webhooks and ``/metrics``.

    ``notifier`` hears of registrations and ``webhook_notifier`` of CI webhooks
    (both: Temporal signals in production); ``actions`` runs operators' Workflow Updates
    (without it those routes answer 503); ``extra_routers`` are included as given.

    The schema must exist (migrations or ``Base.metadata.create_all``).
    """
    engine = make_engine(settings.db_url, pool_pre_ping=True)
    factory = make_sessionmaker(engine)
    writer_engine = _writer_engine(settings, engine)
    writer = HeartbeatWriter(
        make_sessionmaker(writer_engine),
        settings.timeout,
        max_size=settings.batch_max_size,
        max_wait=settings.batch_max_wait.total_seconds(),
        queue_size=settings.queue_size,
        concurrency=settings.writer_concurrency,
        synchronous_commit=settings.heartbeat_synchronous_commit,
    )
    ctx = ApiContext(
        settings=settings,
        engine=engine,
        factory=factory,
        writer=writer,
        tokens=TokenCache(settings.token_cache_ttl.total_seconds()),
        notifier=notifier,
        dispatcher=_dispatcher(factory, settings, notifier, webhook_notifier),
    )
    dispatcher = ctx.dispatcher

    deadlines = BodyDeadlines(settings.body_read_timeout.total_seconds())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        writer.start()
        tasks = [asyncio.create_task(_prune_forever(ctx), name="sample-pruner")]
        if dispatcher is not None:
            tasks.append(asyncio.create_task(dispatcher.run(), name="delivery-dispatcher"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await writer.stop()
            await deadlines.stop()
            engine.dispose()
            writer_engine.dispose()

    app = XPlaneApi(
        title="XPlane API",
        version="1",
        lifespan=lifespan,
        telemetry=api_telemetry(),
        responses=COMMON_RESPONSES,
    )
    app.in_flight = InFlightLimit(settings.max_concurrency)
    app.body_deadlines = deadlines
    app.state.ctx = ctx
    app.state.settings = settings
    app.state.webhook_notifier = webhook_notifier
    app.state.actions = actions
    app.state.dispatcher = dispatcher
    install_error_handlers(app)
    app.state.authenticator = Authenticator(settings, factory)  # the console's pages use it too
    # Added before the body-size guard, so inside it: the bodies it reads are bounded.
    app.add_middleware(
        AuthzMiddleware,
        api=app,
        authenticator=app.state.authenticator,
    )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        deadlines=deadlines,
    )
    routers = (
        health_router,
        nodes_router,
        admin_router,
        actions_router,
        tokens_router,
        make_webhook_router(),
        console_router,
        ui_router,
    )
    metrics_token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    for router in (*routers, metrics_router(factory, token=metrics_token), *extra_routers):
        app.include_router(router)
    unruled = missing_rules(app)
    if unruled:  # every route is authorized from xplane/api/authz.py's table, or none runs
        raise RuntimeError(f"routes without an authorization rule: {unruled}")
    return app


def _writer_engine(settings: ApiSettings, engine: Engine) -> Engine:
    """The heartbeat writer's own pool on a server database, without pre-ping: a ping is
    a round trip per batch, and the writer already tries a failed batch once more (a
    dropped connection is discarded on its first error). SQLite: the shared engine."""
    if engine.dialect.name == "sqlite":
        return engine
    size = settings.writer_concurrency
    return make_engine(settings.db_url, pool_size=size, max_overflow=size)


def _dispatcher(
    factory: sessionmaker[Session],
    settings: ApiSettings,
    notifier: NodeNotifier | None,
    webhook_notifier: WebhookNotifier | None,
) -> DeliveryDispatcher | None:
    """The outbox dispatcher for the kinds this replica can deliver (None: none).

    A replica without a workflow client still stores webhooks: one that has one
    (or this one, restarted with Temporal configured) delivers them.
    """
    kinds = (["node"] if notifier else []) + (["terraform", "git"] if webhook_notifier else [])
    if not kinds:
        return None

    async def deliver(kind: str, payload: dict[str, Any]) -> None:
        if kind == "node" and notifier is not None:
            await notifier.node_registered(
                payload["node_id"], payload["service"], payload["region"]
            )
        elif kind == "terraform" and webhook_notifier is not None:
            await webhook_notifier.terraform_finished(TerraformWebhook.model_validate(payload))
        elif kind == "git" and webhook_notifier is not None:
            await webhook_notifier.sync_now()
        else:
            raise DeliveryRefused(f"no notifier for {kind} deliveries")

    dispatch = DispatchSettings(
        attempt_timeout=settings.notifier_timeout * 3,  # connect, start, signal
        retry_max=settings.delivery_retry_max,
    )
    return DeliveryDispatcher(factory, deliver, kinds, dispatch)


def api_telemetry(environ: Mapping[str, str] | None = None) -> TelemetryConfig:
    """FastAPI's native OpenTelemetry: request spans only when tracing is configured.

    Left at its defaults it asks the global providers on every request (environment
    lookups included), which cost about a third of the heartbeat hot path's CPU when
    nothing is exported. XPlane's metrics are Prometheus and its logs JSON, so those
    two OpenTelemetry signals stay off.
    """
    tracing = tracing_requested(environ)
    return {"tracing": tracing, "operation_spans": tracing, "metrics": False, "logs": False}


async def _prune_forever(ctx: ApiContext) -> None:
    """Drop samples and webhook deliveries older than their retentions (every replica
    does it; that is harmless)."""
    while True:
        try:
            await asyncio.to_thread(_prune, ctx, utcnow())
        except Exception as exc:
            log.warning("pruning metric samples and webhook deliveries failed: %s", exc)
        await asyncio.sleep(ctx.settings.prune_interval.total_seconds())


def _prune(ctx: ApiContext, now: datetime) -> None:
    with transaction(ctx.factory) as session:
        removed = prune_samples(session, now - ctx.settings.sample_retention)
        deliveries = prune_deliveries(session, now - ctx.settings.webhook_delivery_retention)
        events = 0
        if ctx.settings.event_retention is not None:  # never audit events
            events = prune_events(session, now - ctx.settings.event_retention)
    if removed:
        log.info("pruned %d metric samples", removed)
    if deliveries:
        log.info("pruned %d webhook deliveries", deliveries)
    if events:
        log.info("pruned %d events", events)
