"""``POST /nodes/heartbeat`` served in front of the framework: the API's hot path.

Every node beats every few seconds, so this one endpoint is most of the API's
traffic. Through FastAPI, the middleware stack and routing cost about as much
CPU per request as validating and storing the heartbeat (measured with
``bench/heartbeat_ingest.py``); served here, a heartbeat is parsed, checked and
stored by the same code with the same answers, and everything else still goes
through FastAPI. The FastAPI route for heartbeats stays: it documents the
endpoint in the OpenAPI schema and serves it if the hot path is switched off.

Same behaviour as the route, in the same order: the body limit (413) and read
timeout (408), then the bearer token (401), then the media type (415), then the
body (422 naming the field), then the store
(403/404 for a token of another or an unknown node, 503 when the store cannot
take it). Errors render through :func:`xplane.api.errors.render_error`, the
function behind the app's exception handlers.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from xplane.api.auth import hash_token, parse_bearer
from xplane.api.context import ApiContext
from xplane.api.errors import ApiError, read_body, render_error
from xplane.api.guards import BodyDeadlines, InFlightLimit
from xplane.api.routes_nodes import store_heartbeat
from xplane.api.schemas import HeartbeatRequest

PATH = "/nodes/heartbeat"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class XPlaneApi(FastAPI):
    """FastAPI, with heartbeats answered before the middleware stack, and every
    request counted against the in-flight limit (503 past it) before either."""

    hot_path = True
    in_flight: InFlightLimit | None = None
    body_deadlines: BodyDeadlines | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.in_flight
        if limit is None or scope["type"] != "http":
            await self._dispatch(scope, receive, send)
            return
        if not limit.admit(scope):
            await limit.reject(scope, receive, send)
            return
        limit.active += 1
        try:
            await self._dispatch(scope, receive, send)
        finally:
            limit.active -= 1

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.hot_path
            and scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == "POST"
        ):
            await serve_heartbeat(self.state.ctx, scope, receive, send, self.body_deadlines)
            return
        await super().__call__(scope, receive, send)


async def serve_heartbeat(
    ctx: ApiContext,
    scope: Scope,
    receive: Receive,
    send: Send,
    deadlines: BodyDeadlines | None = None,
) -> None:
    try:
        raw = await read_body(scope, receive, ctx.settings.max_body_bytes, deadlines)
        if raw is None:  # the agent hung up: nothing to answer, nothing stored
            return
        token_hash = hash_token(_bearer(scope))
        require_json(_header(scope, b"content-type"))
        if not raw:  # what FastAPI says of a missing body
            raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "required"}])
        try:
            body = HeartbeatRequest.model_validate_json(raw)
        except ValidationError as err:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in err.errors()]
            ) from None
        answer = (await store_heartbeat(ctx, token_hash, body)).model_dump_json().encode()
    except Exception as exc:
        await render_error(exc, f"POST {PATH}")(scope, receive, send)
        return
    headers = [*_JSON_HEADERS, (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


def _header(scope: Scope, name: bytes) -> bytes:
    """The first header ``name`` (lower case), as Starlette reads it; b"" when absent."""
    return next((v for k, v in scope["headers"] if k == name), b"")


def _bearer(scope: Scope) -> str:
    """The bearer token of the first Authorization header (as Starlette reads it), or 401."""
    return parse_bearer(_header(scope, b"authorization").decode("latin-1"))


def require_json(content_type: bytes) -> None:
    """415 unless the media type is JSON (``application/json`` or ``application/*+json``)."""
    media = content_type.partition(b";")[0].strip().lower()
    if media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    ):
        return
    message = "must be application/json"
    raise ApiError(415, "unsupported media type", [("content-type", message)])
