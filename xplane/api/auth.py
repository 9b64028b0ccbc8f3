"""Bearer tokens of machines: bootstrap (registration), per-node (heartbeats).

People and their API tokens are authenticated and authorized in :mod:`xplane.api.authz`.

Node tokens are random 32 bytes, so a plain sha256 is a safe at-rest hash (no
salt or slow hash needed: there is nothing to brute-force). Every comparison
against a configured secret is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

from fastapi import Request

from xplane.api.errors import ApiError

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(request: Request) -> str:
    """The request's bearer token, or 401."""
    return parse_bearer(request.headers.get("authorization", ""))


def parse_bearer(header: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value, or 401."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "missing bearer token", [("authorization", "Bearer token required")], UNAUTHORIZED
        )
    return token.strip()


def matches_any(token: str, accepted: Iterable[str]) -> bool:
    # Compare against every candidate (no early exit) so timing says nothing.
    found = False
    for candidate in accepted:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def is_token_of(token: str, token_hash: str) -> bool:
    """Whether ``token`` is the one stored as ``token_hash`` (constant-time)."""
    return hmac.compare_digest(hash_token(token).encode(), token_hash.encode())


async def bearer_token(request: Request) -> str:
    """FastAPI dependency form of :func:`bearer`: async, so it runs inline on the event
    loop (a sync dependency costs a thread-pool round trip per request)."""
    return bearer(request)


class TokenCache:
    """token hash -> node id for ``ttl`` seconds, so most heartbeats skip a lookup.

    Only positive answers are cached. It can be stale for at most ``ttl`` after
    a re-registration (on this replica or another); the heartbeat write itself
    checks the hash again, so a stale entry can never store a heartbeat.
    """

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: dict[str, tuple[str, float]] = {}

    def get(self, token_hash: str) -> str | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        node_id, expires = entry
        if time.monotonic() >= expires:
            self._entries.pop(token_hash, None)
            return None
        return node_id

    def put(self, token_hash: str, node_id: str) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude but bounded; refills from the DB
        self._entries[token_hash] = (node_id, time.monotonic() + self.ttl)

    def forget(self, token_hash: str) -> None:
        self._entries.pop(token_hash, None)
