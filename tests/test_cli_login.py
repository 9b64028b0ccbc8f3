"""``xplane login``: PKCE through a loopback redirect against a real OIDC provider
(oidc-provider-mock on loopback), the stored credentials, refresh, and the bearer
every API command sends."""

from __future__ import annotations

import json
import os
import queue
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from typer.testing import CliRunner

from tests.support.oidc import OidcProvider, oidc_provider  # noqa: F401
from xplane.cli import credentials, login_cmd, oidc_client
from xplane.cli.main import app

API = "http://127.0.0.1:18080"
SECRET = "not-a-real-secret-5f1c"  # the provider wants one; it must never be printed
CLIENT_ID = "xplane-cli"


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.setenv("XPLANE_OIDC_CLIENT_SECRET", SECRET)
    for name in ("XPLANE_TOKEN", "XPLANE_ADMIN_TOKEN", "XPLANE_API_URL", "DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    return home


def _client(provider: OidcProvider) -> oidc_client.OidcClient:
    return oidc_client.OidcClient(issuer=provider.issuer, client_id=CLIENT_ID, client_secret=SECRET)


class _Login:
    """``run_login`` in a thread: the test takes the URL it announces and plays the user."""

    def __init__(self, provider: OidcProvider, server: str = API, timeout: float = 20.0) -> None:
        self.urls: queue.Queue[str] = queue.Queue()
        self.result: credentials.StoredLogin | Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(provider, server, timeout))
        self._thread.start()

    def _run(self, provider: OidcProvider, server: str, timeout: float) -> None:
        try:
            self.result = login_cmd.run_login(
                server=server,
                client=_client(provider),
                client_secret_file=None,
                open_browser=False,
                timeout=timeout,
                announce_url=self.urls.put,
            )
        except Exception as exc:
            self.result = exc

    def url(self) -> str:
        return self.urls.get(timeout=10)

    def join(self) -> credentials.StoredLogin | Exception | None:
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()
        return self.result


def _log_in(provider: OidcProvider, sub: str, server: str = API) -> credentials.StoredLogin:
    login = _Login(provider, server)
    callback = provider.approve(login.url(), sub)
    assert httpx.get(callback, timeout=5).status_code == 200
    result = login.join()
    assert isinstance(result, credentials.StoredLogin), result
    return result


# --- pure rules -----------------------------------------------------------------------


def test_code_challenge_is_rfc7636_s256() -> None:
    # RFC 7636 Appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert oidc_client.code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_authorization_url_carries_pkce_state_and_scopes() -> None:
    discovery = oidc_client.Discovery(
        issuer="https://id.example",
        authorization_endpoint="https://id.example/authorize",
        token_endpoint="https://id.example/token",
    )
    url = oidc_client.authorization_url(
        discovery,
        oidc_client.OidcClient(issuer="https://id.example", client_id="cli"),
        redirect_uri="http://127.0.0.1:5555/callback",
        state="st",
        nonce="no",
        verifier="v" * 43,
    )
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert params["code_challenge_method"] == "S256"
    assert params["code_challenge"] == oidc_client.code_challenge("v" * 43)
    assert params["scope"] == "openid profile offline_access"
    assert (params["state"], params["nonce"], params["response_type"]) == ("st", "no", "code")
    assert "code_verifier" not in params


def test_callback_with_another_state_is_refused_before_its_code_is_read() -> None:
    with pytest.raises(oidc_client.OidcError, match="state does not match"):
        oidc_client.parse_callback("code=abc&state=forged", "expected")
    with pytest.raises(oidc_client.OidcError, match="state does not match"):
        oidc_client.parse_callback("code=abc", "expected")
    with pytest.raises(oidc_client.OidcError, match="access_denied"):
        oidc_client.parse_callback("error=access_denied&state=expected", "expected")
    assert oidc_client.parse_callback("code=abc&state=expected", "expected") == "abc"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iss": "https://evil.example"}, "issuer"),
        ({"aud": ["another-client"]}, "not for client"),
        ({"nonce": "replayed"}, "nonce"),
        ({"exp": 1000.0}, "expired"),
        ({"sub": ""}, "subject"),
    ],
)
def test_id_token_claims_are_checked(change: dict[str, Any], message: str) -> None:
    claims = {"iss": "https://id.example/", "aud": ["cli"], "nonce": "n", "exp": 5000, "sub": "a"}

    def check(claims: dict[str, Any]) -> None:
        oidc_client.check_id_token(
            claims, issuer="https://id.example", client_id="cli", nonce="n", now=4000
        )

    check(claims)
    with pytest.raises(oidc_client.OidcError, match=message):
        check({**claims, **change})


def test_auto_flow_uses_the_device_flow_only_without_a_local_browser() -> None:
    plain = oidc_client.Discovery(
        issuer="https://id.example", authorization_endpoint="a", token_endpoint="t"
    )
    device = plain.model_copy(update={"device_authorization_endpoint": "d"})
    auto = login_cmd.Flow.auto
    assert login_cmd.choose_flow(auto, plain, can_open_browser=False) is login_cmd.Flow.browser
    assert login_cmd.choose_flow(auto, device, can_open_browser=False) is login_cmd.Flow.device
    assert login_cmd.choose_flow(auto, device, can_open_browser=True) is login_cmd.Flow.browser
    with pytest.raises(oidc_client.OidcError, match="no device flow"):
        login_cmd.choose_flow(login_cmd.Flow.device, plain, can_open_browser=False)


def test_refresh_is_due_within_sixty_seconds_of_expiry() -> None:
    login = credentials.StoredLogin(
        server=API, issuer="i", client_id="c", access_token="a", expires_at=1000.0, subject="s"
    )
    assert not credentials.needs_refresh(login, now=939.0)
    assert credentials.needs_refresh(login, now=940.0)
    assert credentials.needs_refresh(login, now=2000.0)


def test_token_source_order(config_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials.store_login(
        credentials.StoredLogin(
            server=API,
            issuer="i",
            client_id="c",
            id_token="stored-id-token",
            access_token="a",
            expires_at=time.time() + 3600,
            subject="s",
        )
    )
    assert credentials.api_token(API) == "stored-id-token"
    assert credentials.api_token("http://127.0.0.1:1") is None  # logins are per API URL
    monkeypatch.setenv("XPLANE_ADMIN_TOKEN", "admin")
    assert credentials.api_token(API) == "admin"
    monkeypatch.setenv("XPLANE_TOKEN", "api-token")
    assert credentials.api_token(API) == "api-token"
    assert credentials.api_token(API, "flag-token") == "flag-token"


# --- against the real provider --------------------------------------------------------


def _wait_line(lines: queue.Queue[str], prefix: str) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.1)).strip()
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r}")


@pytest.mark.timeout(90)
def test_xplane_login_stores_the_users_tokens_0600(
    oidc_provider: OidcProvider,  # noqa: F811
    config_home: Path,
) -> None:
    oidc_provider.set_user(
        "alice", {"name": "Alice Ops", "roles": [{"name": "operator", "owner": "built-in"}]}
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "xplane.cli.main", "login", "--no-browser"]
    command += ["--issuer", oidc_provider.issuer, "--client-id", CLIENT_ID, "--server", API]
    proc = subprocess.Popen(
        [*command, "--timeout", "30"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines: queue.Queue[str] = queue.Queue()
        err_lines: list[str] = []

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                err_lines.append(line)
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        url = _wait_line(lines, oidc_provider.issuer + "/oauth2/authorize?")
        callback = oidc_provider.approve(url, "alice")
        assert callback.startswith("http://127.0.0.1:") and "/callback?" in callback
        page = httpx.get(callback, timeout=5)
        assert page.status_code == 200 and "Logged in" in page.text
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(err_lines)
    assert out.strip() == f"logged in to {API} as alice (Alice Ops)"
    assert SECRET not in out + "".join(err_lines)

    path = config_home / "xplane" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((path.parent / ".credentials.lock").stat().st_mode) == 0o600
    text = path.read_text()
    assert SECRET not in text
    stored = json.loads(text)["logins"][API]
    assert stored["issuer"] == oidc_provider.issuer and stored["refresh_token"]
    claims = oidc_client.unverified_claims(stored["id_token"])
    assert claims["sub"] == "alice" and claims["aud"] == [CLIENT_ID]
    assert claims["iss"] == oidc_provider.issuer
    assert claims["roles"] == [{"name": "operator", "owner": "built-in"}]
    assert stored["expires_at"] == claims["exp"]

    runner = CliRunner()
    status = runner.invoke(app, ["whoami", "--server", API])
    assert status.exit_code == 0, status.output
    assert "subject: alice (Alice Ops)" in status.output
    assert oidc_provider.issuer in status.output
    assert stored["id_token"] not in status.output
    assert stored["refresh_token"] not in status.output
    assert runner.invoke(app, ["login", "--status", "--server", API]).exit_code == 0

    out_result = runner.invoke(app, ["logout", "--server", API])
    assert out_result.exit_code == 0 and f"logged out of {API}" in out_result.output
    assert json.loads(path.read_text())["logins"] == {}
    assert runner.invoke(app, ["whoami", "--server", API]).exit_code == 1


@pytest.mark.timeout(60)
def test_a_callback_with_a_wrong_state_is_refused_and_stores_nothing(
    oidc_provider: OidcProvider,  # noqa: F811
    config_home: Path,
) -> None:
    login = _Login(oidc_provider)
    callback = oidc_provider.approve(login.url(), "mallory")
    url = urlsplit(callback)
    params = {k: v[0] for k, v in parse_qs(url.query).items()}
    forged = f"{url.scheme}://{url.netloc}{url.path}?code={params['code']}&state=forged"
    answer = httpx.get(forged, timeout=5)
    assert answer.status_code == 400 and "state does not match" in answer.text
    result = login.join()
    assert isinstance(result, oidc_client.OidcError) and "state" in str(result)
    assert not (config_home / "xplane" / "credentials.json").exists()


@pytest.mark.timeout(60)
def test_an_expired_login_is_refreshed_before_the_call(
    oidc_provider: OidcProvider,  # noqa: F811
    config_home: Path,
) -> None:
    first = _log_in(oidc_provider, "bob")
    path = config_home / "xplane" / "credentials.json"
    data = json.loads(path.read_text())
    data["logins"][API]["expires_at"] = time.time() - 5
    path.write_text(json.dumps(data))

    bearer = credentials.api_token(API)
    stored = credentials.get_login(API)
    assert stored is not None and bearer == stored.bearer
    assert bearer not in (first.id_token, first.access_token)
    assert stored.access_token != first.access_token
    assert stored.expires_at > time.time() + 600 and stored.subject == "bob"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The refreshed token is live at the provider, for the same user.
    info = httpx.get(
        f"{oidc_provider.issuer}/userinfo",
        headers={"Authorization": f"Bearer {stored.access_token}"},
        timeout=5,
    )
    assert info.status_code == 200 and info.json()["sub"] == "bob"
    # Within the margin nothing is refreshed again.
    assert credentials.api_token(API) == bearer


@pytest.mark.timeout(60)
def test_a_failed_refresh_says_run_xplane_login(
    oidc_provider: OidcProvider,  # noqa: F811
    config_home: Path,
) -> None:
    _log_in(oidc_provider, "carol")
    oidc_provider.revoke_tokens("carol")
    path = config_home / "xplane" / "credentials.json"
    data = json.loads(path.read_text())
    data["logins"][API]["expires_at"] = time.time() + 30  # inside the 60 s margin
    path.write_text(json.dumps(data))

    with pytest.raises(credentials.LoginRequired, match="run `xplane login"):
        credentials.api_token(API)
    result = CliRunner().invoke(app, ["nodes", "list", "--server", API])
    assert result.exit_code == 1
    assert "run `xplane login" in result.output
    assert SECRET not in result.output


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        type(self).seen.append(auth)
        status, body = (401, b'{"error": "unauthorized"}') if auth == "Bearer bad" else (200, b"[]")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recording_api() -> Iterator[tuple[str, list[str | None]]]:
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    seen: list[str | None] = []
    _Recorder.seen = seen
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.timeout(60)
def test_api_commands_send_the_stored_id_token_as_bearer(
    oidc_provider: OidcProvider,  # noqa: F811
    config_home: Path,
    recording_api: tuple[str, list[str | None]],
) -> None:
    url, seen = recording_api
    login = _log_in(oidc_provider, "dave", server=url)
    assert login.id_token is not None

    runner = CliRunner()
    result = runner.invoke(app, ["nodes", "list", "--json", "--server", url])
    assert result.exit_code == 0, result.output
    assert seen == [f"Bearer {login.id_token}"]

    # An explicit API token wins over the stored login.
    result = runner.invoke(app, ["nodes", "list", "--json", "--server", url, "--token", "tok-1"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == "Bearer tok-1"
    # A refused token says how to get a good one.
    result = runner.invoke(app, ["nodes", "list", "--server", url, "--token", "bad"])
    assert result.exit_code == 1 and "HTTP 401" in result.output
    assert "run `xplane login`" in result.output


def test_an_unreadable_credentials_file_is_reported_and_logout_clears_it(
    config_home: Path,
) -> None:
    path = config_home / "xplane" / "credentials.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"logins": {"x": {"server": 1}}}')
    runner = CliRunner()
    status = runner.invoke(app, ["whoami", "--server", API])
    assert status.exit_code == 1 and "unreadable" in status.output
    assert isinstance(status.exception, SystemExit)  # an answer, not a traceback
    with pytest.raises(credentials.LoginRequired, match="xplane logout"):
        credentials.api_token(API)
    assert runner.invoke(app, ["logout", "--server", API]).exit_code == 0
    assert not path.exists()
    assert credentials.api_token(API) is None


# --- the device flow (RFC 8628) -------------------------------------------------------


class _DeviceProvider(BaseHTTPRequestHandler):
    """Only the two endpoints of RFC 8628 (the mock provider has no device flow):
    pending once, slow_down once, then tokens."""

    answers: list[tuple[int, dict[str, Any]]] = []
    polls: list[dict[str, str]] = []

    def do_POST(self) -> None:
        form = {
            k: v[0]
            for k, v in parse_qs(
                self.rfile.read(int(self.headers["Content-Length"])).decode()
            ).items()
        }
        if self.path == "/device":
            status, body = (
                200,
                {
                    "device_code": "dev-1",
                    "user_code": "ABCD-EFGH",
                    "verification_uri": "https://id.example/device",
                    "interval": 2,
                    "expires_in": 600,
                },
            )
        else:
            type(self).polls.append(form)
            status, body = type(self).answers.pop(0)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_device_flow_polls_until_approved_and_slows_down_when_told() -> None:
    server = HTTPServer(("127.0.0.1", 0), _DeviceProvider)
    _DeviceProvider.polls = []
    _DeviceProvider.answers = [
        (400, {"error": "authorization_pending"}),
        (400, {"error": "slow_down"}),
        (200, {"access_token": "at", "id_token": "x.y.z", "token_type": "Bearer"}),
    ]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    discovery = oidc_client.Discovery(
        issuer=base,
        authorization_endpoint=f"{base}/authorize",
        token_endpoint=f"{base}/token",
        device_authorization_endpoint=f"{base}/device",
    )
    shown: list[str] = []
    slept: list[float] = []
    try:
        with httpx.Client(timeout=5) as http:
            tokens = oidc_client.device_login(
                http,
                discovery,
                oidc_client.OidcClient(issuer=base, client_id="cli"),
                announce=lambda grant: shown.append(grant.user_code),
                sleep=slept.append,
            )
    finally:
        server.shutdown()
        server.server_close()
    assert tokens.id_token == "x.y.z"
    assert shown == ["ABCD-EFGH"]
    assert slept == [2, 2, 7]  # slow_down adds 5 s for the rest of the polling
    assert all(p["grant_type"] == oidc_client.DEVICE_GRANT for p in _DeviceProvider.polls)
    assert {p["device_code"] for p in _DeviceProvider.polls} == {"dev-1"}


def test_a_refresh_with_the_provider_down_says_what_to_do(config_home: Path) -> None:
    from xplane.netutil import free_port

    credentials.store_login(
        credentials.StoredLogin(
            server=API,
            issuer=f"http://127.0.0.1:{free_port()}",  # nothing listens there
            client_id=CLIENT_ID,
            id_token="old",
            access_token="old",
            refresh_token="r",
            expires_at=time.time() - 1,
            subject="erin",
        )
    )
    with pytest.raises(credentials.LoginRequired, match="run `xplane login --server"):
        credentials.api_token(API)
    assert credentials.get_login(API) is not None  # kept: the provider may come back
