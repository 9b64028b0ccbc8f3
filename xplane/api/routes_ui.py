"""The console at ``/ui``: server-rendered pages (Jinja2) over the ``/console/*`` view
models, small vanilla JS modules and a vendored chart library; no CDN, no Node at run time.

Every response carries a strict Content-Security-Policy (scripts from this origin
only, no inline script or style), so an injected string can never run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from xplane.api import console_auth, console_oidc
from xplane.api.authz import Authenticator, current_identity
from xplane.api.console_auth import clear_session_cookie, make_session, set_session_cookie
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
    held_plans,
    load_config,
    load_events,
    load_node,
    load_region,
    overview_with_loops,
)
from xplane.auth.roles import Identity

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


def _page(request: Request, template: str, who: Viewer, **context: Any) -> Response:
    response = templates.TemplateResponse(
        request,
        template,
        {"who": who[0], "csrf": who[1], **context},
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
def login_page(request: Request, error: str | None = None) -> Response:
    # A choice among fixed messages: nothing from the URL is echoed into the page.
    message = LOGIN_ERRORS.get(error or "", LOGIN_ERRORS["1"]) if error else None
    oidc = request.app.state.settings.console_client is not None
    response = templates.TemplateResponse(
        request, "login.html", {"who": None, "csrf": "", "error": message, "oidc": oidc}
    )
    return secured(response)


@router.post("/session")
async def login(request: Request) -> Response:
    """Check an API token (form field ``token``) and set the session cookie."""
    body = await request.body()
    if len(body) > MAX_LOGIN_BODY:
        raise ApiError(413, "login form too large", [("token", "too long")])
    token = (parse_qs(body.decode(errors="replace")).get("token") or [""])[0].strip()
    authn: Authenticator = request.app.state.authenticator
    try:
        identity = await authn.identify(f"Bearer {token}") if token else None
    except ApiError:
        identity = None
    if identity is None or not console_auth.can_read(identity):
        response = RedirectResponse("/ui/login?error=1", status_code=303)
        return secured(response)
    return start_session(request, identity, RedirectResponse("/ui", status_code=303))


def start_session(request: Request, identity: Identity, response: Response) -> Response:
    key = console_auth.session_key(request.app.state.settings)
    set_session_cookie(response, make_session(identity, key), secure=_is_tls(request))
    return secured(response)


@router.get("/oidc/login")
async def oidc_login(request: Request) -> Response:
    """Send the browser to the issuer (authorization code + PKCE S256, state, nonce)."""
    settings = request.app.state.settings
    if settings.console_client is None:
        raise ApiError(404, "OIDC login is not configured", [("XPLANE_OIDC_ISSUER", "unset")])
    try:
        url, flow = await asyncio.to_thread(console_oidc.start, settings, _callback_url(request))
    except console_oidc.LoginFailed:
        return secured(RedirectResponse("/ui/login?error=oidc", status_code=303))
    response = RedirectResponse(url, status_code=303)
    console_oidc.set_flow_cookie(response, flow, settings, secure=_is_tls(request))
    return secured(response)


@router.get("/oidc/callback")
async def oidc_callback(request: Request) -> Response:
    """Check state, exchange the code (with the PKCE verifier), verify the ID token and
    its nonce, map its roles, and open a session."""
    settings = request.app.state.settings
    if settings.console_client is None:
        raise ApiError(404, "OIDC login is not configured", [("XPLANE_OIDC_ISSUER", "unset")])
    flow = console_oidc.read_flow_cookie(request, settings)
    try:
        if flow is None:
            raise console_oidc.LoginFailed("no login in progress (or it expired)")
        identity = await asyncio.to_thread(
            console_oidc.finish,
            settings,
            console_oidc.verifier_for(request.app.state, settings),
            flow,
            str(request.url.query),
            _callback_url(request),
        )
    except console_oidc.LoginFailed as exc:
        console_oidc.log.warning("console OIDC login refused: %s", exc)
        response = RedirectResponse("/ui/login?error=oidc", status_code=303)
        console_oidc.clear_flow_cookie(response, secure=_is_tls(request))
        return secured(response)
    if not console_auth.can_read(identity):
        response = RedirectResponse("/ui/login?error=role", status_code=303)
        console_oidc.clear_flow_cookie(response, secure=_is_tls(request))
        return secured(response)
    # A page, not a redirect: the SameSite=Strict cookie set here would not go with a
    # redirect that continues the issuer's cross-site navigation; a page's own
    # navigation (meta refresh, no script under the CSP) is same-site.
    page = templates.TemplateResponse(request, "signed_in.html", {"who": None, "csrf": ""})
    console_oidc.clear_flow_cookie(page, secure=_is_tls(request))
    return start_session(request, identity, page)


def _callback_url(request: Request) -> str:
    return str(request.url_for("oidc_callback"))


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    clear_session_cookie(response, secure=_is_tls(request))
    return secured(response)


Viewer = tuple[Identity, str]  # who, and the session's CSRF token ("" for bearer callers)
LOGIN_ERRORS = {
    "1": "That token is not valid.",
    "oidc": "The identity provider's login did not complete. Try again.",
    "role": "Your account holds no XPlane role.",
}


async def _viewer(request: Request) -> Viewer | None:
    """Who the authorization middleware found (the page's rule is a read), and the
    session's CSRF token when the cookie carried the request."""
    identity = current_identity(request)
    if identity is None:
        return None
    session = None if "authorization" in request.headers else console_auth.request_session(request)
    return identity, session.csrf if session else ""


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def overview_page(request: Request, ctx: ApiContext = Depends(get_ctx)) -> Response:
    who = await _viewer(request)
    if who is None:
        return _login_redirect()
    view = await overview_with_loops(request, ctx, who[0])
    return _page(request, "overview.html", who, view=view, page="overview")


@router.get("/regions/{service}/{region}", response_class=HTMLResponse)
async def region_page(
    request: Request,
    service: ServicePath,
    region: RegionPath,
    ctx: ApiContext = Depends(get_ctx),
) -> Response:
    who = await _viewer(request)
    if who is None:
        return _login_redirect()

    def load() -> Any:
        with ctx.factory() as session:
            return load_region(session, ctx, who[0], service, region)

    view = await asyncio.to_thread(load)
    return _page(request, "region.html", who, view=view, page="region")


@router.get("/nodes/{node_id}", response_class=HTMLResponse)
async def node_page(
    request: Request, node_id: NodePath, ctx: ApiContext = Depends(get_ctx)
) -> Response:
    who = await _viewer(request)
    if who is None:
        return _login_redirect()

    def load() -> Any:
        with ctx.factory() as session:
            return load_node(session, ctx, who[0], node_id)

    view = await asyncio.to_thread(load)
    return _page(request, "node.html", who, view=view, page="node")


@router.get("/events", response_class=HTMLResponse)
async def events_page(
    request: Request,
    kind: KindQuery = None,
    service: ServiceQuery = None,
    region: RegionQuery = None,
    node: NodeQuery = None,
    ctx: ApiContext = Depends(get_ctx),
) -> Response:
    who = await _viewer(request)
    if who is None:
        return _login_redirect()
    filters = {
        "kind": kind or "",
        "service": service or "",
        "region": region or "",
        "node": node or "",
    }

    def load() -> Any:
        with ctx.factory() as session:
            return load_events(
                session,
                kind=kind,
                service=service,
                region=region,
                node=node,
                limit=200,
                who=who[0],
            )

    rows = await asyncio.to_thread(load)
    return _page(request, "events.html", who, events=rows, filters=filters, page="events")


@router.get("/config", response_class=HTMLResponse)
async def config_page(request: Request, ctx: ApiContext = Depends(get_ctx)) -> Response:
    who = await _viewer(request)
    if who is None:
        return _login_redirect()

    def load() -> Any:
        with ctx.factory() as session:
            return load_config(session)

    view = await asyncio.to_thread(load)
    return _page(request, "config.html", who, view=view, page="config")


@router.get("/plans", response_class=HTMLResponse)
async def plans_page(request: Request, ctx: ApiContext = Depends(get_ctx)) -> Response:
    who = await _viewer(request)
    if who is None:
        return _login_redirect()
    plans = await held_plans(request, ctx, who[0])
    return _page(request, "plans.html", who, plans=plans, page="plans")
