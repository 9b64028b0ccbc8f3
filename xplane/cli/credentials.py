"""Stored ``xplane login`` credentials, and the one place the CLI picks its API token.

The file is ``$XDG_CONFIG_HOME/xplane/credentials.json`` (``~/.config`` without it),
mode 0600 in a 0700 directory, one login per API URL. It holds tokens, never the
client secret: a confidential client's secret is read again from the environment or
the secret file at refresh time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from pydantic import BaseModel, ValidationError

from xplane.cli import oidc_client
from xplane.filelock import exclusive_lock

DEFAULT_SERVER = "http://127.0.0.1:8080"
REFRESH_MARGIN_SECONDS = 60


class LoginRequired(Exception):
    """No usable stored login: the message tells the user to run ``xplane login``."""


class StoredLogin(BaseModel):
    server: str
    issuer: str
    client_id: str
    # Where the client secret came from, if from a file: refresh reads it again there.
    client_secret_file: str | None = None
    id_token: str | None = None
    access_token: str
    refresh_token: str | None = None
    expires_at: float  # when the bearer below expires, epoch seconds
    subject: str
    name: str | None = None

    @property
    def bearer(self) -> str:
        # The API accepts ID tokens (aud = client id); an access token is the fallback
        # for a provider that gives none (Casdoor's are JWTs the API accepts too).
        return self.id_token or self.access_token


class CredentialsFile(BaseModel):
    version: int = 1
    logins: dict[str, StoredLogin] = {}


def api_url(server: str | None) -> str:
    return (server or os.environ.get("XPLANE_API_URL") or DEFAULT_SERVER).rstrip("/")


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "xplane"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def load() -> CredentialsFile:
    path = credentials_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return CredentialsFile()
    try:
        return CredentialsFile.model_validate_json(text)
    except ValidationError as exc:
        raise LoginRequired(
            f"{path} is unreadable ({exc.error_count()} error(s)); run `xplane logout` "
            "and `xplane login` again"
        ) from None


def save(credentials: CredentialsFile) -> None:
    """Write atomically; the file is created 0600 so no reader ever sees it wider."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".credentials-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)  # mkstemp already makes it 0600; say so explicitly
        with os.fdopen(fd, "w") as handle:
            handle.write(credentials.model_dump_json(indent=2, exclude_none=True))
        os.replace(tmp, credentials_path())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    # One writer at a time: providers rotate refresh tokens, and two CLI processes
    # refreshing with the same one would log each other out.
    lock = config_dir() / ".credentials.lock"
    config_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(lock, os.O_CREAT | os.O_WRONLY, 0o600))
    with exclusive_lock(lock):
        yield


def _put(login: StoredLogin) -> None:
    """Store one login; the caller holds the lock."""
    credentials = load()
    credentials.logins[login.server.rstrip("/")] = login
    save(credentials)


def get_login(server: str) -> StoredLogin | None:
    return load().logins.get(server.rstrip("/"))


def store_login(login: StoredLogin) -> None:
    with _locked():
        _put(login)


def remove_login(server: str) -> bool:
    with _locked():
        try:
            credentials = load()
        except LoginRequired:
            # Unreadable (hand-edited, truncated): holds nothing usable, so drop it all.
            credentials_path().unlink()
            return True
        removed = credentials.logins.pop(server.rstrip("/"), None) is not None
        if removed:
            save(credentials)
        return removed


def needs_refresh(login: StoredLogin, now: float) -> bool:
    return login.expires_at - REFRESH_MARGIN_SECONDS <= now


def client_secret(secret_file: str | None) -> str | None:
    """XPLANE_OIDC_CLIENT_SECRET, else the secret file (given, or in the environment)."""
    secret = os.environ.get("XPLANE_OIDC_CLIENT_SECRET")
    if secret:
        return secret
    path = secret_file or os.environ.get("XPLANE_OIDC_CLIENT_SECRET_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise oidc_client.OidcError(f"cannot read the client secret file {path}: {exc}") from exc


def login_from_tokens(
    tokens: oidc_client.TokenResponse,
    *,
    server: str,
    client: oidc_client.OidcClient,
    client_secret_file: str | None,
    nonce: str | None,
    previous: StoredLogin | None = None,
    now: float | None = None,
) -> StoredLogin:
    """What to store after a login or a refresh; ID token claims are checked here."""
    now = time.time() if now is None else now
    id_token = tokens.id_token
    subject, name = (previous.subject, previous.name) if previous else ("", None)
    if id_token is not None:
        claims = oidc_client.unverified_claims(id_token)
        oidc_client.check_id_token(
            claims, issuer=client.issuer, client_id=client.client_id, nonce=nonce, now=now
        )
        if previous is not None and claims["sub"] != previous.subject:
            raise oidc_client.OidcError("the refreshed ID token names another subject")
        subject = str(claims["sub"])
        name = claims.get("name") or claims.get("preferred_username") or claims.get("email")
        expires_at = float(claims["exp"])
    elif previous is None:
        raise oidc_client.OidcError(
            "the identity provider returned no ID token (is the `openid` scope allowed "
            "for this client?)"
        )
    else:
        expires_at = now + (tokens.expires_in or 300)
    return StoredLogin(
        server=server.rstrip("/"),
        issuer=oidc_client.normalize_issuer(client.issuer),
        client_id=client.client_id,
        client_secret_file=client_secret_file,
        id_token=id_token,
        access_token=tokens.access_token,
        # A provider that does not rotate refresh tokens answers without one: keep ours.
        refresh_token=tokens.refresh_token or (previous.refresh_token if previous else None),
        expires_at=expires_at,
        subject=subject,
        name=str(name) if name else None,
    )


def refreshed(login: StoredLogin, http: httpx.Client | None = None) -> StoredLogin:
    """New tokens for ``login`` from its refresh token (not stored); LoginRequired on failure."""
    hint = f"run `xplane login --server {login.server}` to log in again"
    if not login.refresh_token:
        raise LoginRequired(f"the login for {login.server} has expired; {hint}")
    own = http is None
    http = http or httpx.Client(timeout=10.0)
    try:
        client = oidc_client.OidcClient(
            issuer=login.issuer,
            client_id=login.client_id,
            client_secret=client_secret(login.client_secret_file),
        )
        discovery = oidc_client.discover(http, login.issuer)
        tokens = oidc_client.refresh(http, discovery, client, login.refresh_token)
        return login_from_tokens(
            tokens,
            server=login.server,
            client=client,
            client_secret_file=login.client_secret_file,
            nonce=None,
            previous=login,
        )
    except oidc_client.OidcError as exc:
        raise LoginRequired(f"the login for {login.server} has expired ({exc}); {hint}") from None
    except httpx.HTTPError as exc:
        raise LoginRequired(
            f"the login for {login.server} has expired and the identity provider "
            f"{login.issuer} did not answer the refresh ({exc}); retry, or {hint}"
        ) from None
    finally:
        if own:
            http.close()


def stored_bearer(server: str, now: float | None = None) -> str | None:
    """The stored login's bearer for ``server``, refreshed first when it (nearly) expired."""
    now = time.time() if now is None else now
    login = get_login(server)
    if login is None or not needs_refresh(login, now):
        return login.bearer if login else None
    with _locked():
        # Another process may have refreshed while this one waited for the lock.
        login = get_login(server)
        if login is None:
            return None
        if needs_refresh(login, now):
            login = refreshed(login)
            _put(login)
    return login.bearer


def api_token(server: str, explicit: str | None = None) -> str | None:
    """The bearer the CLI sends to the API at ``server``, in this order:

    1. ``--token`` / ``XPLANE_TOKEN`` (an API token),
    2. ``XPLANE_ADMIN_TOKEN`` (the shared admin token),
    3. the stored ``xplane login`` for this API URL, refreshed when needed.

    None when there is none (the API then answers 401). LoginRequired when there is a
    stored login that cannot be refreshed.
    """
    for token in (explicit, os.environ.get("XPLANE_TOKEN"), os.environ.get("XPLANE_ADMIN_TOKEN")):
        if token:
            return token
    return stored_bearer(api_url(server))
