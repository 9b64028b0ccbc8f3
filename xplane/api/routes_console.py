"""The console's JSON endpoints (``/console/*``): what ``/ui`` renders, for any dashboard.

Read-only. Each route reads the store in one session and hands the rows to a pure
builder of :mod:`xplane.api.console_views`; the ``load_*`` functions are shared with
the HTML pages. The overview reads per-region aggregates, never a row per node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from xplane.api.authz import current_identity
from xplane.api.console_auth import (
    node_actions,
    overview_actions,
    plan_actions,
    region_actions,
)
from xplane.api.console_loops import app_loops, loop_statuses, with_loop_states
from xplane.api.console_views import (
    ConfigPage,
    EventOut,
    HeldPlan,
    NodePage,
    Overview,
    RegionPage,
    Traffic,
    build_config_page,
    build_node_page,
    build_overview,
    build_region_page,
    event_out,
    held_plans_of,
    node_line,
    traffic_history,
)
from xplane.api.context import ApiContext, get_ctx
from xplane.api.errors import ApiError
from xplane.api.schemas import NO_NUL_PATTERN, ErrorBody
from xplane.auth.roles import Identity
from xplane.gate import GateSettings, verdict_for
from xplane.store import config_store
from xplane.store import console_queries as q
from xplane.store import gate as gate_store
from xplane.store import nodes as node_store
from xplane.store.db import utcnow
from xplane.store.events import list_events
from xplane.store.pools import list_pools
from xplane.store.tables import column_length

router = APIRouter(prefix="/console", tags=["console"])
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 422)
}


def require_console_reader(request: Request) -> Identity:
    """The caller as the authorization middleware found it (bearer token or session)."""
    who = current_identity(request)
    if who is None:  # only if a rule is missing: the middleware authenticates every read
        raise ApiError(401, "invalid credentials", [("authorization", "no identity")])
    return who


Reader = Annotated[Identity, Depends(require_console_reader)]


def _name(table: str, column: str) -> object:
    return Path(max_length=column_length(table, column), pattern=NO_NUL_PATTERN)


ServicePath = Annotated[str, _name("nodes", "service")]
RegionPath = Annotated[str, _name("nodes", "region")]
NodePath = Annotated[str, _name("nodes", "id")]


def _filter(column: str) -> object:
    return Query(max_length=column_length("events", column), pattern=NO_NUL_PATTERN)


KindQuery = Annotated[str | None, _filter("kind")]
ServiceQuery = Annotated[str | None, _filter("service")]
RegionQuery = Annotated[str | None, _filter("region")]
NodeQuery = Annotated[str | None, _filter("node_id")]

RECENT_SOURCES = 5000  # events scanned for each loop's last activity


# -- loaders (store -> view model), shared with the HTML pages ----------------------------


def load_overview(session: Session, ctx: ApiContext, who: Identity | None) -> Overview:
    now = utcnow()
    config = config_store.current_config(session)
    revision = config_store.current_revision(session)
    rates = {s: p.max_error_rate for s, p in (config.gtm if config else {}).items()}
    tallies = q.region_tallies(session, now, ctx.settings.timeout, rates)
    pools = list_pools(session)
    stored = gate_store.read_gate(session)
    gate_settings = GateSettings.from_env()
    heartbeat = ctx.settings.heartbeat
    services = sorted(config.gtm) if config else []
    # The newest per provider is among a service's last few applies (a handful of providers).
    applies = [row for s in services for row in q.latest_dns_applies(session, s, limit=20)]
    loop_ids = {f"gtm-{s}" for s in services} | {
        f"autoscale-{s}-{r.name}"
        for s in services
        for r in config.gtm[s].regions  # type: ignore[union-attr]
    }
    latest = q.latest_by_source(session, loop_ids, RECENT_SOURCES)
    holds: dict[tuple[str, str], str] = {}
    for service in services:
        for entry in config.gtm[service].regions:  # type: ignore[union-attr]
            verdict = verdict_for(
                stored.decision,
                service,
                entry.name,
                now,
                heartbeat,
                gate_settings,
                operator_closed=stored.operator_closed,
                operator_reason=stored.operator_reason,
            )
            if verdict.verdict != "normal":
                holds[(service, entry.name)] = f"{verdict.verdict}: {verdict.reason}"
    return visible_overview(
        who,
        build_overview(
            now=now,
            config=config,
            revision=revision.sha if revision else None,
            tallies=tallies,
            pools=pools,
            applies=applies,
            latest_by_source=latest,
            gate_lines=gate_store.describe(stored, now, heartbeat, gate_settings),
            gate_holds=holds,
            actions=overview_actions(who, services),
        ),
    )


def visible_overview(who: Identity | None, view: Overview) -> Overview:
    """Only the services and regions ``who`` may read (a scoped grant sees its own)."""
    if who is None or who.unrestricted_reader:
        return view
    for service in view.services:
        service.regions = [r for r in service.regions if who.sees(service.service, r.region)]
    view.services = [s for s in view.services if s.regions]
    return view


def visible_event(who: Identity | None, service: str | None, region: str | None) -> bool:
    """An event about a service is for those who may read it; others for unscoped readers."""
    if who is None or who.unrestricted_reader:
        return True
    return service is not None and who.sees(service, region)


def load_region(
    session: Session,
    ctx: ApiContext,
    who: Identity | None,
    service: str,
    region: str,
    events: int = 200,
) -> RegionPage:
    overview = load_overview(session, ctx, who)
    summary = next(
        (
            r
            for s in overview.services
            if s.service == service
            for r in s.regions
            if r.region == region
        ),
        None,
    )
    if summary is None:
        raise ApiError(404, "unknown region", [("region", f"{service}/{region} is not in config")])
    now = utcnow()
    rows = node_store.list_nodes(session, service=service, region=region)
    nodes = [
        node_line(
            r,
            now,
            ctx.settings.timeout,
            node_actions(who, r.id, r.drain_requested, r.service, r.region),
        )
        for r in rows
    ]
    recent = list_events(session, service=service, region=region, limit=events)
    return build_region_page(summary, nodes, recent, region_actions(who, service, region))


def load_node(session: Session, ctx: ApiContext, who: Identity | None, node_id: str) -> NodePage:
    try:
        row = node_store.get_node(session, node_id)
    except node_store.NodeNotFound as exc:
        raise ApiError(404, "unknown node", [("node_id", str(exc))]) from None
    line = node_line(
        row,
        utcnow(),
        ctx.settings.timeout,
        node_actions(who, row.id, row.drain_requested, row.service, row.region),
    )
    return build_node_page(line, q.node_events(session, node_id))


def load_traffic(
    session: Session, ctx: ApiContext, minutes: int, who: Identity | None = None
) -> Traffic:
    now = utcnow()
    since = now - timedelta(minutes=minutes)
    config = config_store.current_config(session)
    regions = [
        (s, r.name) for s, p in sorted((config.gtm if config else {}).items()) for r in p.regions
    ]
    rates = {s: p.max_error_rate for s, p in (config.gtm if config else {}).items()}
    tallies = q.region_tallies(session, now, ctx.settings.timeout, rates)
    applies = q.events_since(session, since, (q.DNS_APPLIED,))
    lifecycle = [
        e
        for e in q.events_since(session, since, ("node.",))
        if e.kind == "node.registered" or "." not in e.kind.removeprefix("node.")
    ]
    before: dict[tuple[str, str], float] = {}
    for row in q.latest_dns_applies(session, limit=200):
        if row.at < since:
            for region, weight in ((row.data or {}).get("regions") or {}).items():
                before.setdefault((row.service or "", region), float(weight))
    traffic = traffic_history(
        now=now,
        since=since,
        regions=regions,
        applies=applies,
        node_events=lifecycle,
        tallies=tallies,
        weight_before=before,
    )
    traffic.series = [t for t in traffic.series if visible_event(who, t.service, t.region)]
    return traffic


def load_published(session: Session, services: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per service and provider key, the region weights of its newest DNS apply."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for service in services:
        for row in q.latest_dns_applies(session, service, limit=20):  # newest first
            data = row.data or {}
            regions = data.get("regions") or {}
            out.setdefault(service, {}).setdefault(
                str(data.get("provider", "")), {str(r): float(w) for r, w in regions.items()}
            )
    return out


async def held_plans(request: Request, ctx: ApiContext, who: Identity) -> list[HeldPlan]:
    """Plans the safety threshold refused, as each GTM loop holds them (its ``status``
    query in Temporal: the store keeps no record of them); empty without Temporal."""

    def load() -> tuple[list[str], dict[str, dict[str, dict[str, float]]]]:
        with ctx.factory() as session:
            config = config_store.current_config(session)
            services = [s for s in sorted(config.gtm if config else {}) if who.sees(s)]
            return services, load_published(session, services)

    services, published = await asyncio.to_thread(load)
    statuses = await loop_statuses(request, [f"gtm-{s}" for s in services])
    return [
        plan
        for s in services
        for plan in held_plans_of(
            s, statuses.get(f"gtm-{s}"), published.get(s, {}), plan_actions(who, s)
        )
    ]


def load_config(session: Session) -> ConfigPage:
    return build_config_page(
        config_store.current_revision(session), config_store.list_revisions(session, limit=20)
    )


def load_events(
    session: Session,
    *,
    kind: str | None,
    service: str | None,
    region: str | None,
    node: str | None,
    limit: int,
    who: Identity | None = None,
) -> list[EventOut]:
    rows = list_events(
        session, service=service, region=region, node_id=node, kind_prefix=kind, limit=limit
    )
    return [event_out(r) for r in rows if visible_event(who, r.service, r.region)]


# -- routes -----------------------------------------------------------------------------


async def overview_with_loops(request: Request, ctx: ApiContext, who: Identity) -> Overview:
    """The store's overview (in a thread), then each loop's state from Temporal."""

    def load() -> Overview:
        with ctx.factory() as session:
            return load_overview(session, ctx, who)

    view = await asyncio.to_thread(load)
    return await with_loop_states(view, app_loops(request))


@router.get("/overview", response_model=Overview, responses=_ERRORS)
async def overview(request: Request, who: Reader, ctx: ApiContext = Depends(get_ctx)) -> Overview:
    """Every service and region: base, effective and published weights with their
    reasons, nodes, pools, the last DNS apply per provider, loops (paused and why, from
    Temporal when the API has a client) and the health gate."""
    return await overview_with_loops(request, ctx, who)


@router.get("/traffic", response_model=Traffic, responses=_ERRORS)
def traffic(
    who: Reader,
    minutes: Annotated[int, Query(ge=1, le=24 * 60)] = 60,
    ctx: ApiContext = Depends(get_ctx),
) -> Traffic:
    """Per region, the published weight and the active/alive node counts over time."""
    with ctx.factory() as session:
        return load_traffic(session, ctx, minutes, who)


@router.get("/regions/{service}/{region}", response_model=RegionPage, responses=_ERRORS)
def region_page(
    service: ServicePath,
    region: RegionPath,
    who: Reader,
    events: Annotated[int, Query(ge=1, le=1000)] = 200,
    ctx: ApiContext = Depends(get_ctx),
) -> RegionPage:
    """A region's nodes, autoscale decisions, Terraform runs and its newest ``events``."""
    with ctx.factory() as session:
        return load_region(session, ctx, who, service, region, events)


@router.get("/nodes/{node_id}", response_model=NodePage, responses=_ERRORS)
def node_page(node_id: NodePath, who: Reader, ctx: ApiContext = Depends(get_ctx)) -> NodePage:
    """A node and its lifecycle timeline, with the reason of every step."""
    with ctx.factory() as session:
        return load_node(session, ctx, who, node_id)


@router.get("/events", response_model=list[EventOut], responses=_ERRORS)
def events(
    who: Reader,
    kind: KindQuery = None,
    service: ServiceQuery = None,
    region: RegionQuery = None,
    node: NodeQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ctx: ApiContext = Depends(get_ctx),
) -> list[EventOut]:
    """The newest events first; ``kind`` is a prefix (``audit.``, ``dns.``)."""
    with ctx.factory() as session:
        return load_events(
            session, kind=kind, service=service, region=region, node=node, limit=limit, who=who
        )


@router.get("/plans", response_model=list[HeldPlan], responses=_ERRORS)
async def plans(
    request: Request, who: Reader, ctx: ApiContext = Depends(get_ctx)
) -> list[HeldPlan]:
    """DNS plans held by the providers' safety threshold, as a diff (region, weight
    published -> weight wanted), with approve/reject for those allowed."""
    return await held_plans(request, ctx, who)


@router.get("/config", response_model=ConfigPage, responses=_ERRORS)
def config(_who: Reader, ctx: ApiContext = Depends(get_ctx)) -> ConfigPage:
    """The revision in force and a newer rejected one with its errors."""
    with ctx.factory() as session:
        return load_config(session)


STREAM_POLL_S = 1.0
STREAM_KEEPALIVE_S = 15.0
STREAM_MAX_S = 300.0  # the browser's EventSource reconnects (with Last-Event-ID)


@router.get(
    "/events/stream",
    responses={
        **_ERRORS,
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Server-sent events: `event: xplane`, `id`, `data` = an EventOut",
        },
    },
    response_class=StreamingResponse,
)
async def events_stream(
    request: Request,
    who: Reader,
    kind: KindQuery = None,
    service: ServiceQuery = None,
    region: RegionQuery = None,
    node: NodeQuery = None,
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    ctx: ApiContext = Depends(get_ctx),
) -> StreamingResponse:
    """New events as they are recorded (server-sent events). Starts after ``after`` (or
    the ``Last-Event-ID`` header), else after the newest event at connection time."""
    header = request.headers.get("last-event-id", "")
    resume = int(header) if header.isdigit() and int(header) < 2**63 else None
    start = after if after is not None else resume

    def poll(last: int) -> list[EventOut]:
        with ctx.factory() as session:
            rows = q.events_after(
                session, last, kind_prefix=kind, service=service, region=region, node_id=node
            )
            return [event_out(r) for r in rows if visible_event(who, r.service, r.region)]

    def newest() -> int:
        with ctx.factory() as session:
            return q.last_event_id(session)

    last = start if start is not None else await asyncio.to_thread(newest)

    async def stream() -> AsyncIterator[str]:
        nonlocal last
        loop = asyncio.get_running_loop()
        began = quiet_since = loop.time()
        yield f"retry: 2000\n: connected after {last}\n\n"
        while loop.time() - began < STREAM_MAX_S:
            if await request.is_disconnected():
                return
            for event in await asyncio.to_thread(poll, last):
                last = event.id
                quiet_since = loop.time()
                yield f"id: {event.id}\nevent: xplane\ndata: {event.model_dump_json()}\n\n"
            if loop.time() - quiet_since > STREAM_KEEPALIVE_S:
                quiet_since = loop.time()
                yield ": keep-alive\n\n"
            await asyncio.sleep(STREAM_POLL_S)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
