"""Load guards in front of the whole API (hot path included).

A replica that accepts every request under overload gets slower for all of
them; past ``limit`` requests in flight it answers 503 at once instead, so
clients back off (``Retry-After``) or go to another replica.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from xplane.api.errors import ApiError, render_error

# Liveness must answer even when the replica is saturated.
EXEMPT_PATHS = frozenset({"/healthz"})


class InFlightLimit:
    """Counts requests in flight; ``admit`` says whether one more may start."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def admit(self, scope: Scope) -> bool:
        if scope["path"] in EXEMPT_PATHS:
            return True
        return self.active < self.limit

    async def reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"more than {self.limit} requests in flight on this replica: retry shortly"
        exc = ApiError(503, "too many requests", [("request", message)], {"Retry-After": "1"})
        await render_error(exc, f"{scope['method']} {scope['path']}")(scope, receive, send)
