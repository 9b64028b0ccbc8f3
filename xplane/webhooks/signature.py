"""Webhook signatures, GitHub-style: ``sha256=<hex HMAC-SHA256 of the raw body>``.

Pure and constant-time. The CI scripts in ``infra/ci/`` compute the same thing
with ``openssl dgst -sha256 -hmac``. Comparisons are on bytes: ``compare_digest``
raises on a ``str`` holding non-ASCII, and a header is whatever the client sent.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` (compared in constant time)."""
    if not secret or not header or not header.startswith(PREFIX):
        return False
    return hmac.compare_digest(sign(secret, body).encode(), _bytes(header.strip()))


def token_matches(secret: str, token: str | None) -> bool:
    """GitLab's ``X-Gitlab-Token``: a shared secret, compared in constant time."""
    return bool(secret) and token is not None and hmac.compare_digest(_bytes(secret), _bytes(token))
