"""The console's OIDC login: authorization code + PKCE (S256) against ``XPLANE_OIDC_ISSUER``.

``/ui/oidc/login`` makes a state, a nonce and a PKCE verifier, keeps them in a short-lived
signed cookie (path ``/ui/oidc``; ``SameSite=Lax``, since the issuer's redirect back is a
cross-site navigation a Strict cookie would not ride) and sends the browser to the
issuer. ``/ui/oidc/callback`` refuses a state that is not this browser's, exchanges the
code with the verifier, verifies the ID token with :mod:`xplane.auth.oidc` (signature,
issuer, audience = the console's client id, expiry) and its nonce, and maps its roles
with the API's role map: the session then holds the same identity a bearer token of the
same user would be.

The discovery, PKCE and token-exchange steps are the CLI's (:mod:`xplane.cli.oidc_client`).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

import httpx
from fastapi import Request, Response

from xplane.api.console_auth import _b64, _sign, _unb64, session_key
from xplane.api.settings import ApiSettings
from xplane.auth.oidc import InvalidToken, OidcVerifier, ProviderUnavailable
from xplane.auth.roles import Identity
from xplane.cli import oidc_client

log = logging.getLogger(__name__)

FLOW_COOKIE = "xplane_oidc"
FLOW_PATH = "/ui/oidc"
FLOW_TTL_S = 600
SCOPES = ("openid", "profile", "email")


class LoginFailed(Exception):
    """The login did not complete; the message is for the log (never shown verbatim)."""


@dataclass(frozen=True)
class Flow:
    state: str
    nonce: str
    verifier: str
    expires: int


def _client(settings: ApiSettings) -> oidc_client.OidcClient:
    assert settings.oidc_issuer is not None and settings.console_client is not None
    secret = settings.console_client_secret
    return oidc_client.OidcClient(
        issuer=settings.oidc_issuer,
        client_id=settings.console_client,
        client_secret=secret.get_secret_value() if secret is not None else None,
        scopes=SCOPES,
    )


def _discover(settings: ApiSettings) -> oidc_client.Discovery:
    assert settings.oidc_issuer is not None
    try:
        with httpx.Client(timeout=5) as http:
            return oidc_client.discover(http, settings.oidc_issuer)
    except oidc_client.OidcError as exc:
        raise LoginFailed(str(exc)) from None


def start(settings: ApiSettings, redirect_uri: str) -> tuple[str, Flow]:
    """The issuer's authorization URL and the flow to remember."""
    flow = Flow(
        state=secrets.token_urlsafe(24),
        nonce=secrets.token_urlsafe(24),
        verifier=oidc_client.new_verifier(),
        expires=int(time.time() + FLOW_TTL_S),
    )
    url = oidc_client.authorization_url(
        _discover(settings),
        _client(settings),
        redirect_uri=redirect_uri,
        state=flow.state,
        nonce=flow.nonce,
        verifier=flow.verifier,
    )
    return url, flow


def finish(
    settings: ApiSettings, verifier: OidcVerifier, flow: Flow, query: str, redirect_uri: str
) -> Identity:
    """The identity of the user the issuer sent back; :class:`LoginFailed` otherwise."""
    try:
        code = oidc_client.parse_callback(query, flow.state)  # state first
        with httpx.Client(timeout=5) as http:
            tokens = oidc_client.exchange_code(
                http,
                _discover(settings),
                _client(settings),
                code=code,
                redirect_uri=redirect_uri,
                verifier=flow.verifier,
            )
    except (oidc_client.OidcError, httpx.HTTPError) as exc:
        raise LoginFailed(str(exc)) from None
    if not tokens.id_token:
        raise LoginFailed("the token endpoint returned no ID token")
    try:
        claims = verifier.claims(tokens.id_token)
        identity = verifier.identity(tokens.id_token)
    except (InvalidToken, ProviderUnavailable) as exc:
        raise LoginFailed(f"ID token refused: {exc}") from None
    if not secrets.compare_digest(str(claims.get("nonce", "")), flow.nonce):
        raise LoginFailed("the ID token's nonce is not this login's (a replayed token)")
    return identity


def verifier_for(state: Any, settings: ApiSettings) -> OidcVerifier:
    """One verifier per app whose audience is the console's client id (keys cached)."""
    found: OidcVerifier | None = getattr(state, "console_oidc_verifier", None)
    if found is None:
        base = settings.oidc
        assert base is not None and settings.console_client is not None
        found = OidcVerifier(replace(base, audiences=(settings.console_client,)))
        state.console_oidc_verifier = found
    return found


# -- the flow cookie -----------------------------------------------------------------------


def _flow_key(settings: ApiSettings) -> bytes:
    return _sign(session_key(settings), "oidc-flow").encode()


def set_flow_cookie(response: Response, flow: Flow, settings: ApiSettings, secure: bool) -> None:
    body = _b64(json.dumps(flow.__dict__, separators=(",", ":")).encode())
    response.set_cookie(
        FLOW_COOKIE,
        f"{body}.{_sign(_flow_key(settings), body)}",
        max_age=FLOW_TTL_S,
        path=FLOW_PATH,
        httponly=True,
        samesite="lax",
        secure=secure,
    )


def read_flow_cookie(request: Request, settings: ApiSettings) -> Flow | None:
    value = request.cookies.get(FLOW_COOKIE, "")
    body, _, sig = value.partition(".")
    if not sig or not secrets.compare_digest(sig, _sign(_flow_key(settings), body)):
        return None
    try:
        flow = Flow(**json.loads(_unb64(body)))
    except (ValueError, TypeError):
        return None
    return flow if flow.expires >= time.time() else None


def clear_flow_cookie(response: Response, secure: bool) -> None:
    response.delete_cookie(
        FLOW_COOKIE, path=FLOW_PATH, httponly=True, samesite="lax", secure=secure
    )
