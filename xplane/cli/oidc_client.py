"""The CLI side of OpenID Connect: discovery, PKCE, a one-shot loopback redirect,
the device flow (RFC 8628) and the refresh grant.

The CLI does not verify the ID token's signature: it receives it straight from the
token endpoint (OIDC Core 3.1.3.7 allows TLS to stand in), and the API verifies it
on every call. It does check issuer, audience, nonce and expiry, so a confused
provider or a replayed response is caught at login rather than as a 401 later.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_SCOPES = ("openid", "profile", "offline_access")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CLOCK_SKEW_SECONDS = 60


class OidcError(Exception):
    """A login or refresh step failed; the message says which and what to do."""


class Discovery(BaseModel):
    """The fields of ``/.well-known/openid-configuration`` the CLI uses."""

    model_config = ConfigDict(extra="ignore")
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    device_authorization_endpoint: str | None = None
    # OIDC Discovery: absent means client_secret_basic.
    token_endpoint_auth_methods_supported: list[str] = ["client_secret_basic"]


class TokenResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    access_token: str
    token_type: str = "Bearer"
    id_token: str | None = None
    refresh_token: str | None = None
    expires_in: int | None = None


@dataclass(frozen=True)
class OidcClient:
    """Who the CLI is at the identity provider. The secret is optional (public clients
    use PKCE alone) and kept out of ``repr`` so it never reaches a log line."""

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = DEFAULT_SCOPES


# --- pure parts -----------------------------------------------------------------------


def normalize_issuer(issuer: str) -> str:
    return issuer.rstrip("/")


def code_challenge(verifier: str) -> str:
    """RFC 7636 S256: base64url(sha256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_verifier() -> str:
    # 32 random bytes -> 43 base64url characters, the RFC's minimum length and plenty.
    return secrets.token_urlsafe(32)


def authorization_url(
    discovery: Discovery,
    client: OidcClient,
    *,
    redirect_uri: str,
    state: str,
    nonce: str,
    verifier: str,
) -> str:
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(client.scopes),
        "state": state,
        "nonce": nonce,
        "code_challenge": code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    endpoint = discovery.authorization_endpoint
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)


def parse_callback(query: str, expected_state: str) -> str:
    """The authorization code from the redirect's query, or OidcError.

    The state is checked before anything else: a callback that does not carry this
    login's state was not started by it (a forged or stale redirect) and is refused.
    """
    params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if not secrets.compare_digest(params.get("state", ""), expected_state):
        raise OidcError(
            "refused the login callback: its state does not match this login "
            "(a forged or stale redirect); run `xplane login` again"
        )
    if "error" in params:
        detail = params.get("error_description") or ""
        raise OidcError(
            f"the identity provider refused the login: {params['error']}"
            + (f" ({detail})" if detail else "")
        )
    code = params.get("code")
    if not code:
        raise OidcError("the login callback carried no authorization code")
    return code


def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's payload, not verified (see the module docstring): for checks and display."""
    parts = token.split(".")
    if len(parts) != 3:
        raise OidcError("the ID token is not a JWT")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError) as exc:
        raise OidcError("the ID token's payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise OidcError("the ID token's payload is not a JSON object")
    return claims


def check_id_token(
    claims: dict[str, Any], *, issuer: str, client_id: str, nonce: str | None, now: float
) -> None:
    """OIDC Core 3.1.3.7's claim checks that do not need the signature."""
    if normalize_issuer(str(claims.get("iss", ""))) != normalize_issuer(issuer):
        raise OidcError(f"the ID token's issuer {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if client_id not in audiences:
        raise OidcError(f"the ID token is not for client {client_id!r} (aud {aud!r})")
    if nonce is not None and claims.get("nonce") != nonce:
        raise OidcError("the ID token's nonce does not match this login (a replayed token)")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp < now - CLOCK_SKEW_SECONDS:
        raise OidcError("the ID token has already expired (check this machine's clock)")
    if not claims.get("sub"):
        raise OidcError("the ID token has no subject")


# --- HTTP -----------------------------------------------------------------------------


def discover(http: httpx.Client, issuer: str) -> Discovery:
    url = normalize_issuer(issuer) + "/.well-known/openid-configuration"
    try:
        response = http.get(url)
        response.raise_for_status()
        discovery = Discovery.model_validate(response.json())
    except (httpx.HTTPError, ValueError, ValidationError) as exc:
        raise OidcError(f"could not read the discovery document {url}: {exc}") from exc
    if normalize_issuer(discovery.issuer) != normalize_issuer(issuer):
        raise OidcError(
            f"the discovery document at {url} names issuer {discovery.issuer!r}, not {issuer!r}"
        )
    return discovery


def _post_as_client(
    http: httpx.Client, url: str, discovery: Discovery, client: OidcClient, form: dict[str, str]
) -> httpx.Response:
    """POST a form as this client: a secret goes as HTTP Basic where the provider takes
    it (the default), else in the form; a public client sends its id only."""
    form = {**form, "client_id": client.client_id}
    if client.client_secret is None:
        return http.post(url, data=form)
    if "client_secret_basic" in discovery.token_endpoint_auth_methods_supported:
        return http.post(
            url, data=form, auth=httpx.BasicAuth(client.client_id, client.client_secret)
        )
    return http.post(url, data={**form, "client_secret": client.client_secret})


def _token_request(
    http: httpx.Client, discovery: Discovery, client: OidcClient, form: dict[str, str]
) -> httpx.Response:
    return _post_as_client(http, discovery.token_endpoint, discovery, client, form)


def _token_error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200]
    if not isinstance(body, dict):
        return "", str(body)[:200]
    return str(body.get("error", "")), str(body.get("error_description", ""))


def _parse_tokens(response: httpx.Response, what: str) -> TokenResponse:
    if response.status_code >= 400:
        error, detail = _token_error(response)
        raise OidcError(
            f"{what} failed: HTTP {response.status_code} {error}"
            + (f" ({detail})" if detail else "")
        )
    try:
        return TokenResponse.model_validate(response.json())
    except (ValueError, ValidationError) as exc:
        raise OidcError(f"{what} failed: the token endpoint's answer is unreadable") from exc


def exchange_code(
    http: httpx.Client,
    discovery: Discovery,
    client: OidcClient,
    *,
    code: str,
    redirect_uri: str,
    verifier: str,
) -> TokenResponse:
    response = _token_request(
        http,
        discovery,
        client,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
    )
    return _parse_tokens(response, "exchanging the authorization code")


def refresh(
    http: httpx.Client, discovery: Discovery, client: OidcClient, refresh_token: str
) -> TokenResponse:
    response = _token_request(
        http, discovery, client, {"grant_type": "refresh_token", "refresh_token": refresh_token}
    )
    return _parse_tokens(response, "refreshing the login")


# --- the loopback redirect ------------------------------------------------------------


class _Receiver(HTTPServer):
    expected_state: str
    result: str | OidcError | None
    done: threading.Event


class _CallbackHandler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/callback" or self.server.done.is_set():
            self._answer(404, "Not found.")
            return
        try:
            self.server.result = parse_callback(url.query, self.server.expected_state)
        except OidcError as exc:
            self.server.result = exc
            self._answer(400, f"Login refused: {exc}")
        else:
            self._answer(200, "Logged in to XPlane. You can close this tab.")
        self.server.done.set()

    def _answer(self, status: int, text: str) -> None:
        body = f"<!doctype html><title>xplane login</title><p>{html.escape(text)}</p>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # The default logs the request line to stderr, and that line carries the code.
        pass


@contextmanager
def loopback_receiver(state: str) -> Iterator[_Receiver]:
    """A one-shot HTTP server on 127.0.0.1 (the OS picks a free port) for the redirect."""
    server = _Receiver(("127.0.0.1", 0), _CallbackHandler)
    server.expected_state, server.result, server.done = state, None, threading.Event()
    thread = threading.Thread(target=server.serve_forever, name="xplane-login", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def browser_login(
    http: httpx.Client,
    discovery: Discovery,
    client: OidcClient,
    *,
    announce: Callable[[str], None],
    timeout: float = 300.0,
) -> tuple[TokenResponse, str]:
    """Authorization code with PKCE through a loopback redirect.

    ``announce`` gets the authorization URL (prints it, opens a browser). Returns the
    tokens and the nonce the ID token must carry.
    """
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), new_verifier()
    with loopback_receiver(state) as receiver:
        redirect_uri = f"http://127.0.0.1:{receiver.server_address[1]}/callback"
        announce(
            authorization_url(
                discovery,
                client,
                redirect_uri=redirect_uri,
                state=state,
                nonce=nonce,
                verifier=verifier,
            )
        )
        if not receiver.done.wait(timeout):
            raise OidcError(f"no login callback within {timeout:.0f} s; run `xplane login` again")
    if isinstance(receiver.result, OidcError):
        raise receiver.result
    assert isinstance(receiver.result, str)
    tokens = exchange_code(
        http, discovery, client, code=receiver.result, redirect_uri=redirect_uri, verifier=verifier
    )
    return tokens, nonce


# --- the device flow ------------------------------------------------------------------


class DeviceAuthorization(BaseModel):
    model_config = ConfigDict(extra="ignore")
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None = None
    expires_in: int = 600
    interval: int = 5


def device_login(
    http: httpx.Client,
    discovery: Discovery,
    client: OidcClient,
    *,
    announce: Callable[[DeviceAuthorization], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> TokenResponse:
    """RFC 8628: show a code to enter elsewhere, then poll the token endpoint."""
    assert discovery.device_authorization_endpoint is not None
    response = _post_as_client(
        http,
        discovery.device_authorization_endpoint,
        discovery,
        client,
        {"scope": " ".join(client.scopes)},
    )
    if response.status_code >= 400:
        error, detail = _token_error(response)
        raise OidcError(f"the device authorization request failed: {error} {detail}".strip())
    try:
        grant = DeviceAuthorization.model_validate(response.json())
    except (ValueError, ValidationError) as exc:
        raise OidcError("the device authorization answer is unreadable") from exc
    announce(grant)
    interval, deadline = max(grant.interval, 1), clock() + grant.expires_in
    while clock() < deadline:
        sleep(interval)
        response = _token_request(
            http, discovery, client, {"grant_type": DEVICE_GRANT, "device_code": grant.device_code}
        )
        if response.status_code < 400:
            return _parse_tokens(response, "the device login")
        error, detail = _token_error(response)
        if error == "authorization_pending":
            continue
        if error == "slow_down":  # RFC 8628 3.5: add 5 s to the interval from now on
            interval += 5
            continue
        if error == "access_denied":
            raise OidcError("the login was denied at the identity provider")
        if error == "expired_token":
            break
        raise OidcError(f"the device login failed: {error}" + (f" ({detail})" if detail else ""))
    raise OidcError("the device code expired before the login was approved; run `xplane login`")
