"""The console's session: one of the API's identities, carried by a cookie.

A browser logs in once (an API token, or OIDC authorization code + PKCE, see
:mod:`xplane.api.console_oidc`) and gets a signed session cookie holding who logged
in (kind, subject, name, grants) and until when. The authorization middleware
(:mod:`xplane.api.authz`) accepts that cookie as an identity on every route, the
console's JSON and the action routes alike, so one rule table decides for the
browser, the CLI and any dashboard. Nothing is kept server-side: every replica
holding the same key (``XPLANE_CONSOLE_SESSION_KEY``, else derived from the admin
token) accepts the cookie; rotating the key ends every session.

The cookie is ``HttpOnly`` and ``SameSite=Strict`` (``Secure`` over TLS) and
carries a CSRF token that every state-changing request made with the cookie must
echo in ``X-CSRF-Token`` (the middleware refuses it otherwise). Bearer callers send
no cookie and need no CSRF token.

Which buttons a page shows is decided by the same rules: an action is offered when
:data:`xplane.api.authz.RULES` lets the identity call its route on its target.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response

from xplane.api.console_views import Action
from xplane.api.settings import ApiSettings
from xplane.auth.roles import Identity, Permission, Target, parse_grant

SESSION_COOKIE = "xplane_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 8 * 3600
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

# Without a configured key or an admin token: random per process (sessions end on restart).
_PROCESS_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class Session:
    identity: Identity
    csrf: str
    expires: int


def session_key(settings: ApiSettings) -> bytes:
    if settings.console_session_key is not None:
        secret = settings.console_session_key.get_secret_value()
    elif settings.admin_token is not None and settings.admin_token.get_secret_value():
        secret = settings.admin_token.get_secret_value()
    else:
        return _PROCESS_KEY
    return hashlib.sha256(b"xplane-console-session\0" + secret.encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, body: str) -> str:
    return _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())


def make_session(
    identity: Identity,
    key: bytes,
    now: float | None = None,
    ttl_s: int = SESSION_TTL_S,
    not_after: float | None = None,
) -> str:
    """A signed cookie value ``payload.signature``; ``not_after`` caps the expiry (the
    API token's or the ID token's own)."""
    expires = (now or time.time()) + ttl_s
    if not_after is not None:
        expires = min(expires, not_after)
    payload = {
        "kind": identity.kind,
        "sub": identity.subject,
        "name": identity.name,
        "grants": [str(g) for g in identity.grants],
        "exp": int(expires),
        "csrf": secrets.token_urlsafe(24),
    }
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    return f"{body}.{_sign(key, body)}"


def read_session(value: str, key: bytes, now: float | None = None) -> Session | None:
    """The session, or None when forged, tampered with or expired."""
    body, _, sig = value.partition(".")
    if not sig or not hmac.compare_digest(sig.encode(), _sign(key, body).encode()):
        return None
    try:
        payload: Any = json.loads(_unb64(body))
        expires = int(payload["exp"])
        identity = Identity(
            kind=str(payload["kind"]),
            subject=str(payload["sub"]),
            name=str(payload["name"]),
            grants=tuple(parse_grant(g) for g in payload["grants"]),
        )
        csrf = str(payload["csrf"])
    except (ValueError, KeyError, TypeError):
        return None
    if expires < (now or time.time()):
        return None
    return Session(identity=identity, csrf=csrf, expires=expires)


def csrf_ok(session: Session, sent: str) -> bool:
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf.encode())


def request_session(request: Request) -> Session | None:
    """The request's session cookie, if valid."""
    cookie = request.cookies.get(SESSION_COOKIE)
    return read_session(cookie, session_key(request.app.state.settings)) if cookie else None


def set_session_cookie(response: Response, value: str, secure: bool) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def clear_session_cookie(response: Response, secure: bool) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=secure
    )


# -- actions: offered when the rule table allows them ----------------------------------------


def may(who: Identity | None, path: str, target: Target) -> bool:
    """Whether ``who`` may POST to the route ``path`` (a template of RULES) on ``target``."""
    from xplane.api.authz import RULES

    rule = RULES.get(("POST", path))
    if who is None or rule is None or rule.permission is None:
        return False
    return who.allows(rule.permission, target)


def node_actions(
    who: Identity | None, node_id: str, drain_requested: bool, service: str, region: str
) -> list[Action]:
    action = "undrain" if drain_requested else "drain"
    target = Target(service=service, region=region, node_id=node_id)
    if not may(who, f"/nodes/{{node_id}}/{action}", target):
        return []
    return [
        Action(
            id=action,
            label=action.capitalize(),
            path=f"/nodes/{node_id}/{action}",
            danger=action == "drain",
        )
    ]


def region_actions(who: Identity | None, service: str, region: str) -> list[Action]:
    out = []
    target = Target(service=service, region=region)
    if may(who, "/regions/{service}/{region}/retry", target):
        out.append(
            Action(id="retry", label="Retry region", path=f"/regions/{service}/{region}/retry")
        )
    loop = f"autoscale-{service}-{region}"
    for verb in ("pause", "resume"):
        if may(who, f"/loops/{{workflow_id}}/{verb}", Target(service, region, name=loop)):
            out.append(
                Action(
                    id=verb, label=f"{verb.capitalize()} autoscaler", path=f"/loops/{loop}/{verb}"
                )
            )
    return out


def plan_actions(who: Identity | None, service: str) -> list[Action]:
    """Approve or reject a DNS plan held by the safety threshold (admins)."""
    out = []
    for verb in ("approve", "reject"):
        if may(who, f"/gtm/{{service}}/plan/{verb}", Target(service=service)):
            out.append(
                Action(
                    id=f"plan_{verb}",
                    label=f"{verb.capitalize()} held DNS plan of {service}",
                    path=f"/gtm/{service}/plan/{verb}",
                    danger=verb == "approve",
                )
            )
    return out


def overview_actions(who: Identity | None, services: list[str]) -> list[Action]:
    out = []
    if may(who, "/sync", Target()):
        out.append(Action(id="sync", label="Sync config now", path="/sync"))
    if may(who, "/gate/close", Target()):
        out.append(
            Action(id="gate_close", label="Close health gate", path="/gate/close", danger=True)
        )
    if may(who, "/gate/open", Target()):
        out.append(Action(id="gate_open", label="Open health gate", path="/gate/open"))
    for service in services:
        for verb in ("pause", "resume"):
            loop = f"gtm-{service}"
            if may(who, f"/loops/{{workflow_id}}/{verb}", Target(service=service, name=loop)):
                out.append(
                    Action(
                        id=verb,
                        label=f"{verb.capitalize()} {loop}",
                        path=f"/loops/{loop}/{verb}",
                        danger=verb == "pause",
                    )
                )
    return out


def can_read(who: Identity) -> bool:
    return any(g.permits(Permission.read) for g in who.grants)
