"""Who is looking at the console, and which buttons they get.

Two ways in: the ``Authorization: Bearer`` admin token on every request (automation,
tests, the XControl panel), or a session cookie the login page sets after checking
that token (a browser: ``EventSource`` cannot send headers). The cookie is signed
with a key derived from the admin token, so every replica accepts it, nothing is
kept server-side, and rotating the admin token ends every session. It is
``HttpOnly`` and ``SameSite=Strict`` (``Secure`` over TLS) and carries a CSRF token
that state-changing requests made with the cookie must echo in ``X-CSRF-Token``.

The OIDC identities and roles of the RBAC work plug in here: :class:`Identity`
gets the role, and :func:`allowed_actions` filters by it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from fastapi import Request, Response

from xplane.api.auth import UNAUTHORIZED, matches_any, parse_bearer
from xplane.api.console_views import Action
from xplane.api.errors import ApiError

SESSION_COOKIE = "xplane_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 8 * 3600

Role = Literal["viewer", "operator", "admin"]


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role
    via: Literal["bearer", "session"]
    csrf: str | None = None  # the session's CSRF token (None for bearer callers)


def _key(admin_token: str) -> bytes:
    return hashlib.sha256(b"xplane-console-session\0" + admin_token.encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_session(admin_token: str, now: float | None = None, ttl_s: int = SESSION_TTL_S) -> str:
    """A signed cookie value: ``payload.signature`` (payload: subject, expiry, CSRF)."""
    payload = {
        "sub": "admin token",
        "role": "admin",
        "exp": int((now or time.time()) + ttl_s),
        "csrf": secrets.token_urlsafe(24),
    }
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    sig = _b64(hmac.new(_key(admin_token), body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}"


def read_session(value: str, admin_token: str, now: float | None = None) -> Identity | None:
    """The session's identity, or None when forged, tampered with or expired."""
    body, _, sig = value.partition(".")
    expected = _b64(hmac.new(_key(admin_token), body.encode(), hashlib.sha256).digest())
    if not sig or not hmac.compare_digest(sig.encode(), expected.encode()):
        return None
    try:
        payload = json.loads(_unb64(body))
    except ValueError:
        return None
    if not isinstance(payload, dict) or int(payload.get("exp", 0)) < (now or time.time()):
        return None
    return Identity(name=str(payload["sub"]), role="admin", via="session", csrf=payload["csrf"])


def _admin_token(request: Request) -> str | None:
    admin = request.app.state.settings.admin_token
    return admin.get_secret_value() if admin is not None and admin.get_secret_value() else None


def is_admin_token(request: Request, token: str) -> bool:
    admin = _admin_token(request)
    return admin is not None and matches_any(token, [admin])


def identify(request: Request) -> Identity | None:
    """The caller, from a bearer token or the session cookie; None when neither is valid."""
    admin = _admin_token(request)
    if admin is None:
        return None
    header = request.headers.get("authorization")
    if header:
        try:
            token = parse_bearer(header)
        except ApiError:
            return None
        if matches_any(token, [admin]):
            return Identity(name="admin token", role="admin", via="bearer")
        return None
    cookie = request.cookies.get(SESSION_COOKIE)
    return read_session(cookie, admin) if cookie else None


def require_console_reader(request: Request) -> Identity:
    """FastAPI dependency of the console's reads: a valid identity, or 401.

    A request carried by the session cookie that changes state must also echo the
    session's CSRF token (GET/HEAD never change state here).
    """
    who = identify(request)
    if who is None:
        raise ApiError(
            401,
            "invalid credentials",
            [("authorization", "the admin token as a bearer token, or a console session")],
            UNAUTHORIZED,
        )
    if who.via == "session" and request.method not in ("GET", "HEAD", "OPTIONS"):
        check_csrf(request, who)
    return who


def check_csrf(request: Request, who: Identity) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    if who.csrf is None or not hmac.compare_digest(sent.encode(), who.csrf.encode()):
        raise ApiError(403, "CSRF token missing or wrong", [(CSRF_HEADER, "not this session's")])


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


# -- actions -------------------------------------------------------------------------------

# The least role each action needs (the RBAC issue's table).
ACTION_ROLES: dict[str, Role] = {
    "drain": "operator",
    "undrain": "operator",
    "pause": "operator",
    "resume": "operator",
    "retry": "operator",
    "sync": "operator",
    "gate_open": "operator",
    "gate_close": "operator",
    "plan_approve": "admin",
    "plan_reject": "admin",
}
_RANK = {"viewer": 0, "operator": 1, "admin": 2}


def may(who: Identity | None, action: str) -> bool:
    return who is not None and _RANK[who.role] >= _RANK[ACTION_ROLES[action]]


def node_actions(who: Identity | None, node_id: str, drain_requested: bool) -> list[Action]:
    action = "undrain" if drain_requested else "drain"
    if not may(who, action):
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
    if may(who, "retry"):
        out.append(
            Action(id="retry", label="Retry region", path=f"/regions/{service}/{region}/retry")
        )
    for verb in ("pause", "resume"):
        if may(who, verb):
            loop = f"autoscale-{service}-{region}"
            out.append(
                Action(
                    id=verb, label=f"{verb.capitalize()} autoscaler", path=f"/loops/{loop}/{verb}"
                )
            )
    return out


def overview_actions(who: Identity | None, services: list[str]) -> list[Action]:
    out = []
    if may(who, "sync"):
        out.append(Action(id="sync", label="Sync config now", path="/sync"))
    if may(who, "gate_close"):
        out.append(
            Action(id="gate_close", label="Close health gate", path="/gate/close", danger=True)
        )
    if may(who, "gate_open"):
        out.append(Action(id="gate_open", label="Open health gate", path="/gate/open"))
    for service in services:
        for verb in ("pause", "resume"):
            if may(who, verb):
                out.append(
                    Action(
                        id=verb,
                        label=f"{verb.capitalize()} gtm-{service}",
                        path=f"/loops/gtm-{service}/{verb}",
                        danger=verb == "pause",
                    )
                )
        for verb in ("approve", "reject"):
            if may(who, f"plan_{verb}"):
                out.append(
                    Action(
                        id=f"plan_{verb}",
                        label=f"{verb.capitalize()} held DNS plan of {service}",
                        path=f"/gtm/{service}/plan/{verb}",
                        danger=verb == "approve",
                    )
                )
    return out
