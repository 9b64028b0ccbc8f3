"""CLI: ``xplane login`` / ``xplane logout`` / ``xplane whoami``.

``login`` runs OIDC authorization code with PKCE (S256) through a loopback redirect,
or the device flow (RFC 8628) where a browser cannot reach this machine and the
provider offers it, and stores the tokens for one API URL (see credentials.py).
"""

from __future__ import annotations

import os
import sys
import time
import webbrowser
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum

import httpx
import typer

from xplane.cli import credentials, oidc_client


class Flow(StrEnum):
    auto = "auto"
    browser = "browser"
    device = "device"


ServerOption = typer.Option(
    None,
    "--server",
    help=f"API URL the login is for (env XPLANE_API_URL, default {credentials.DEFAULT_SERVER})",
)


def _can_open_browser() -> bool:
    # Without a display, webbrowser falls back to console browsers (lynx, w3m) that
    # would take over this terminal: only open one where a desktop can show it.
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def choose_flow(flow: Flow, discovery: oidc_client.Discovery, can_open_browser: bool) -> Flow:
    """``auto``: the loopback redirect when a browser can open here; the device flow
    when none can and the provider offers it (a browser elsewhere cannot reach this
    machine's loopback); else the loopback redirect with a printed URL."""
    if flow is Flow.device and discovery.device_authorization_endpoint is None:
        raise oidc_client.OidcError(
            "the identity provider offers no device flow (no device_authorization_endpoint)"
        )
    if flow is not Flow.auto:
        return flow
    if not can_open_browser and discovery.device_authorization_endpoint is not None:
        return Flow.device
    return Flow.browser


def _expiry_text(expires_at: float, now: float) -> str:
    when = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    left = int(expires_at - now)
    if left <= 0:
        return f"{when} (expired; refreshed on the next call)"
    return f"{when} (in {left // 3600}h{left % 3600 // 60:02d}m)"


def print_status(server: str) -> bool:
    """Subject, issuer and expiry of the stored login; never a token."""
    try:
        login = credentials.get_login(server)
    except credentials.LoginRequired as exc:
        typer.echo(f"error: {exc}", err=True)
        return False
    if login is None:
        typer.echo(f"not logged in to {server} (run `xplane login`)")
        return False
    typer.echo(f"server:  {login.server}")
    typer.echo(f"issuer:  {login.issuer}")
    typer.echo(f"subject: {login.subject}" + (f" ({login.name})" if login.name else ""))
    typer.echo(f"expires: {_expiry_text(login.expires_at, time.time())}")
    typer.echo(f"refresh: {'yes' if login.refresh_token else 'no'}")
    return True


def run_login(
    *,
    server: str,
    client: oidc_client.OidcClient,
    client_secret_file: str | None,
    flow: Flow = Flow.auto,
    open_browser: bool = True,
    timeout: float = 300.0,
    announce_url: Callable[[str], None] | None = None,
) -> credentials.StoredLogin:
    """Log in and store the credentials; what to show the user goes to stderr.

    ``announce_url`` replaces printing the authorization URL (tests drive the login).
    """
    with httpx.Client(timeout=10.0) as http:
        discovery = oidc_client.discover(http, client.issuer)
        can_open = open_browser and _can_open_browser()
        chosen = choose_flow(flow, discovery, can_open)
        nonce: str | None = None
        if chosen is Flow.device:
            tokens = oidc_client.device_login(http, discovery, client, announce=_show_device_code)
        else:

            def announce(url: str) -> None:
                typer.echo(f"Open this URL to log in:\n\n  {url}\n", err=True)
                if can_open:
                    webbrowser.open(url)
                typer.echo("Waiting for the login to finish in the browser...", err=True)

            tokens, nonce = oidc_client.browser_login(
                http, discovery, client, announce=announce_url or announce, timeout=timeout
            )
    login = credentials.login_from_tokens(
        tokens, server=server, client=client, client_secret_file=client_secret_file, nonce=nonce
    )
    credentials.store_login(login)
    return login


def _show_device_code(grant: oidc_client.DeviceAuthorization) -> None:
    typer.echo(
        f"To log in, open {grant.verification_uri} and enter the code {grant.user_code}",
        err=True,
    )
    if grant.verification_uri_complete:
        typer.echo(f"(or open {grant.verification_uri_complete})", err=True)


def login(
    issuer: str | None = typer.Option(
        None, "--issuer", envvar="XPLANE_OIDC_ISSUER", help="OIDC issuer URL"
    ),
    client_id: str | None = typer.Option(
        None, "--client-id", envvar="XPLANE_OIDC_CLIENT_ID", help="OIDC client id"
    ),
    client_secret_file: str | None = typer.Option(
        None,
        "--client-secret-file",
        envvar="XPLANE_OIDC_CLIENT_SECRET_FILE",
        help="File holding the client secret, for a confidential client "
        "(or XPLANE_OIDC_CLIENT_SECRET)",
    ),
    server: str | None = ServerOption,
    flow: Flow = typer.Option(Flow.auto, "--flow", help="auto | browser | device"),
    no_browser: bool = typer.Option(
        False, "--no-browser", help="Print the URL only; do not open a browser"
    ),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the login"),
    status: bool = typer.Option(False, "--status", help="Show the stored login and exit"),
) -> None:
    """Log in to the XPlane API through your identity provider (OIDC)."""
    url = credentials.api_url(server)
    if status:
        raise typer.Exit(0 if print_status(url) else 1)
    required = {
        "--issuer/XPLANE_OIDC_ISSUER": issuer,
        "--client-id/XPLANE_OIDC_CLIENT_ID": client_id,
    }
    missing = [name for name, value in required.items() if not value]
    if missing:
        typer.echo(f"error: {' and '.join(missing)} required", err=True)
        raise typer.Exit(2)
    assert issuer and client_id
    try:
        client = oidc_client.OidcClient(
            issuer=oidc_client.normalize_issuer(issuer),
            client_id=client_id,
            client_secret=credentials.client_secret(client_secret_file),
        )
        stored = run_login(
            server=url,
            client=client,
            client_secret_file=client_secret_file,
            flow=flow,
            open_browser=not no_browser,
            timeout=timeout,
        )
    except (oidc_client.OidcError, httpx.HTTPError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    who = stored.subject + (f" ({stored.name})" if stored.name else "")
    typer.echo(f"logged in to {stored.server} as {who}")


def logout(server: str | None = ServerOption) -> None:
    """Forget the stored login for an API URL."""
    url = credentials.api_url(server)
    if credentials.remove_login(url):
        typer.echo(f"logged out of {url}")
    else:
        typer.echo(f"no stored login for {url}")


def whoami(server: str | None = ServerOption) -> None:
    """Show who the stored login is for and when it expires (never the token)."""
    raise typer.Exit(0 if print_status(credentials.api_url(server)) else 1)


def register(root: typer.Typer) -> None:
    """Attach this module's commands to the root `xplane` app."""
    root.command("login")(login)
    root.command("logout")(logout)
    root.command("whoami")(whoami)
