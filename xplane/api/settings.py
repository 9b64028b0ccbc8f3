"""API settings: flags win over ``XPLANE_*`` environment variables, which win over defaults.

Secrets (bootstrap and admin tokens) come from the environment only, never from
flags, so they don't show up in ``ps``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from xplane.auth.oidc import OidcSettings
from xplane.auth.roles import parse_role_map
from xplane.durations import parse_duration
from xplane.heartbeat import HeartbeatSettings
from xplane.store.db import DEFAULT_DB_URL
from xplane.store.webhook_deliveries import DEFAULT_RETENTION, MIN_RETENTION

BOOTSTRAP_ENV = "XPLANE_BOOTSTRAP_TOKEN"


def region_token_env(region: str) -> str:
    """``jp-east`` -> ``XPLANE_BOOTSTRAP_TOKEN_JP_EAST``."""
    return f"{BOOTSTRAP_ENV}_{region.upper().replace('-', '_')}"


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    db_url: str
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    bootstrap_token: SecretStr | None = None
    # Per-region bootstrap tokens, keyed by the env-var suffix (REGION upper, - -> _).
    region_bootstrap_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    admin_token: SecretStr | None = None
    # The shared admin token is an identity of its own (role admin): its name in the audit log.
    admin_token_name: str = Field(default="admin-token", min_length=1, max_length=64)
    # OIDC bearer tokens (XPLANE_OIDC_*): off unless an issuer is set.
    oidc_issuer: str | None = None
    oidc_audience: list[str] = Field(default_factory=list)  # the client id(s)
    oidc_roles_claim: str = "roles"
    # "idp-role=xplane-role[@service[/region]],...": viewer/operator/admin map to themselves.
    oidc_role_map: str = ""
    oidc_leeway: timedelta = Field(default=timedelta(seconds=60), ge=timedelta(0))
    # Least time between two fetches of the issuer's keys (unknown kid, failed signature).
    oidc_jwks_refresh: timedelta = Field(default=timedelta(seconds=30), ge=timedelta(0))
    # The console's OIDC login (authorization code + PKCE): its client at the issuer
    # (default: the first XPLANE_OIDC_AUDIENCE) and, for confidential clients, its secret.
    console_client_id: str | None = None
    console_client_secret: SecretStr | None = None
    # Signs console session cookies; every replica needs the same one. Unset: derived
    # from the admin token, else random per process (sessions then end on restart).
    console_session_key: SecretStr | None = None
    # Set: events older than this are pruned (audit events never are). None: kept.
    event_retention: timedelta | None = Field(default=None, gt=timedelta(0))
    metrics_token: SecretStr | None = None  # set: GET /metrics needs it as a bearer token
    # The interval told to agents and the timeout of the API's views (XPLANE_HEARTBEAT_*).
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    sample_retention: timedelta = timedelta(minutes=15)
    prune_interval: timedelta = timedelta(seconds=60)
    # How long a token hash -> node id lookup is trusted. Writes re-check the hash,
    # so a replaced token is refused at once; the TTL only bounds stale 403/404 answers.
    token_cache_ttl: timedelta = timedelta(seconds=5)
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    # Request line plus headers; past it the connection is answered 431 and closed.
    max_header_bytes: int = Field(default=16 * 1024, gt=0)
    # A body not fully received by then is a 408 (a stalled or slowloris client).
    body_read_timeout: timedelta = Field(default=timedelta(seconds=10), gt=timedelta(0))
    # Requests handled at once by this replica; more are answered 503 at once.
    max_concurrency: int = Field(default=512, ge=1)
    batch_max_size: int = Field(default=256, ge=1)
    # How long the writer waits for more heartbeats to join a batch: short, because under
    # load batches fill at once and every waiting request pays this delay.
    batch_max_wait: timedelta = timedelta(milliseconds=0.5)
    queue_size: int = Field(default=10_000, ge=1)
    # Heartbeat batches written at once; default 1 on SQLite (a single writer), 4 otherwise.
    batch_concurrency: int | None = Field(default=None, ge=1)
    # PostgreSQL only. False (default): heartbeat batches commit with synchronous_commit =
    # off, answered before their WAL is flushed; a crash of PostgreSQL or its host (not of
    # a replica) may lose beats answered in the last ~0.6 s, which the next beats replace.
    # Every other write stays synchronous (docs/deploy.md).
    heartbeat_synchronous_commit: bool = False
    # Bounds each call to Temporal (at most 5 s: an unreachable Temporal never holds a request).
    notifier_timeout: timedelta = Field(
        default=timedelta(seconds=5), gt=timedelta(0), le=timedelta(seconds=5)
    )
    # Longest wait between two tries of a stored delivery while Temporal is unreachable.
    delivery_retry_max: timedelta = Field(default=timedelta(seconds=10), gt=timedelta(0))
    # Webhook delivery ids are remembered this long (replay protection), then pruned.
    webhook_delivery_retention: timedelta = Field(default=DEFAULT_RETENTION, ge=MIN_RETENTION)

    @field_validator("oidc_role_map")
    @classmethod
    def _role_map_parses(cls, value: str) -> str:
        parse_role_map(value)  # ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _audience_with_issuer(self) -> ApiSettings:
        if self.oidc_issuer and not self.oidc_audience:
            raise ValueError("XPLANE_OIDC_AUDIENCE (the client id) is required with an issuer")
        return self

    @property
    def oidc(self) -> OidcSettings | None:
        if not self.oidc_issuer:
            return None
        return OidcSettings(
            issuer=self.oidc_issuer,
            audiences=tuple(self.oidc_audience),
            roles_claim=self.oidc_roles_claim,
            role_map=parse_role_map(self.oidc_role_map),
            leeway=self.oidc_leeway.total_seconds(),
            refresh_interval=self.oidc_jwks_refresh.total_seconds(),
        )

    @property
    def console_client(self) -> str | None:
        """The console's client id at the issuer (None: no OIDC login)."""
        if not self.oidc_issuer:
            return None
        return self.console_client_id or (self.oidc_audience[0] if self.oidc_audience else None)

    @property
    def writer_concurrency(self) -> int:
        if self.batch_concurrency is not None:
            return self.batch_concurrency
        return 1 if self.db_url.startswith("sqlite") else 4

    @property
    def heartbeat_interval_seconds(self) -> float:
        """What agents are told at registration and on every heartbeat."""
        return self.heartbeat.interval_seconds

    @property
    def timeout(self) -> timedelta:
        """Heartbeat age after which a node is down."""
        return self.heartbeat.timeout

    def bootstrap_tokens_for(self, region: str) -> list[str]:
        """Tokens that may register a node in ``region``: its own (if set) and the global one."""
        tokens = []
        own = self.region_bootstrap_tokens.get(region.upper().replace("-", "_"))
        if own is not None:
            tokens.append(own.get_secret_value())
        if self.bootstrap_token is not None:
            tokens.append(self.bootstrap_token.get_secret_value())
        return [t for t in tokens if t]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ApiSettings:
        env = os.environ if environ is None else environ
        prefix = BOOTSTRAP_ENV + "_"
        values: dict[str, Any] = {
            "db_url": env.get("XPLANE_DB_URL") or DEFAULT_DB_URL,
            "bootstrap_token": env.get(BOOTSTRAP_ENV) or None,
            "admin_token": env.get("XPLANE_ADMIN_TOKEN") or None,
            "metrics_token": env.get("XPLANE_METRICS_TOKEN") or None,
            "region_bootstrap_tokens": {
                k.removeprefix(prefix): v for k, v in env.items() if k.startswith(prefix) and v
            },
            "heartbeat": HeartbeatSettings.from_env(env),
        }
        if env.get("XPLANE_ADMIN_TOKEN_NAME"):
            values["admin_token_name"] = env["XPLANE_ADMIN_TOKEN_NAME"]
        if env.get("XPLANE_OIDC_ISSUER"):
            values["oidc_issuer"] = env["XPLANE_OIDC_ISSUER"]
        if env.get("XPLANE_OIDC_AUDIENCE"):
            values["oidc_audience"] = [
                a.strip() for a in env["XPLANE_OIDC_AUDIENCE"].split(",") if a.strip()
            ]
        if env.get("XPLANE_OIDC_ROLES_CLAIM"):
            values["oidc_roles_claim"] = env["XPLANE_OIDC_ROLES_CLAIM"]
        if env.get("XPLANE_OIDC_ROLE_MAP"):
            values["oidc_role_map"] = env["XPLANE_OIDC_ROLE_MAP"]
        if env.get("XPLANE_OIDC_JWKS_REFRESH"):
            values["oidc_jwks_refresh"] = parse_duration(env["XPLANE_OIDC_JWKS_REFRESH"])
        for key in ("console_client_id", "console_client_secret", "console_session_key"):
            if env.get(f"XPLANE_{key.upper()}"):
                values[key] = env[f"XPLANE_{key.upper()}"]
        if env.get("XPLANE_EVENT_RETENTION"):
            values["event_retention"] = parse_duration(env["XPLANE_EVENT_RETENTION"])
        if env.get("XPLANE_API_HOST"):
            values["host"] = env["XPLANE_API_HOST"]
        if env.get("XPLANE_API_PORT"):
            values["port"] = env["XPLANE_API_PORT"]
        if env.get("XPLANE_WEBHOOK_DELIVERY_RETENTION"):
            values["webhook_delivery_retention"] = parse_duration(
                env["XPLANE_WEBHOOK_DELIVERY_RETENTION"]
            )
        if env.get("XPLANE_DELIVERY_RETRY_MAX"):
            values["delivery_retry_max"] = parse_duration(env["XPLANE_DELIVERY_RETRY_MAX"])
        if env.get("XPLANE_API_MAX_CONCURRENCY"):
            values["max_concurrency"] = env["XPLANE_API_MAX_CONCURRENCY"]
        if env.get("XPLANE_HEARTBEAT_SYNCHRONOUS_COMMIT"):
            values["heartbeat_synchronous_commit"] = env["XPLANE_HEARTBEAT_SYNCHRONOUS_COMMIT"]
        if env.get("XPLANE_API_BODY_TIMEOUT"):
            values["body_read_timeout"] = timedelta(seconds=float(env["XPLANE_API_BODY_TIMEOUT"]))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
