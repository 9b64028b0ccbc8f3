"""Operator endpoints: node and region reads; plus liveness/readiness.

Who may call them is decided by :mod:`xplane.api.authz`; listings show only
what the caller's scopes cover. Actions (drain, pause, ...) are in
:mod:`xplane.api.routes_actions`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy import text

from xplane.api.authz import current_identity
from xplane.api.context import ApiContext, get_ctx
from xplane.api.errors import ApiError
from xplane.api.schemas import NO_NUL_PATTERN, ErrorBody, NodeOut
from xplane.domain import NodeState
from xplane.store import config_store
from xplane.store import nodes as store
from xplane.store.db import utcnow
from xplane.store.node_tables import NodeRow
from xplane.store.tables import column_length

router = APIRouter(tags=["admin"])
health_router = APIRouter(tags=["health"])
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 422)
}
# Path and query strings reach SQL: no NUL (PostgreSQL refuses it), at most the column.
NodeIdPath = Annotated[str, Path(max_length=column_length("nodes", "id"), pattern=NO_NUL_PATTERN)]
ServiceQuery = Annotated[
    str | None, Query(max_length=column_length("nodes", "service"), pattern=NO_NUL_PATTERN)
]
RegionQuery = Annotated[
    str | None, Query(max_length=column_length("nodes", "region"), pattern=NO_NUL_PATTERN)
]


def node_out(row: NodeRow, ctx: ApiContext) -> NodeOut:
    now = utcnow()
    snap = store.to_snapshot(row, now, ctx.settings.timeout)
    return NodeOut(
        id=row.id,
        service=row.service,
        region=row.region,
        address=row.address,
        port=row.port,
        hostname=row.hostname,
        labels=row.labels or {},
        agent_version=row.agent_version,
        state=snap.state,
        status=snap.status,
        drain_requested=row.drain_requested,
        drain_requested_by=row.drain_requested_by,
        reported_status=row.reported_status,
        registered_at=row.registered_at,
        last_heartbeat_at=row.last_heartbeat_at,
        heartbeat_age_seconds=snap.heartbeat_age_seconds,
        cpu=row.cpu,
        rtt_ms=row.rtt_ms,
        error_rate=row.error_rate,
        qps=row.qps,
        probes_ok=row.probes_ok,
        probes_total=row.probes_total,
        health_check_ok=row.health_check_ok,
    )


@router.get("/nodes", response_model=list[NodeOut], responses=_ERRORS)
def list_nodes(
    request: Request,
    service: ServiceQuery = None,
    region: RegionQuery = None,
    state: NodeState | None = None,
    ctx: ApiContext = Depends(get_ctx),
) -> list[NodeOut]:
    identity = current_identity(request)
    with ctx.factory() as session:
        rows = store.list_nodes(session, service=service, region=region, state=state)
        return [
            node_out(r, ctx) for r in rows if identity is None or identity.sees(r.service, r.region)
        ]


@router.get("/nodes/{node_id}", response_model=NodeOut, responses=_ERRORS)
def get_node(node_id: NodeIdPath, ctx: ApiContext = Depends(get_ctx)) -> NodeOut:
    with ctx.factory() as session:
        try:
            return node_out(store.get_node(session, node_id), ctx)
        except store.NodeNotFound as exc:
            raise ApiError(404, "unknown node", [("node_id", str(exc))]) from None


@router.get("/regions", response_model=list[store.RegionSummary], responses=_ERRORS)
def regions(
    request: Request, service: ServiceQuery = None, ctx: ApiContext = Depends(get_ctx)
) -> list[store.RegionSummary]:
    identity = current_identity(request)
    with ctx.factory() as session:
        known = config_store.service_regions(session)
        if service is not None:
            known = {s: r for s, r in known.items() if s == service}
        rows = store.list_nodes(session, service=service)
    if identity is not None:  # only what the caller's scopes cover
        known = {s: {r for r in rs if identity.sees(s, r)} for s, rs in known.items()}
        known = {s: rs for s, rs in known.items() if rs}
        rows = [r for r in rows if identity.sees(r.service, r.region)]
    return store.region_summaries(rows, utcnow(), ctx.settings.timeout, known)


@health_router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@health_router.get("/readyz", responses={503: {"model": ErrorBody}})
def readyz(ctx: ApiContext = Depends(get_ctx)) -> dict[str, str]:
    """Readiness: the database answers."""
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise ApiError(503, "database unreachable", [("db", type(exc).__name__)]) from None
    return {"status": "ready"}
