"""``POST /webhooks/terraform`` (CI finished ``terraform apply``) and ``POST /webhooks/git``.

Terraform: the body ``{commit, service, region, status, run_url?, outputs?, timestamp}``
is signed as ``X-XPlane-Signature-256: sha256=<HMAC-SHA256(raw body)>`` with
``XPLANE_WEBHOOK_SECRET``; ``X-XPlane-Delivery`` de-duplicates retries. The
timestamp is *inside* the signed body (unix seconds or ISO 8601), so a captured
request cannot be replayed later with a fresh one: outside ``window`` it is
refused. A valid call is delivered by signal-with-start to
``autoscale-<service>-<region>`` (nothing is lost when CI is faster than the
workflow) and to ``region-<region>`` when that workflow is running.

Git: GitHub push events (``X-Hub-Signature-256``) and GitLab's
(``X-Gitlab-Token``) with ``XPLANE_GIT_WEBHOOK_SECRET`` send ``sync_now`` to
``gitops-sync``. Their delivery ids (GitHub's ``X-GitHub-Delivery``, GitLab's
``X-Gitlab-Event-UUID``) are required and recorded: a replayed request answers
200 ``duplicate`` and triggers nothing.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from xplane.api.context import get_ctx
from xplane.api.errors import ApiError
from xplane.observability import metrics
from xplane.store.config_store import service_regions
from xplane.store.db import transaction, utcnow
from xplane.store.events import record_event
from xplane.store.pools import finish_commit
from xplane.webhooks.deliveries import MAX_ID_LENGTH, claim_delivery, release_delivery
from xplane.webhooks.signature import token_matches, verify

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-XPlane-Signature-256"
DELIVERY_HEADER = "X-XPlane-Delivery"
DEFAULT_WINDOW = timedelta(minutes=5)
GITHUB_DELIVERY_HEADER = "X-GitHub-Delivery"
GITLAB_DELIVERY_HEADER = "X-Gitlab-Event-UUID"


class TerraformWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    commit: str = Field(min_length=7, max_length=64, pattern=r"^[0-9a-f]+$")
    service: str = Field(min_length=1, max_length=128)
    region: str = Field(min_length=1, max_length=128)
    status: Literal["succeeded", "failed"]
    run_url: str | None = Field(default=None, max_length=2048)
    outputs: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime

    @field_validator("timestamp", mode="before")
    @classmethod
    def _unix_or_iso(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        return value


class WebhookNotifier(Protocol):
    async def terraform_finished(self, hook: TerraformWebhook) -> None: ...
    async def sync_now(self) -> None: ...


def _secret(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ApiError(503, f"webhook secret not configured ({name})")
    return value


def _notifier(request: Request) -> WebhookNotifier | None:
    return getattr(request.app.state, "webhook_notifier", None)


def make_router(window: timedelta = DEFAULT_WINDOW) -> APIRouter:
    router = APIRouter(prefix="/webhooks", tags=["webhooks"])

    @router.post("/terraform", status_code=202)
    async def terraform(request: Request) -> JSONResponse:
        body = await request.body()
        if not verify(
            _secret("XPLANE_WEBHOOK_SECRET"), body, request.headers.get(SIGNATURE_HEADER)
        ):
            raise ApiError(401, "bad signature", [(SIGNATURE_HEADER, "does not match the body")])
        delivery = request.headers.get(DELIVERY_HEADER)
        if not delivery:
            metrics.webhook_delivery("terraform", "invalid")
            raise ApiError(400, "missing delivery id", [(DELIVERY_HEADER, "header is required")])
        try:
            hook = TerraformWebhook.model_validate(json.loads(body))
        except (ValueError, ValidationError) as err:
            fields = (
                [(".".join(map(str, e["loc"])), e["msg"]) for e in err.errors()]
                if isinstance(err, ValidationError)
                else [("body", f"malformed JSON: {err}")]
            )
            metrics.webhook_delivery("terraform", "invalid")
            raise ApiError(422, "invalid terraform webhook", fields) from None
        age = abs(utcnow() - hook.timestamp.astimezone(UTC))
        if age > window:
            metrics.webhook_delivery("terraform", "stale")
            raise ApiError(
                401, "stale webhook", [("timestamp", f"{age.total_seconds():.0f}s from now")]
            )
        ctx = get_ctx(request)
        with transaction(ctx.factory) as session:
            known = service_regions(session)
            unknown = None
            if hook.service not in known:
                unknown = ("service", f"{hook.service!r} is not configured")
            elif hook.region not in known[hook.service]:
                unknown = ("region", f"{hook.region!r} is not a region of {hook.service}")
            if unknown is not None:
                metrics.webhook_delivery("terraform", "invalid")
                raise ApiError(422, f"unknown {unknown[0]}", [unknown])
            if not claim_delivery(session, delivery, "terraform"):
                metrics.webhook_delivery("terraform", "duplicate")
                return JSONResponse({"status": "duplicate", "delivery": delivery}, status_code=200)
            finish_commit(session, hook.service, hook.region, hook.commit, hook.status)
            record_event(
                session,
                "webhook.terraform",
                f"CI: terraform {hook.status} for {hook.commit[:8]} in {hook.region}",
                source="webhook",
                service=hook.service,
                region=hook.region,
                data={"commit": hook.commit, "run_url": hook.run_url, "delivery": delivery},
            )
        notifier = _notifier(request)
        if notifier is None:
            raise ApiError(503, "no workflow client configured: delivery recorded, not signalled")
        await notifier.terraform_finished(hook)
        metrics.webhook_delivery("terraform", "accepted")
        return JSONResponse({"status": "accepted", "delivery": delivery}, status_code=202)

    @router.post("/git", status_code=202)
    async def git(request: Request) -> JSONResponse:
        body = await request.body()
        secret = _secret("XPLANE_GIT_WEBHOOK_SECRET")
        github = request.headers.get("X-Hub-Signature-256")
        gitlab = request.headers.get("X-Gitlab-Token")
        from_github = verify(secret, body, github)
        if not (from_github or token_matches(secret, gitlab)):
            metrics.webhook_delivery("git", "bad_signature")
            raise ApiError(
                401, "bad signature", [("X-Hub-Signature-256", "or X-Gitlab-Token invalid")]
            )
        # The id of whichever sender's credential matched: a replay is not acted on twice.
        header, sender = (
            (GITHUB_DELIVERY_HEADER, "github")
            if from_github
            else (GITLAB_DELIVERY_HEADER, "gitlab")
        )
        delivery = request.headers.get(header, "")
        if not delivery or len(delivery) > MAX_ID_LENGTH - len(sender) - 1:
            metrics.webhook_delivery("git", "invalid")
            if not delivery:
                raise ApiError(400, "missing delivery id", [(header, "header is required")])
            raise ApiError(400, "invalid delivery id", [(header, "too long")])
        event = request.headers.get("X-GitHub-Event") or request.headers.get("X-Gitlab-Event", "")
        if event not in ("push", "Push Hook", ""):
            return JSONResponse({"status": "ignored", "event": event}, status_code=200)
        notifier = _notifier(request)
        if notifier is None:
            raise ApiError(503, "no workflow client configured")
        key = f"{sender}:{delivery}"
        factory = get_ctx(request).factory
        with transaction(factory) as session:
            claimed = claim_delivery(session, key, "git")
        if not claimed:
            metrics.webhook_delivery("git", "duplicate")
            return JSONResponse({"status": "duplicate", "delivery": delivery}, status_code=200)
        try:
            await notifier.sync_now()
        except BaseException as err:
            # Not signalled: the sender's redelivery of this id must be able to try again.
            with transaction(factory) as session:
                release_delivery(session, key)
            if not isinstance(err, Exception):
                raise
            log.warning("git webhook %s: signalling gitops-sync failed: %s", key, err)
            raise ApiError(503, "could not signal gitops-sync: redeliver later") from err
        metrics.webhook_delivery("git", "accepted")
        return JSONResponse({"status": "accepted", "delivery": delivery}, status_code=202)

    return router
