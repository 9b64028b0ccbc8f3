"""A real OIDC provider on loopback: ``python -m oidc_provider_mock`` on a free port.

Import the ``oidc_provider`` fixture into a test module. The provider accepts any
client id, but its token endpoint wants a client secret (any value).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from xplane.netutil import free_port


@dataclass
class OidcProvider:
    issuer: str
    pid: int

    def set_user(self, sub: str, claims: dict[str, Any]) -> None:
        """Give a user claims (the next ID token for them carries these)."""
        httpx.put(f"{self.issuer}/users/{sub}", json=claims, timeout=5).raise_for_status()

    def revoke_tokens(self, sub: str) -> None:
        """Forget every access and refresh token the provider issued to ``sub``."""
        httpx.post(f"{self.issuer}/users/{sub}/revoke-tokens", timeout=5).raise_for_status()

    def approve(self, authorization_url: str, sub: str) -> str:
        """Log ``sub`` in at the provider's form, as a user would in a browser; returns
        the redirect (the client's callback URL with ``code`` and ``state``)."""
        response = httpx.post(authorization_url, data={"sub": sub}, timeout=5)
        assert response.status_code == 302, (response.status_code, response.text[:300])
        return response.headers["location"]


def _start(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oidc_provider_mock", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    issuer = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"oidc_provider_mock exited ({proc.returncode}); see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=1).is_success:
                return proc, issuer
        time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"oidc_provider_mock did not answer on {issuer}; see {log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def oidc_provider(tmp_path: Path) -> Iterator[OidcProvider]:
    log = tmp_path / "oidc-provider.log"
    for attempt in range(3):
        try:
            proc, issuer = _start(log)
            break
        except RuntimeError:
            # The free port may have been taken between picking and binding it.
            if attempt == 2:
                raise
    try:
        yield OidcProvider(issuer=issuer, pid=proc.pid)
    finally:
        _stop(proc)
