"""One error shape for every failure: ``{"error": ..., "detail": [{"field", "message"}]}``.

Also the body-size guard: a pure ASGI middleware that reads a request body up
to the limit (Content-Length or not) before any handler sees it, so an
oversized body is a 413 and never half-parsed, and a body that stalls past its
deadline is a 408.

Every 4xx is logged as one line (route, status, error, the fields named; never
the values); only an unexpected exception (a 500) is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xplane.api.schemas import ErrorBody, FieldError
from xplane.config.errors import format_path, humanize

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raise from a handler to answer ``status`` with the uniform body."""

    def __init__(
        self,
        status: int,
        error: str,
        fields: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.headers = status, error, headers
        self.fields = [FieldError(field=f, message=m) for f, m in fields]


def error_response(
    status: int,
    error: str,
    fields: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=error, detail=list(fields))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _validation_fields(exc: RequestValidationError) -> list[FieldError]:
    fields = []
    for err in exc.errors():
        loc = [p for p in err.get("loc", ()) if isinstance(p, str | int)]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:] if err.get("type") != "json_invalid" else []
        if err.get("type") == "json_invalid":
            message = f"malformed JSON: {(err.get('ctx') or {}).get('error', 'invalid')}"
            fields.append(FieldError(field="body", message=message))
            continue
        if not loc and err.get("type") == "missing":
            fields.append(FieldError(field="body", message="a JSON object is required"))
            continue
        try:
            message = humanize(err)
        except Exception:  # a message is never worth a 500
            message = str(err.get("msg", "invalid"))
        fields.append(FieldError(field=format_path(loc) or "body", message=message))
    return fields


def render_error(exc: Exception, where: str = "") -> JSONResponse:
    """The response for any exception a handler raised (also used off the framework)."""
    if isinstance(exc, StarletteHTTPException) and isinstance(exc.__cause__, RecursionError):
        # FastAPI's json.loads gave up on a deeply nested body: the body is the problem.
        exc = ApiError(422, "invalid request", [("body", "malformed JSON: nested too deeply")])
    headers: Mapping[str, str] | None
    if isinstance(exc, ApiError):
        status, error, fields, headers = exc.status, exc.error, exc.fields, exc.headers
    elif isinstance(exc, RequestValidationError):
        status, error, fields, headers = 422, "invalid request", _validation_fields(exc), None
    elif isinstance(exc, StarletteHTTPException):
        status, error, fields, headers = exc.status_code, str(exc.detail), [], exc.headers
    else:
        log.error("unhandled error on %s", where, exc_info=exc)
        return error_response(500, "internal error")
    named = ", ".join(f.field for f in fields)
    # repr keeps it one line whatever the client put in the path (%0A decodes to a newline).
    route = repr(where[:200])[1:-1] or "request"
    log.info("%s answered %d %s%s", route, status, error, f" ({named})" if named else "")
    return error_response(status, error, fields, headers)


def install_error_handlers(app: FastAPI) -> None:
    async def _render(request: Request, exc: Exception) -> JSONResponse:
        return render_error(exc, f"{request.method} {request.url.path}")

    for kind in (ApiError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, _render)


def too_large(max_bytes: int) -> ApiError:
    message = f"request body is larger than {max_bytes} bytes"
    return ApiError(413, message, [("body", message)])


def too_slow(timeout: float) -> ApiError:
    message = f"request body not received within {timeout:g}s"
    # Connection: close, so the server drops the connection the client is still sending on.
    return ApiError(408, "request timeout", [("body", message)], {"Connection": "close"})


class Deadlines(Protocol):
    """What :func:`read_body` needs of :class:`xplane.api.guards.BodyDeadlines`."""

    timeout: float

    def watch(self) -> asyncio.Task[object] | None: ...
    def unwatch(self, task: asyncio.Task[object] | None) -> None: ...
    def expired(self, task: asyncio.Task[object] | None) -> bool: ...


async def read_body(
    scope: Scope, receive: Receive, max_bytes: int, deadlines: Deadlines | None = None
) -> bytes | None:
    """The whole request body, or None if the client went away; 413 past ``max_bytes``,
    408 when ``deadlines`` ends the read first (a stalled client).

    Content-Length is checked first, and the bytes actually received as well
    (chunked bodies, or a client that lies).
    """
    declared = _content_length(scope)
    if declared is not None and declared > max_bytes:
        raise too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    task = deadlines.watch() if deadlines is not None else None
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    except asyncio.CancelledError:
        if deadlines is not None and deadlines.expired(task):
            raise too_slow(deadlines.timeout) from None
        raise
    finally:
        if deadlines is not None:
            deadlines.unwatch(task)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int, deadlines: Deadlines | None = None) -> None:
        self.app, self.max_bytes, self.deadlines = app, max_bytes, deadlines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.max_bytes, self.deadlines)
        except ApiError as exc:
            await render_error(exc, f"{scope['method']} {scope['path']}")(scope, receive, send)
            return
        if body is None:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
