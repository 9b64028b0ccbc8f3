"""API tokens for machines and ``xplane up``: named, one grant each, stored hashed.

The token itself (``xpt_`` and 32 random bytes) is shown once, at creation; only
its sha256 is kept (random 32 bytes need no salt or slow hash: nothing to
brute-force). A token expires, and can be revoked; revoked tokens stay listed
(who had what, until when) and their names are not reused.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from xplane.auth.roles import Grant, Identity, Scope, role_named
from xplane.store.db import Base, UTCDateTime, utcnow

PREFIX = "xpt_"
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
NAME_MAX = 64


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"

    name: Mapped[str] = mapped_column(String(NAME_MAX), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: everything
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TokenExists(Exception):
    pass


class TokenNotFound(Exception):
    pass


@dataclass(frozen=True)
class NewToken:
    row: ApiTokenRow
    token: str  # the only time it exists outside the caller's hands


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def grants_of(row: ApiTokenRow) -> tuple[Grant, ...]:
    role = role_named(row.role)
    if not row.scopes:
        return (Grant(role),)
    return tuple(Grant(role, Scope.parse(s)) for s in row.scopes)


def create_token(
    session: Session,
    name: str,
    role: str,
    scopes: list[str],
    expires_at: datetime,
    created_by: str,
    *,
    replace: bool = False,
) -> NewToken:
    """A new token; :class:`TokenExists` if ``name`` is taken (``replace``: drop it first)."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"token name {name!r} must match {NAME_PATTERN}")
    role_named(role)
    scopes = [str(Scope.parse(s)) for s in scopes]
    existing = session.get(ApiTokenRow, name)
    if existing is not None:
        if not replace:
            raise TokenExists(name)
        session.delete(existing)
        session.flush()
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiTokenRow(
        name=name,
        token_hash=hash_token(token),
        role=role_named(role).name,
        scopes=scopes,
        created_by=created_by,
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return NewToken(row, token)


def list_tokens(session: Session) -> list[ApiTokenRow]:
    return list(session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.name)))


def revoke_token(session: Session, name: str, now: datetime | None = None) -> ApiTokenRow:
    row = session.get(ApiTokenRow, name)
    if row is None:
        raise TokenNotFound(name)
    if row.revoked_at is None:
        row.revoked_at = now or utcnow()
    return row


def identity_for(session: Session, token: str, now: datetime | None = None) -> Identity | None:
    """The identity of a live (known, unexpired, unrevoked) token, else None."""
    token_hash = hash_token(token)
    row = session.scalar(select(ApiTokenRow).where(ApiTokenRow.token_hash == token_hash))
    if row is None or not hmac.compare_digest(row.token_hash, token_hash):
        return None
    if row.revoked_at is not None or row.expires_at <= (now or utcnow()):
        return None
    return Identity(kind="api-token", subject=row.name, name=row.name, grants=grants_of(row))
