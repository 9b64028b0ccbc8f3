"""API tokens (admin only): ``GET /tokens``, ``POST /tokens``, ``DELETE /tokens/{name}``.

The token is in the answer to ``POST`` and nowhere else, ever: the store keeps
its hash, the listing and the audit log its name.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator, BaseModel, Field

from xplane.api.authz import current_identity
from xplane.api.context import ApiContext, current_ctx
from xplane.api.errors import ApiError
from xplane.api.schemas import ErrorBody, RequestModel, text
from xplane.auth.roles import Scope
from xplane.durations import parse_duration
from xplane.store import api_tokens
from xplane.store.db import transaction, utcnow

router = APIRouter(tags=["tokens"])
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422)
}
MAX_LIFETIME = timedelta(days=3650)
TokenName = Annotated[str, Field(pattern=api_tokens.NAME_PATTERN)]


def _scope(value: str) -> str:
    return str(Scope.parse(value))


def _lifetime(value: str) -> str:
    lifetime = parse_duration(value)
    if not timedelta(minutes=1) <= lifetime <= MAX_LIFETIME:
        raise ValueError("must be between 1m and 3650d")
    return value


class TokenCreate(RequestModel):
    name: TokenName
    role: Literal["viewer", "operator", "admin"]
    # Empty: every service and region; else SERVICE or SERVICE/REGION each.
    scopes: list[Annotated[str, Field(max_length=257), AfterValidator(_scope)]] = Field(
        default_factory=list, max_length=32
    )
    expires_in: Annotated[str, Field(max_length=32), AfterValidator(_lifetime)] = "90d"
    reason: Annotated[str, text(512)] | None = None


class TokenOut(BaseModel):
    name: str
    role: str
    scopes: list[str]
    created_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    state: Literal["active", "expired", "revoked"]


class TokenCreated(TokenOut):
    token: str  # shown once


def token_out(row: api_tokens.ApiTokenRow, now: datetime) -> TokenOut:
    state: Literal["active", "expired", "revoked"] = (
        "revoked" if row.revoked_at else "expired" if row.expires_at <= now else "active"
    )
    return TokenOut(
        name=row.name,
        role=row.role,
        scopes=list(row.scopes or []),
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        state=state,
    )


@router.get("/tokens", response_model=list[TokenOut], responses=_ERRORS)
def list_tokens(ctx: ApiContext = Depends(current_ctx)) -> list[TokenOut]:
    now = utcnow()
    with ctx.factory() as session:
        return [token_out(r, now) for r in api_tokens.list_tokens(session)]


@router.post("/tokens", response_model=TokenCreated, status_code=201, responses=_ERRORS)
async def create_token(
    body: TokenCreate, request: Request, ctx: ApiContext = Depends(current_ctx)
) -> TokenCreated:
    identity = current_identity(request)
    created_by = identity.name if identity is not None else "unknown"
    expires_at = utcnow() + parse_duration(body.expires_in)

    def create() -> TokenCreated:
        try:
            with transaction(ctx.factory) as session:
                new = api_tokens.create_token(
                    session, body.name, body.role, body.scopes, expires_at, created_by
                )
                out = token_out(new.row, utcnow())
        except api_tokens.TokenExists:
            message = f"a token named {body.name!r} exists (names are never reused)"
            raise ApiError(409, "token name taken", [("name", message)]) from None
        return TokenCreated(**out.model_dump(), token=new.token)

    return await run_in_threadpool(create)


@router.delete("/tokens/{name}", response_model=TokenOut, responses=_ERRORS)
def revoke_token(
    name: Annotated[str, Path(pattern=api_tokens.NAME_PATTERN)],
    ctx: ApiContext = Depends(current_ctx),
) -> TokenOut:
    try:
        with transaction(ctx.factory) as session:
            row = api_tokens.revoke_token(session, name)
            return token_out(row, utcnow())
    except api_tokens.TokenNotFound:
        raise ApiError(404, "unknown token", [("name", f"no token named {name!r}")]) from None
