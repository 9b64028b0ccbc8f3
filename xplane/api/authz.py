"""Authorization of every route, from one table, and the audit of every mutating one.

:data:`RULES` maps each route (method, path template) to a :class:`Rule`:

* ``PUBLIC``: anyone (liveness, readiness, the API's own documentation);
* ``own(...)``: the route checks a credential of its own (node bootstrap and node
  tokens, webhook signatures, the metrics token): people's identities play no part;
* ``read(...)``, ``operate(...)``, ``admin(...)``: an identity (OIDC bearer token,
  API token, the shared admin token, or the console's session cookie, whose
  state-changing requests must echo its CSRF token) holding the permission on the route's
  target (a service, a region of it, a node: found by the rule's ``target``).
  ``operate`` and ``admin`` rules name an action: every call is audited.

:class:`AuthzMiddleware` enforces the table in front of every route: no rule is
a 500 (and :func:`missing_rules` makes ``create_app`` refuse to start), no or a
bad credential is 401 (``WWW-Authenticate: Bearer``), a known identity without
the right is 403. Adding a route is adding one line here, e.g.::

    ("POST", "/nodes/{node_id}/undrain"): operate("node.undrain", node_target),
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import RouteContext, iter_route_contexts
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import cookie_parser
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xplane.api import console_auth
from xplane.api.auth import matches_any, parse_bearer
from xplane.api.errors import ApiError, render_error
from xplane.api.settings import ApiSettings
from xplane.auth.audit import outcome_of, record_audit
from xplane.auth.oidc import InvalidToken, OidcVerifier, ProviderUnavailable, looks_like_jwt
from xplane.auth.roles import Grant, Identity, Permission, Role, Target
from xplane.store import api_tokens
from xplane.store.db import transaction

log = logging.getLogger(__name__)

REASON_HEADER = "x-xplane-reason"
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


@dataclass(frozen=True)
class Call:
    """What a target finder may look at: the route's parameters, the JSON body, the store."""

    path_params: dict[str, Any]
    query: dict[str, str]
    body: Any
    factory: sessionmaker[Session]


TargetFinder = Callable[[Call], Target]


def no_target(_call: Call) -> Target:
    """Not about a service: only an unscoped grant covers it."""
    return Target()


def node_target(call: Call) -> Target:
    """The node in the path, with its service and region from the store."""
    from xplane.store.node_tables import NodeRow
    from xplane.store.tables import column_length

    node_id = str(call.path_params.get("node_id", ""))
    if "\x00" in node_id or len(node_id) > column_length("nodes", "id"):
        return Target(node_id=node_id)  # no such node can exist; the route answers 422
    with call.factory() as session:
        row = session.get(NodeRow, node_id)
    if row is None:  # the handler answers 404; only an unscoped grant gets that far
        return Target(node_id=node_id)
    return Target(service=row.service, region=row.region, node_id=node_id)


def path_target(service: str = "service", region: str = "region") -> TargetFinder:
    """Service and region from path parameters of these names (either may be absent)."""

    def find(call: Call) -> Target:
        s, r = call.path_params.get(service), call.path_params.get(region)
        return Target(service=None if s is None else str(s), region=None if r is None else str(r))

    return find


def body_target(service: str = "service", region: str = "region") -> TargetFinder:
    """Service and region from fields of the JSON body."""

    def find(call: Call) -> Target:
        body = call.body if isinstance(call.body, dict) else {}
        s, r = body.get(service), body.get(region)
        return Target(
            service=s if isinstance(s, str) else None, region=r if isinstance(r, str) else None
        )

    return find


def loop_target(call: Call) -> Target:
    """A control loop's workflow id: ``gtm-<service>``, ``autoscale-<service>-<region>``
    (split by the configured services, as both names may hold dashes), or a singleton
    loop (``gitops-sync``, ``world-state``) that belongs to no service."""
    from xplane.store.config_store import service_regions

    loop = str(call.path_params.get("workflow_id", ""))
    if loop.startswith("gtm-"):
        return Target(service=loop.removeprefix("gtm-"), name=loop)
    if loop.startswith("autoscale-"):
        with call.factory() as session:
            known = service_regions(session)
        for service, regions in known.items():
            for region in regions:
                if loop == f"autoscale-{service}-{region}":
                    return Target(service=service, region=region, name=loop)
    return Target(name=loop)


def action_target(call: Call) -> Target:
    """The workflow an action went to (``GET /actions/{workflow_id}/...``): a node's
    lifecycle, a region's (with the service that has the region), or a control loop."""
    from xplane.store.config_store import service_regions

    workflow_id = str(call.path_params.get("workflow_id", ""))
    if workflow_id.startswith("node-"):
        node_id = workflow_id.removeprefix("node-")
        return node_target(Call({"node_id": node_id}, call.query, call.body, call.factory))
    if workflow_id.startswith("region-"):
        region = workflow_id.removeprefix("region-")
        with call.factory() as session:
            known = service_regions(session)
        services = [s for s, regions in known.items() if region in regions]
        if len(services) == 1:
            return Target(service=services[0], region=region, name=workflow_id)
        return Target(region=region, name=workflow_id)  # only an unscoped grant covers it
    return loop_target(call)


def named_target(param: str = "name") -> TargetFinder:
    """A named thing that belongs to no service (an API token)."""
    return lambda call: Target(name=str(call.path_params.get(param, "")) or None)


@dataclass(frozen=True)
class Rule:
    kind: Literal["public", "own", "identity"]
    permission: Permission | None = None
    action: str | None = None  # set: every call is audited as audit.<action>
    # None: a listing, filtered by the handler to what the identity may see.
    target: TargetFinder | None = None
    note: str = ""
    # A console page: without credentials the browser is sent to the login page (303).
    page: bool = False


PUBLIC = Rule("public")


def own(credential: str) -> Rule:
    return Rule("own", note=credential)


def read(target: TargetFinder | None = None) -> Rule:
    return Rule("identity", Permission.read, target=target)


def page(target: TargetFinder | None = None) -> Rule:
    """A console page: a read, by the session cookie or a bearer token."""
    return Rule("identity", Permission.read, target=target, page=True)


def operate(action: str, target: TargetFinder) -> Rule:
    return Rule("identity", Permission.operate, action=action, target=target)


def admin(action: str | None, target: TargetFinder = no_target) -> Rule:
    """An admin-only route; ``action`` None for an admin-only read."""
    return Rule("identity", Permission.admin, action=action, target=target)


# The one table: every route of the API, by method and path template.
RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/metrics"): own("XPLANE_METRICS_TOKEN, when set"),
    ("POST", "/nodes/register"): own("a bootstrap token, or the node's own token"),
    ("POST", "/nodes/heartbeat"): own("the node's token"),
    ("POST", "/webhooks/terraform"): own("HMAC signature (XPLANE_WEBHOOK_SECRET)"),
    ("POST", "/webhooks/git"): own("GitHub/GitLab signature (XPLANE_GIT_WEBHOOK_SECRET)"),
    ("GET", "/nodes"): read(),
    ("GET", "/nodes/{node_id}"): read(node_target),
    ("GET", "/regions"): read(),
    ("POST", "/nodes/{node_id}/drain"): operate("node.drain", node_target),
    # Operator actions answered by Workflow Updates (xplane/api/routes_actions.py).
    ("POST", "/nodes/{node_id}/undrain"): operate("node.undrain", node_target),
    ("POST", "/loops/{workflow_id}/pause"): operate("loop.pause", loop_target),
    ("POST", "/loops/{workflow_id}/resume"): operate("loop.resume", loop_target),
    ("POST", "/sync"): operate("sync", no_target),
    ("POST", "/regions/{service}/{region}/retry"): operate("region.retry", path_target()),
    ("POST", "/regions/{service}/{region}/retire"): admin("region.retire", path_target()),
    ("POST", "/gate/close"): operate("gate.close", no_target),
    ("POST", "/gate/open"): operate("gate.open", no_target),
    ("POST", "/gtm/{service}/plan/approve"): admin("gtm.plan.approve", path_target()),
    ("POST", "/gtm/{service}/plan/reject"): admin("gtm.plan.reject", path_target()),
    # The result of an action answered 202 (pending): a read, like the workflow's status.
    ("GET", "/actions/{workflow_id}/{update_id}"): read(action_target),
    ("GET", "/console/overview"): read(),
    ("GET", "/console/traffic"): read(),
    ("GET", "/console/regions/{service}/{region}"): read(path_target()),
    ("GET", "/console/nodes/{node_id}"): read(node_target),
    ("GET", "/console/events"): read(),
    ("GET", "/console/events/stream"): read(),
    ("GET", "/console/config"): read(),
    ("GET", "/console/plans"): read(),
    # The console's pages: read like their JSON (a browser without a session is sent
    # to the login page); its assets and login steps.
    ("GET", "/ui"): page(),
    ("GET", "/ui/"): page(),
    ("GET", "/ui/regions/{service}/{region}"): page(path_target()),
    ("GET", "/ui/nodes/{node_id}"): page(node_target),
    ("GET", "/ui/events"): page(),
    ("GET", "/ui/config"): page(),
    ("GET", "/ui/plans"): page(),
    ("GET", "/ui/static/{path:path}"): PUBLIC,
    ("GET", "/ui/login"): PUBLIC,
    ("POST", "/ui/session"): own("an API token, exchanged for a session cookie"),
    ("GET", "/ui/oidc/login"): own("none: starts an OIDC login (404 without an issuer)"),
    ("GET", "/ui/oidc/callback"): own("an OIDC authorization code, state and nonce"),
    ("POST", "/ui/logout"): own("none: clears the session cookie"),
    ("GET", "/tokens"): admin(None),
    ("POST", "/tokens"): admin("token.create"),
    ("DELETE", "/tokens/{name}"): admin("token.revoke", named_target()),
}


def rule_for(method: str, path: str, rules: dict[tuple[str, str], Rule] = RULES) -> Rule | None:
    return rules.get(("GET" if method == "HEAD" else method, path))


def app_routes(app: FastAPI) -> list[RouteContext]:
    """Every route of ``app``, routers included (FastAPI keeps included routers nested)."""
    return list(iter_route_contexts(app.routes))


def route_keys(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route of ``app`` (HEAD goes with GET)."""
    keys: dict[tuple[str, str], None] = {}
    for route in app_routes(app):
        methods = route.methods or {"GET"}
        for method in sorted(methods - {"HEAD"} or methods):
            keys[(method, route.path or "")] = None
    return list(keys)


def missing_rules(
    app: FastAPI, rules: dict[tuple[str, str], Rule] = RULES
) -> list[tuple[str, str]]:
    """Routes of ``app`` without a rule (each one would answer 500)."""
    return [key for key in route_keys(app) if rule_for(*key, rules) is None]


# ------------------------------------------------------------------ identities
@dataclass
class Authenticator:
    """Bearer token -> :class:`Identity`: the shared admin token, an OIDC JWT, an API token."""

    settings: ApiSettings
    factory: sessionmaker[Session]
    oidc: OidcVerifier | None = field(default=None)

    def __post_init__(self) -> None:
        if self.oidc is None and self.settings.oidc is not None:
            self.oidc = OidcVerifier(self.settings.oidc)

    async def identify_request(
        self, headers: dict[str, str]
    ) -> tuple[Identity, console_auth.Session | None]:
        """The caller: a bearer token when one is sent, else the console's session
        cookie (returned too: its CSRF token guards state changes)."""
        if "authorization" not in headers:
            cookie = cookie_parser(headers.get("cookie", "")).get(console_auth.SESSION_COOKIE)
            if cookie:
                session = console_auth.read_session(cookie, console_auth.session_key(self.settings))
                if session is None:
                    raise _unauthorized("the console session is expired or not valid: log in")
                identity = await self._still_valid(session.identity)
                return identity, session
        return await self.identify(headers.get("authorization", "")), None

    async def _still_valid(self, identity: Identity) -> Identity:
        """A session opened with an API token lasts only as long as the token (and
        holds its current grants)."""
        if identity.kind != "api-token":
            return identity
        found = await run_in_threadpool(self._api_token_named, identity.subject)
        if found is None:
            raise _unauthorized("the API token of this session is expired or revoked")
        return found

    def _api_token_named(self, name: str) -> Identity | None:
        from xplane.store.db import utcnow

        with self.factory() as session:
            row = session.get(api_tokens.ApiTokenRow, name)
            if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
                return None
            return Identity("api-token", row.name, row.name, api_tokens.grants_of(row))

    async def identify(self, authorization: str) -> Identity:
        token = parse_bearer(authorization)
        admin_token = self.settings.admin_token
        if admin_token is not None and matches_any(token, [admin_token.get_secret_value()]):
            name = self.settings.admin_token_name
            return Identity("admin-token", subject=name, name=name, grants=(Grant(Role.admin),))
        if token.startswith(api_tokens.PREFIX):
            found = await run_in_threadpool(self._api_token, token)
            if found is None:
                raise _unauthorized("unknown, expired or revoked API token")
            return found
        if self.oidc is not None and looks_like_jwt(token):
            try:
                return await run_in_threadpool(self.oidc.identity, token)
            except InvalidToken as exc:
                raise _unauthorized(f"invalid OIDC token: {exc}") from None
            except ProviderUnavailable as exc:
                log.warning("OIDC provider unavailable: %s", exc)
                message = "the identity provider cannot be reached: retry shortly"
                raise ApiError(
                    503, "identity provider unavailable", [("authorization", message)],
                    {"Retry-After": "5"},
                ) from None  # fmt: skip
        raise _unauthorized("not a token this API knows")

    def _api_token(self, token: str) -> Identity | None:
        with self.factory() as session:
            return api_tokens.identity_for(session, token)


def _unauthorized(message: str) -> ApiError:
    header = {"WWW-Authenticate": 'Bearer realm="xplane", error="invalid_token"'}
    return ApiError(401, "invalid credentials", [("authorization", message)], header)


def current_identity(request: Request) -> Identity | None:
    """The caller's identity, as the middleware found it (None on own-credential routes)."""
    identity: Identity | None = request.scope.get("state", {}).get("identity")
    return identity


# ------------------------------------------------------------------ enforcement
class AuthzMiddleware:
    """Finds the route's rule, authenticates, authorizes, audits (pure ASGI).

    Sits inside the body-size guard, so a body it reads is already bounded and
    whole; it hands the same bytes on to the route.
    """

    def __init__(
        self,
        app: ASGIApp,
        api: FastAPI,
        authenticator: Authenticator,
        rules: dict[tuple[str, str], Rule] = RULES,
    ) -> None:
        self.app, self.api, self.authn, self.rules = app, api, authenticator, rules
        self._routes: list[RouteContext] | None = None  # fixed once the app serves

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        matched = self._match(scope)
        if matched is None:  # the router answers 404 or 405
            await self.app(scope, receive, send)
            return
        path, params = matched
        rule = rule_for(scope["method"], path, self.rules)
        where = f"{scope['method']} {path}"
        if rule is None:
            log.error("no authorization rule for %s: refused", where)
            await render_error(ApiError(500, "no authorization rule for this route"), where)(
                scope, receive, send
            )
            return
        if rule.kind != "identity":
            await self.app(scope, receive, send)
            return
        raw, receive = await _buffered(scope, receive)
        body = _json(raw)
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:  # the first of each, as Starlette reads them
            headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))
        audit = _Audit(self.authn.factory, rule, headers, body)
        identity: Identity | None = None
        target: Target | None = None
        call = Call(params, _query(scope), body, self.authn.factory)
        try:
            try:
                identity, session = await self.authn.identify_request(headers)
                if (
                    session is not None
                    and scope["method"] not in console_auth.SAFE_METHODS
                    and not console_auth.csrf_ok(session, headers.get(console_auth.CSRF_HEADER, ""))
                ):
                    raise ApiError(
                        403,
                        "CSRF token missing or wrong",
                        [(console_auth.CSRF_HEADER, "send this session's CSRF token")],
                    )
                if rule.target is not None:
                    target = await run_in_threadpool(rule.target, call)
            except ApiError:
                raise
            except Exception as exc:  # the store, mostly: nothing was decided
                log.error("authorizing %s failed: %s", where, type(exc).__name__, exc_info=exc)
                raise ApiError(503, "store unavailable", headers={"Retry-After": "1"}) from None
            if not self._allowed(identity, rule, target or Target()):
                assert rule.permission is not None
                raise ApiError(
                    403,
                    "forbidden",
                    [("authorization", _refusal(identity, rule.permission, target or Target()))],
                )
        except ApiError as exc:
            if target is None and rule.action is not None and rule.target is not None:
                # Refused before the lookup (401): the audit still names what was aimed at.
                with contextlib.suppress(Exception):
                    target = await run_in_threadpool(rule.target, call)
            await audit.write(identity, target or Target(), exc.status)
            response: Response = render_error(exc, where)
            if rule.page and exc.status == 401:
                response = RedirectResponse("/ui/login", status_code=303)
            response.headers[REQUEST_ID_HEADER] = audit.request_id
            await response(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["identity"], state["actor"] = identity, identity.name  # actor: for workflow records
        target = target or Target()
        status = 500
        audited = False

        async def send_audited(message: Message) -> None:
            nonlocal status, audited
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), audit.request_id.encode()),
                ]
            elif not message.get("more_body", False) and not audited:
                # Written before the answer completes: a caller that got it finds the event.
                audited = True
                await audit.write(identity, target, status)
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        finally:
            if not audited:  # the route raised, or the client went away
                await audit.write(identity, target, status)

    def _match(self, scope: Scope) -> tuple[str, dict[str, Any]] | None:
        if self._routes is None:
            self._routes = app_routes(self.api)
        for route in self._routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return route.path or "", dict(child.get("path_params", {}))
        return None

    @staticmethod
    def _allowed(identity: Identity, rule: Rule, target: Target) -> bool:
        assert rule.permission is not None
        if rule.target is None:  # a listing: any grant with the permission; handler filters
            return any(g.permits(rule.permission) for g in identity.grants)
        return identity.allows(rule.permission, target)


def _refusal(identity: Identity, permission: Permission, target: Target) -> str:
    held = identity.role
    return f"{identity.name} ({held}) may not {permission.value} {target.describe()}"


class _Audit:
    """One audit event per call of an audited rule, whatever the outcome."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        rule: Rule,
        headers: dict[str, str],
        body: Any,
    ) -> None:
        self.factory, self.rule = factory, rule
        given = headers.get(REQUEST_ID_HEADER, "")
        self.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        reason = body.get("reason") if isinstance(body, dict) else None
        self.reason = reason if isinstance(reason, str) and reason else headers.get(REASON_HEADER)

    async def write(self, identity: Identity | None, target: Target, status: int) -> None:
        if self.rule.action is None:
            return
        try:
            await run_in_threadpool(self._write, identity, target, status)
        except Exception as exc:  # the action's answer stands; the gap is logged loudly
            log.error("audit event for %s not written: %s", self.rule.action, exc)

    def _write(self, identity: Identity | None, target: Target, status: int) -> None:
        assert self.rule.action is not None
        with transaction(self.factory) as session:
            record_audit(
                session,
                action=self.rule.action,
                identity=identity,
                target=target,
                outcome=outcome_of(status),
                reason=self.reason,
                request_id=self.request_id,
                status=status,
            )


async def _buffered(scope: Scope, receive: Receive) -> tuple[bytes, Receive]:
    """The whole body (bounded by the body-size guard outside) and a receive that
    hands it to the route again."""
    if scope["method"] in ("GET", "HEAD", "OPTIONS"):
        return b"", receive
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None  # the route answers the bad body


def _query(scope: Scope) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
