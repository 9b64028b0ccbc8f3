"""A real OIDC provider on loopback: ``python -m oidc_provider_mock`` (a dev dependency).

It serves discovery, a one-key JWKS (RS256; a new key every start, so a restart
on the same port is a key rotation), and the authorization code flow, which
:meth:`OidcMock.id_token` drives without a browser.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx

from tests.support.waiting import until
from xplane.netutil import free_port

REDIRECT = "http://127.0.0.1/callback"


class OidcMock:
    def __init__(self, log_dir: Path, token_max_age: int = 3600, port: int | None = None) -> None:
        self.port = port or free_port()
        self.token_max_age = token_max_age
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "oidc_provider_mock", "--port", str(self.port)]
        argv += ["--token-max-age", str(self.token_max_age)]
        with open(self.log_dir / f"oidc-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        until(self._ready, "the OIDC provider answers discovery", timeout=60)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self) -> None:
        """Same port, same issuer, a new signing key (users are forgotten)."""
        self.stop()
        self.start()

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"oidc_provider_mock exited with {self.proc.returncode}")
        try:
            url = f"{self.issuer}/.well-known/openid-configuration"
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def set_user(self, sub: str, claims: dict[str, Any]) -> None:
        response = httpx.put(f"{self.issuer}/users/{sub}", json=claims, timeout=10)
        assert response.status_code == 204, response.text

    def tokens(
        self, sub: str, client_id: str = "xplane", host: str | None = None
    ) -> dict[str, Any]:
        """The token endpoint's answer for ``sub`` logging in to ``client_id``.

        ``host``: the Host header the provider sees, which it takes its issuer from.
        """
        headers = {"Host": host} if host else {}
        params = {
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": REDIRECT,
            "scope": "openid profile",
            "state": uuid.uuid4().hex,
            "nonce": uuid.uuid4().hex,
        }
        with httpx.Client(base_url=self.issuer, timeout=10, headers=headers) as http:
            authorized = http.post("/oauth2/authorize", params=params, data={"sub": sub})
            assert authorized.status_code == 302, authorized.text
            code = parse_qs(urlparse(authorized.headers["location"]).query)["code"][0]
            token = http.post(
                "/oauth2/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": REDIRECT,
                    "client_id": client_id,
                    "client_secret": "unused",
                },
            )
        assert token.status_code == 200, token.text
        answer: dict[str, Any] = token.json()
        return answer

    def id_token(self, sub: str, client_id: str = "xplane", host: str | None = None) -> str:
        return str(self.tokens(sub, client_id, host)["id_token"])
