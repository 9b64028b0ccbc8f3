"""The agent-facing endpoints: ``POST /nodes/register`` and ``POST /nodes/heartbeat``.

Neither touches Temporal: registration stores the node and, in the same
transaction, a delivery for the outbox dispatcher (which starts the node's
lifecycle workflow whenever Temporal can take it); heartbeats go to the store
through the batching writer.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from xplane.api.auth import (
    UNAUTHORIZED,
    bearer_token,
    hash_token,
    is_token_of,
    matches_any,
    new_token,
)
from xplane.api.context import ApiContext, current_ctx
from xplane.api.errors import ApiError
from xplane.api.schemas import (
    ErrorBody,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
)
from xplane.api.writer import StoreUnavailable, WriterBusy
from xplane.domain import NodeState
from xplane.store import config_store
from xplane.store import webhook_deliveries as deliveries
from xplane.store.db import transaction, utcnow
from xplane.store.events import record_event
from xplane.store.heartbeats import Heartbeat
from xplane.store.node_tables import NodeRow
from xplane.store.registration import (
    Authorize,
    Registration,
    RegistrationConflict,
    RegistrationRefused,
    node_for_token,
    register_node,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["nodes"])
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}


@router.post("/nodes/register", response_model=RegisterResponse, responses=_ERRORS)
async def register(
    body: RegisterRequest,
    ctx: ApiContext = Depends(current_ctx),
    token: str = Depends(bearer_token),
) -> RegisterResponse:
    """Register a new node, or an existing one again (a restarted agent, a node given up
    that comes back).

    A new node needs a bootstrap token for its region. An existing node id needs that
    node's own token, or a bootstrap token for the region it is registered in, and never
    moves to another service or region: one region's token cannot take over another
    region's node.
    """
    bootstrap = matches_any(token, ctx.settings.bootstrap_tokens_for(body.region))
    if not bootstrap and body.node_id is None:
        raise _bad_bootstrap(body.region)
    node_token = new_token()
    caller = _Caller(token, bootstrap)
    row = await run_in_threadpool(_register, ctx, body, caller, hash_token(node_token))
    if ctx.dispatcher is not None:
        ctx.dispatcher.wake()  # the lifecycle starts from the store, not in this request
    return RegisterResponse(
        node_id=row.id,
        token=node_token,
        heartbeat_interval_seconds=ctx.settings.heartbeat_interval_seconds,
        state=NodeState(row.state),
    )


@dataclass(frozen=True)
class _Caller:
    token: str
    bootstrap: bool  # a bootstrap token for the region in the request body


def _authorizer(ctx: ApiContext, caller: _Caller) -> Authorize:
    def authorize(existing: NodeRow | None) -> bool:
        if existing is None:
            return caller.bootstrap
        # Judged against the region the node is in now, not the one the body claims.
        own = is_token_of(caller.token, existing.token_hash)
        return own or matches_any(caller.token, ctx.settings.bootstrap_tokens_for(existing.region))

    return authorize


def _register(ctx: ApiContext, body: RegisterRequest, caller: _Caller, token_hash: str) -> NodeRow:
    try:
        return _register_once(ctx, body, caller, token_hash)
    except IntegrityError:
        # Two replicas inserted the same new node id at once: the loser sees it now.
        return _register_once(ctx, body, caller, token_hash)


def _register_once(
    ctx: ApiContext, body: RegisterRequest, caller: _Caller, token_hash: str
) -> NodeRow:
    now = utcnow()
    with transaction(ctx.factory) as session:
        _check_known(session, body.service, body.region)
        node_id = body.node_id or _new_node_id(session, body.region)
        reg = Registration(
            node_id=node_id,
            service=body.service,
            region=body.region,
            address=body.address,
            token_hash=token_hash,
            port=body.port,
            hostname=body.hostname,
            labels=body.labels,
            agent_version=body.agent_version,
        )
        try:
            row, created = register_node(
                session, reg, now, ctx.settings.timeout, authorize=_authorizer(ctx, caller)
            )
        except RegistrationRefused:
            if not caller.bootstrap:
                raise _bad_bootstrap(body.region, node_id) from None
            message = f"this token may not register node {node_id!r}"
            raise ApiError(403, "node id not yours", [("node_id", message)]) from None
        except RegistrationConflict as exc:
            # Name the field only: the other node's address, region or service stay private.
            raise ApiError(409, "node id in use", [(exc.field, _conflict_message(exc))]) from None
        if ctx.notifier is not None:
            # Signal-with-start ``registered`` to node-<id>, by the dispatcher: a new node's
            # lifecycle starts, a given-up node's starts again, a running one is unchanged.
            deliveries.record_delivery(
                session,
                f"node:{uuid.uuid4().hex}",
                "node",
                {"node_id": node_id, "service": body.service, "region": body.region},
                now,
            )
        if created:
            record_event(
                session,
                "node.registered",
                f"{node_id} registered at {body.address}",
                source="api",
                service=body.service,
                region=body.region,
                node_id=node_id,
                at=now,
            )
        return row


def _conflict_message(exc: RegistrationConflict) -> str:
    if exc.field == "address":
        return f"node {exc.node_id!r} is live at another address; not re-registering it"
    return f"node {exc.node_id!r} is registered in another {exc.field}; a node never moves"


def _bad_bootstrap(region: str, node_id: str | None = None) -> ApiError:
    message = f"not a bootstrap token for region {region!r}"
    if node_id is not None:
        message += f", nor the token of node {node_id!r}"
    return ApiError(401, "invalid bootstrap token", [("authorization", message)], UNAUTHORIZED)


def _check_known(session: Session, service: str, region: str) -> None:
    known = config_store.service_regions(session)
    if service not in known:
        names = ", ".join(sorted(known)) or "none configured"
        raise ApiError(
            422, "unknown service", [("service", f"unknown service {service!r} (known: {names})")]
        )
    if region not in known[service]:
        names = ", ".join(sorted(known[service])) or "none"
        message = f"region {region!r} is not a region of service {service!r} (known: {names})"
        raise ApiError(422, "unknown region", [("region", message)])


def _new_node_id(session: Session, region: str) -> str:
    while True:
        candidate = f"{region}-{secrets.token_hex(4)}"
        if session.get(NodeRow, candidate) is None:
            return candidate


async def json_body(request: Request) -> None:
    """415 unless the body is declared JSON (the hot path checks the same)."""
    from xplane.api.hot_path import require_json  # hot_path imports this module

    require_json(request.headers.get("content-type", "").encode("latin-1"))


@router.post("/nodes/heartbeat", response_model=HeartbeatResponse, responses=_ERRORS)
async def heartbeat(
    body: HeartbeatRequest,
    ctx: ApiContext = Depends(current_ctx),
    token: str = Depends(bearer_token),
    _json: None = Depends(json_body),
) -> HeartbeatResponse:
    """Documents the endpoint in the OpenAPI schema; requests are served in front of
    FastAPI by :mod:`xplane.api.hot_path` (same code, same answers)."""
    return await store_heartbeat(ctx, hash_token(token), body)


async def store_heartbeat(
    ctx: ApiContext, token_hash: str, body: HeartbeatRequest
) -> HeartbeatResponse:
    cached_owner = ctx.tokens.get(token_hash)
    if cached_owner is not None and cached_owner != body.node_id:
        await _reject(ctx, token_hash, body.node_id)
    beat = Heartbeat(
        node_id=body.node_id,
        token_hash=token_hash,
        at=utcnow(),
        cpu=body.cpu,
        rtt_ms=body.rtt_ms,
        error_rate=body.error_rate,
        qps=body.qps,
        probes_ok=sum(1 for p in body.probes if p.ok),
        probes_total=len(body.probes),
        reported_status=body.status,
    )
    # No lookup before the write: the batched UPDATE itself checks the token hash
    # against the node's row, so the hot path is one trip to the store per batch.
    try:
        result = await ctx.writer.submit(beat)
    except WriterBusy:
        raise ApiError(503, "too many heartbeats queued", headers={"Retry-After": "1"}) from None
    except StoreUnavailable:
        raise ApiError(503, "store unavailable", headers={"Retry-After": "1"}) from None
    if result is None:  # wrong, unknown or replaced token: find out which, nothing stored
        ctx.tokens.forget(token_hash)
        await _reject(ctx, token_hash, body.node_id)
    ctx.tokens.put(token_hash, body.node_id)
    assert result is not None
    return HeartbeatResponse(
        state=NodeState(result.state),
        status=result.status,
        action=result.action,
        heartbeat_interval_seconds=ctx.settings.heartbeat_interval_seconds,
    )


async def _reject(ctx: ApiContext, token_hash: str, node_id: str) -> None:
    """Raise the right error for a token that may not beat for ``node_id`` (slow path)."""
    owner = await run_in_threadpool(_lookup_token, ctx, token_hash)
    if owner is None or owner == node_id:
        raise _bad_token()
    if await run_in_threadpool(_node_exists, ctx, node_id):
        raise ApiError(403, "token belongs to another node", [("node_id", "not your node")])
    raise ApiError(404, "unknown node", [("node_id", f"node {node_id!r} is not registered")])


def _lookup_token(ctx: ApiContext, token_hash: str) -> str | None:
    with ctx.factory() as session:
        return node_for_token(session, token_hash)


def _node_exists(ctx: ApiContext, node_id: str) -> bool:
    with ctx.factory() as session:
        return session.get(NodeRow, node_id) is not None


def _bad_token() -> ApiError:
    message = "unknown or replaced node token: register again"
    return ApiError(401, "invalid node token", [("authorization", message)], UNAUTHORIZED)
