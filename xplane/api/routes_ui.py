"""The console at ``/ui``: server-rendered pages (Jinja2) over the ``/console/*`` view
models, small vanilla JS modules and a vendored chart library; no CDN, no Node at run time.

Every response carries a strict Content-Security-Policy (scripts from this origin
only, no inline script or style), so an injected string can never run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from xplane.api.console_auth import (
    Identity,
    clear_session_cookie,
    identify,
    is_admin_token,
    make_session,
    set_session_cookie,
)
from xplane.api.context import ApiContext, get_ctx
from xplane.api.errors import ApiError
from xplane.api.routes_console import (
    KindQuery,
    NodePath,
    NodeQuery,
    RegionPath,
    RegionQuery,
    ServicePath,
    ServiceQuery,
    load_config,
    load_events,
    load_node,
    load_region,
    overview_with_loops,
)

HERE = Path(__file__).parent
STATIC = (HERE / "static").resolve()
templates = Jinja2Templates(directory=str(HERE / "templates"))

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
MAX_LOGIN_BODY = 4096

router = APIRouter(prefix="/ui", include_in_schema=False)


def secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _is_tls(request: Request) -> bool:
    return request.url.scheme == "https"


def _page(request: Request, template: str, who: Identity, **context: Any) -> Response:
    response = templates.TemplateResponse(
        request,
        template,
        {"who": who, "csrf": who.csrf or "", **context},
    )
    response.headers["Cache-Control"] = "no-store"
    return secured(response)


def _login_redirect() -> Response:
    return secured(RedirectResponse("/ui/login", status_code=303))


@router.get("/static/{path:path}")
def static(path: str) -> Response:
    """The package's own assets (never a path outside the static directory)."""
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise ApiError(404, "no such asset", [("path", path)])
    response = FileResponse(target)
    response.headers["Cache-Control"] = "public, max-age=300"
    return secured(response)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, error: bool = False) -> Response:
    # A flag, not a message: nothing from the URL is echoed into the page.
    message = "That token is not valid." if error else None
    response = templates.TemplateResponse(
        request, "login.html", {"who": None, "csrf": "", "error": message}
    )
    return secured(response)


@router.post("/session")
async def login(request: Request) -> Response:
    """Check an API token (form field ``token``) and set the session cookie."""
    body = await request.body()
    if len(body) > MAX_LOGIN_BODY:
        raise ApiError(413, "login form too large", [("token", "too long")])
    token = (parse_qs(body.decode(errors="replace")).get("token") or [""])[0].strip()
    if not token or not is_admin_token(request, token):
        response = RedirectResponse("/ui/login?error=1", status_code=303)
        return secured(response)
    response = RedirectResponse("/ui", status_code=303)
    set_session_cookie(response, make_session(token), secure=_is_tls(request))
    return secured(response)


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    clear_session_cookie(response, secure=_is_tls(request))
    return secured(response)


def _viewer(request: Request) -> Identity | None:
    """Pages are for the session cookie (or a bearer token, for tools)."""
    return identify(request)


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def overview_page(request: Request, ctx: ApiContext = Depends(get_ctx)) -> Response:
    who = _viewer(request)
    if who is None:
        return _login_redirect()
    view = await overview_with_loops(request, ctx, who)
    return _page(request, "overview.html", who, view=view, page="overview")


@router.get("/regions/{service}/{region}", response_class=HTMLResponse)
def region_page(
    request: Request,
    service: ServicePath,
    region: RegionPath,
    ctx: ApiContext = Depends(get_ctx),
) -> Response:
    who = _viewer(request)
    if who is None:
        return _login_redirect()
    with ctx.factory() as session:
        view = load_region(session, ctx, who, service, region)
    return _page(request, "region.html", who, view=view, page="region")


@router.get("/nodes/{node_id}", response_class=HTMLResponse)
def node_page(request: Request, node_id: NodePath, ctx: ApiContext = Depends(get_ctx)) -> Response:
    who = _viewer(request)
    if who is None:
        return _login_redirect()
    with ctx.factory() as session:
        view = load_node(session, ctx, who, node_id)
    return _page(request, "node.html", who, view=view, page="node")


@router.get("/events", response_class=HTMLResponse)
def events_page(
    request: Request,
    kind: KindQuery = None,
    service: ServiceQuery = None,
    region: RegionQuery = None,
    node: NodeQuery = None,
    ctx: ApiContext = Depends(get_ctx),
) -> Response:
    who = _viewer(request)
    if who is None:
        return _login_redirect()
    filters = {
        "kind": kind or "",
        "service": service or "",
        "region": region or "",
        "node": node or "",
    }
    with ctx.factory() as session:
        rows = load_events(session, kind=kind, service=service, region=region, node=node, limit=200)
    return _page(request, "events.html", who, events=rows, filters=filters, page="events")


@router.get("/config", response_class=HTMLResponse)
def config_page(request: Request, ctx: ApiContext = Depends(get_ctx)) -> Response:
    who = _viewer(request)
    if who is None:
        return _login_redirect()
    with ctx.factory() as session:
        view = load_config(session)
    return _page(request, "config.html", who, view=view, page="config")
