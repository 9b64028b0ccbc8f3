"""OIDC bearer tokens (JWT, RS256/ES256) verified against the issuer's keys.

The issuer's discovery document names its JWKS; keys are fetched with PyJWT's
``PyJWKClient`` and cached. A token signed with a key id not in the cache (the
provider rotated its keys) or, for tokens without a ``kid`` (some providers and
the test provider send none), one that no cached key verifies, makes the
verifier fetch the JWKS again, at most once per ``refresh_interval``, so a
stream of forged tokens cannot turn into a stream of requests to the provider.

Checked: the signature (RS256 or ES256 only: never ``none`` nor HMAC, whose
"key" would be the public key), ``iss``, ``aud`` (the client id: ID tokens and
Casdoor's JWT access tokens both carry it), ``exp`` and ``nbf`` with ``leeway``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWKClient

from xplane.auth.roles import DEFAULT_ROLE_MAP, Grant, Identity, claim_names, grants_for

log = logging.getLogger(__name__)
ALGORITHMS = ("RS256", "ES256")


class InvalidToken(Exception):
    """The token is not one this issuer signed for this audience (a 401)."""


class ProviderUnavailable(Exception):
    """The issuer's discovery document or keys could not be fetched (a 503)."""


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audiences: tuple[str, ...]
    roles_claim: str = "roles"
    role_map: dict[str, tuple[Grant, ...]] | None = None
    leeway: float = 60.0  # seconds of clock skew allowed on exp and nbf
    refresh_interval: float = 30.0  # least time between two JWKS fetches
    timeout: float = 5.0


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts, the first a JSON object (``eyJ``): cheap, no parsing."""
    return token.startswith("eyJ") and token.count(".") == 2


class OidcVerifier:
    """Thread-safe: called from the API's worker threads."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._jwks: PyJWKClient | None = None
        self._keys: list[PyJWK] = []
        self._fetched_at = float("-inf")
        self._failed_at = float("-inf")

    # ------------------------------------------------------------------ keys
    def _client(self) -> PyJWKClient:
        if self._jwks is None:
            url = f"{self.settings.issuer.rstrip('/')}/.well-known/openid-configuration"
            try:
                response = httpx.get(url, timeout=self.settings.timeout)
                response.raise_for_status()
                document = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise ProviderUnavailable(f"discovery document: {type(exc).__name__}") from None
            if document.get("issuer") != self.settings.issuer:
                # The spec requires them equal: anything else is a misconfiguration.
                raise ProviderUnavailable(
                    f"discovery names issuer {document.get('issuer')!r}, "
                    f"not {self.settings.issuer!r}"
                )
            # No PyJWKClient cache of its own: this class decides when to fetch.
            self._jwks = PyJWKClient(
                str(document["jwks_uri"]), cache_jwk_set=False, timeout=int(self.settings.timeout)
            )
        return self._jwks

    def _fetch(self) -> list[PyJWK]:
        try:
            jwk_set = self._client().get_jwk_set()
        except jwt.PyJWKClientError as exc:
            raise ProviderUnavailable(f"JWKS: {exc}") from None
        self._fetched_at = time.monotonic()
        self._keys = [
            k
            for k in jwk_set.keys
            if k.public_key_use in ("sig", None) and k.algorithm_name in ALGORITHMS
        ]
        return self._keys

    def _cached_keys(self) -> list[PyJWK]:
        with self._lock:
            if self._fetched_at == float("-inf"):
                # Never fetched: try, but not on every request while the provider is down.
                if time.monotonic() - self._failed_at < self.settings.refresh_interval:
                    raise ProviderUnavailable("unreachable moments ago")
                try:
                    return self._fetch()
                except ProviderUnavailable:
                    self._failed_at = time.monotonic()
                    raise
            return self._keys

    def _refreshed_keys(self) -> list[PyJWK] | None:
        """The keys fetched again, or None when the last fetch is too recent (or this
        one failed: the cached keys stay, and a token none of them verifies is refused)."""
        with self._lock:
            if time.monotonic() - self._fetched_at < self.settings.refresh_interval:
                return None
            try:
                return self._fetch()
            except ProviderUnavailable as exc:
                log.warning("refreshing the OIDC keys failed (cached keys kept): %s", exc)
                self._fetched_at = time.monotonic()  # retried after the interval, not sooner
                return None

    # ------------------------------------------------------------------ tokens
    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; :class:`InvalidToken` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidToken(f"algorithm {alg!r} is not accepted ({', '.join(ALGORITHMS)})")
        kid = header.get("kid")
        keys = self._cached_keys()
        for attempt in range(2):
            for key in keys:
                if key.algorithm_name != alg or kid not in (None, key.key_id):
                    continue
                try:
                    return self._decode(token, key, alg)
                except jwt.InvalidSignatureError:
                    continue  # another key may be the one (a token without kid)
                except jwt.InvalidTokenError as exc:
                    raise InvalidToken(str(exc)) from None
            # An unknown kid, or no cached key verifies it: maybe the provider rotated.
            refreshed = self._refreshed_keys() if attempt == 0 else None
            if refreshed is None:
                break
            keys = refreshed
        which = f"key {kid!r}" if kid else "key"
        raise InvalidToken(f"no {which} of the issuer verifies the signature")

    def _decode(self, token: str, key: PyJWK, alg: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=list(self.settings.audiences),
            issuer=self.settings.issuer,
            leeway=self.settings.leeway,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
        return claims

    def identity(self, token: str) -> Identity:
        claims = self.claims(token)
        names = claim_names(claims, self.settings.roles_claim)
        role_map = (
            self.settings.role_map if self.settings.role_map is not None else DEFAULT_ROLE_MAP
        )
        grants = grants_for(names, role_map)
        subject = str(claims["sub"])
        name = next(
            (str(claims[c]) for c in ("preferred_username", "name", "email") if claims.get(c)),
            subject,
        )
        return Identity(kind="oidc", subject=subject, name=name, grants=grants)
