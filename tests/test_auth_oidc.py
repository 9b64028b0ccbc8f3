"""OIDC bearer tokens against a real provider on loopback (oidc_provider_mock).

Accepted: a token the provider signed for this client, with Casdoor-shaped roles
or mapped groups. Refused with 401: expired, another audience, another issuer,
unsigned (``alg: none``), HMAC with the public key, tampered, and unknown-key
tokens. A key rotation at the provider (a restart: new key) is followed by the
running API, and JWKS fetches on unknown keys are rate-limited.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import Engine

from tests.support.oidc_mock import OidcMock
from tests.test_api_support import Api, bearer, module_database, reset_database, running_api
from xplane.auth.oidc import InvalidToken, OidcSettings, OidcVerifier, ProviderUnavailable

TOKEN_MAX_AGE = 8  # seconds: short, so the expired-token test waits only that long
OPERATOR_CLAIMS = {"roles": [{"name": "operator", "owner": "built-in"}], "name": "alice"}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcMock]:
    mock = OidcMock(tmp_path_factory.mktemp("oidc"), token_max_age=TOKEN_MAX_AGE)
    mock.start()
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine]]:
    yield from module_database("sqlite", str(tmp_path_factory.mktemp("oidc-api")))


@pytest.fixture(scope="module")
def server(database: tuple[str, Engine], provider: OidcMock) -> Iterator[Api]:
    with running_api(
        database[1],
        database[0],
        oidc_issuer=provider.issuer,
        oidc_audience=["xplane"],
        oidc_role_map="ops-admins=admin,jp-ops=operator@web/jp",
        oidc_leeway=timedelta(0),
        oidc_jwks_refresh=timedelta(seconds=1),
    ) as running:
        yield running


@pytest.fixture
def api(server: Api, provider: OidcMock) -> Api:
    reset_database(server.engine)
    provider.set_user("alice", OPERATOR_CLAIMS)
    return server


def _get(api: Api, token: str, path: str = "/nodes") -> httpx.Response:
    return api.http.get(path, headers=bearer(token))


def _refused(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    detail: str = response.json()["detail"][0]["message"].lower()
    return detail


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_providers_token_with_casdoor_roles_is_accepted(api: Api, provider: OidcMock) -> None:
    token = provider.id_token("alice")
    assert _claims(token)["roles"][0]["name"] == "operator"

    assert _get(api, token).status_code == 200
    # operator, not admin: a known identity without the right is 403, not 401
    assert _get(api, token, "/tokens").status_code == 403


def test_groups_map_to_roles_and_scopes(api: Api, provider: OidcMock) -> None:
    provider.set_user("bob", {"groups": ["ops-admins"]})
    provider.set_user("carol", {"groups": ["jp-ops"]})
    provider.set_user("dave", {"roles": ["someone-else"]})
    node_id, _ = api.registered(region="sg-east")

    assert _get(api, provider.id_token("bob"), "/tokens").status_code == 200
    carol = provider.id_token("carol")
    assert _get(api, carol).json() == []  # web/jp only: the sg-east node is not shown
    drain = api.http.post(f"/nodes/{node_id}/drain", headers=bearer(carol), json={})
    assert drain.status_code == 403, drain.text
    # Authenticated, but no role maps: nothing is allowed.
    assert _get(api, provider.id_token("dave")).status_code == 403


def test_expired_token_is_refused(api: Api, provider: OidcMock) -> None:
    token = provider.id_token("alice")
    assert _get(api, token).status_code == 200
    time.sleep(max(0.0, _claims(token)["exp"] - time.time()) + 1.5)

    assert "expired" in _refused(_get(api, token))


def test_wrong_audience_is_refused(api: Api, provider: OidcMock) -> None:
    token = provider.id_token("alice", client_id="another-client")
    assert _claims(token)["aud"] == ["another-client"]

    assert "audience" in _refused(_get(api, token))


def test_wrong_issuer_is_refused(api: Api, provider: OidcMock) -> None:
    # Signed with the provider's own key, but issued under another name.
    token = provider.id_token("alice", host=f"localhost:{provider.port}")
    assert _claims(token)["iss"] == f"http://localhost:{provider.port}"

    assert "issuer" in _refused(_get(api, token))


def test_unsigned_and_hmac_tokens_are_refused(api: Api, provider: OidcMock) -> None:
    claims = _claims(provider.id_token("alice"))
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    assert "none" in _refused(_get(api, unsigned))

    # The classic confusion: HS256 "signed" with the provider's public key.
    jwks = httpx.get(f"{provider.issuer}/jwks", timeout=10).json()
    public_pem = jwt.PyJWK(jwks["keys"][0]).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hmac_token = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    mac = hmac.new(public_pem, hmac_token.encode(), hashlib.sha256).digest()
    hmac_token += "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert "hs256" in _refused(_get(api, hmac_token))


def test_tampered_token_is_refused(api: Api, provider: OidcMock) -> None:
    token = provider.id_token("alice")
    header, _payload, signature = token.split(".")
    claims = {**_claims(token), "roles": ["admin"]}
    tampered = f"{header}.{_b64(claims)}.{signature}"

    _refused(_get(api, tampered, "/tokens"))
    assert _get(api, token, "/tokens").status_code == 403  # the real one: still operator


def test_unknown_key_is_refused(api: Api, provider: OidcMock) -> None:
    claims = _claims(provider.id_token("alice"))
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with_kid = jwt.encode(claims, rogue, algorithm="RS256", headers={"kid": "rogue"})
    without_kid = jwt.encode(claims, rogue, algorithm="RS256")

    _refused(_get(api, with_kid))
    _refused(_get(api, without_kid))


def test_key_rotation_is_followed_without_restart(api: Api, provider: OidcMock) -> None:
    before = provider.id_token("alice")
    assert _get(api, before).status_code == 200

    provider.restart()  # same issuer, a new signing key; the API keeps running
    provider.set_user("alice", OPERATOR_CLAIMS)
    time.sleep(1.2)  # past the API's least time between two JWKS fetches
    after = provider.id_token("alice")
    assert jwt.get_unverified_header(after) == jwt.get_unverified_header(before)  # no kid

    assert _get(api, after).status_code == 200
    _refused(_get(api, before))  # the old key is gone from the JWKS


def test_unknown_keys_fetch_the_jwks_at_most_once_per_interval(provider: OidcMock) -> None:
    verifier = OidcVerifier(
        OidcSettings(issuer=provider.issuer, audiences=("xplane",), refresh_interval=3600)
    )
    fetches = 0
    fetch = verifier._fetch

    def counted() -> Any:
        nonlocal fetches
        fetches += 1
        return fetch()

    verifier._fetch = counted  # type: ignore[method-assign]
    provider.set_user("alice", OPERATOR_CLAIMS)
    assert verifier.claims(provider.id_token("alice"))["sub"] == "alice"
    claims = _claims(provider.id_token("alice"))
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for n in range(20):
        forged = jwt.encode(claims, rogue, algorithm="RS256", headers={"kid": f"k{n}"})
        with pytest.raises(InvalidToken):
            verifier.claims(forged)

    assert fetches == 1  # the first fetch; twenty unknown kids inside the interval: none


def test_provider_down_at_first_use_is_503_not_401(tmp_path: Path) -> None:
    dead = OidcMock(tmp_path)  # never started: nothing listens on its port
    verifier = OidcVerifier(OidcSettings(issuer=dead.issuer, audiences=("xplane",), timeout=2))
    token = jwt.encode({"sub": "x"}, rsa.generate_private_key(65537, 2048), algorithm="RS256")
    with pytest.raises(ProviderUnavailable):
        verifier.claims(token)


def test_provider_down_after_first_fetch_keeps_the_cached_keys(tmp_path: Path) -> None:
    mock = OidcMock(tmp_path)
    mock.start()
    try:
        verifier = OidcVerifier(
            OidcSettings(issuer=mock.issuer, audiences=("xplane",), refresh_interval=0, timeout=2)
        )
        mock.set_user("alice", OPERATOR_CLAIMS)
        token = mock.id_token("alice")
        assert verifier.claims(token)["sub"] == "alice"
    finally:
        mock.stop()
    assert verifier.claims(token)["sub"] == "alice"  # cached key, provider gone
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(_claims(token), rogue, algorithm="RS256", headers={"kid": "new"})
    with pytest.raises(InvalidToken):  # refetch fails: refused, not a 5xx
        verifier.claims(forged)


class _Issuer:
    """A minimal issuer on loopback (stdlib HTTP server): discovery and a JWKS whose keys
    carry ``kid``s (as Casdoor's do), ES256 and RS256, replaceable while it runs."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body: dict[str, Any]
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"}
                elif self.path == "/jwks":
                    issuer.fetches += 1
                    body = {"keys": [issuer._public(kid, k) for kid, k in issuer.keys.items()]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def _public(kid: str, key: Any) -> dict[str, Any]:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            text = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())
        else:
            text = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())
        jwk: dict[str, Any] = json.loads(text)
        return {**jwk, "kid": kid, "use": "sig"}

    def token(self, kid: str, **claims: Any) -> str:
        key = self.keys[kid]
        alg = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        now = int(time.time())
        payload = {"iss": self.url, "aud": "xplane", "sub": "svc", "iat": now, "exp": now + 60}
        return jwt.encode({**payload, **claims}, key, algorithm=alg, headers={"kid": kid})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_es256_and_kid_selection_and_rotation_by_kid() -> None:
    issuer = _Issuer()
    try:
        issuer.keys = {
            "ec-1": ec.generate_private_key(ec.SECP256R1()),
            "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        }
        verifier = OidcVerifier(
            OidcSettings(issuer=issuer.url, audiences=("xplane",), refresh_interval=0.5)
        )
        roles = {"roles": [{"name": "admin"}]}
        assert verifier.identity(issuer.token("ec-1", **roles)).grants[0].role.name == "admin"
        assert verifier.claims(issuer.token("rsa-1"))["sub"] == "svc"
        # Signed by ec-1's key but naming rsa-1: the named key is used, and fails.
        _header, payload, signature = issuer.token("ec-1").split(".")
        forged_header = _b64({"alg": "ES256", "kid": "rsa-1", "typ": "JWT"})
        with pytest.raises(InvalidToken):
            verifier.claims(f"{forged_header}.{payload}.{signature}")
        assert issuer.fetches == 1

        issuer.keys["ec-2"] = ec.generate_private_key(ec.SECP256R1())  # rotation: a new kid
        time.sleep(0.6)
        assert verifier.claims(issuer.token("ec-2"))["sub"] == "svc"
        assert issuer.fetches == 2
        unknown = _b64({"alg": "ES256", "kid": "zz"})
        for _ in range(5):  # an unknown kid inside the interval: no fetch
            with pytest.raises(InvalidToken):
                verifier.claims(f"{unknown}.{payload}.{signature}")
        assert issuer.fetches == 2
    finally:
        issuer.stop()
