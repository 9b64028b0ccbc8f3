"""``POST /webhooks/terraform`` (CI finished ``terraform apply``) and ``POST /webhooks/git``.

Terraform: the body ``{commit, service, region, status, run_url?, outputs?, timestamp}``
is signed as ``X-XPlane-Signature-256: sha256=<HMAC-SHA256(raw body)>`` with
``XPLANE_WEBHOOK_SECRET``; ``X-XPlane-Delivery`` de-duplicates retries. The
timestamp is *inside* the signed body (unix seconds or ISO 8601), so a captured
request cannot be replayed later with a fresh one: outside ``window`` it is
refused. A valid call is stored with its payload (:mod:`xplane.store.webhook_deliveries`)
and answered 202 at once, Temporal up or not; the API's dispatcher then delivers it
by signal-with-start to ``autoscale-<service>-<region>`` (nothing is lost when CI is
faster than the workflow) and to ``region-<region>`` when that workflow is running,
retrying until it succeeds. A retry of the same delivery id answers 200 with the
delivery's real state: ``pending``, ``delivered`` or ``undeliverable``.

Git: GitHub push events (``X-Hub-Signature-256``) and GitLab's
(``X-Gitlab-Token``) with ``XPLANE_GIT_WEBHOOK_SECRET`` send ``sync_now`` to
``gitops-sync``. Their delivery ids (GitHub's ``X-GitHub-Delivery``, GitLab's
``X-Gitlab-Event-UUID``) are required and recorded: a replayed request answers
200 with the delivery's state and triggers nothing. The signal is tried at once
(409 when ``gitops-sync`` does not exist); when Temporal is unreachable the
delivery stays pending (202) for the dispatcher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from xplane.api.context import get_ctx
from xplane.api.errors import ApiError
from xplane.api.schemas import NO_NUL_PATTERN, ErrorBody
from xplane.observability import metrics
from xplane.store import webhook_deliveries as deliveries
from xplane.store.config_store import service_regions
from xplane.store.db import transaction, utcnow
from xplane.store.events import record_event
from xplane.store.pools import finish_commit
from xplane.store.tables import column_length
from xplane.webhooks.dispatcher import DeliveryDispatcher, DeliveryRefused
from xplane.webhooks.signature import token_matches, verify

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-XPlane-Signature-256"
DELIVERY_HEADER = "X-XPlane-Delivery"
DEFAULT_WINDOW = timedelta(minutes=5)
GITHUB_DELIVERY_HEADER = "X-GitHub-Delivery"
GITLAB_DELIVERY_HEADER = "X-Gitlab-Event-UUID"
DELIVERY_PATTERN = r"^[\x21-\x7e]+$"  # visible ASCII: GUIDs, CI run ids
DELIVERY_MAX = column_length("webhook_deliveries", "delivery_id")


class TerraformWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    commit: str = Field(min_length=7, max_length=64, pattern=r"^[0-9a-f]+$")
    service: str = Field(min_length=1, max_length=column_length("events", "service"))
    region: str = Field(min_length=1, max_length=column_length("events", "region"))
    status: Literal["succeeded", "failed"]
    run_url: str | None = Field(default=None, max_length=2048, pattern=NO_NUL_PATTERN)
    outputs: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime

    @field_validator("timestamp", mode="before")
    @classmethod
    def _unix_or_iso(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return datetime.fromtimestamp(value, UTC)
            except (OverflowError, OSError, ValueError):
                raise ValueError("unix seconds out of range") from None
        return value

    @field_validator("timestamp")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        # 0001-01-01T00:00:00+01:00 parses, but is before year 1 in UTC.
        try:
            return value.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("out of range once converted to UTC") from None


class LoopNotRunning(DeliveryRefused):
    """The long-running workflow a webhook signals is not running (nothing was signalled)."""


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


def _dispatcher(request: Request) -> DeliveryDispatcher | None:
    return getattr(request.app.state, "dispatcher", None)


def _known(delivery: str, state: str, kind: str) -> JSONResponse:
    """A delivery id seen before: its real state, never acted on twice."""
    metrics.webhook_delivery(kind, "duplicate")
    return JSONResponse({"status": state, "delivery": delivery}, status_code=200)


def make_router(window: timedelta = DEFAULT_WINDOW) -> APIRouter:
    router = APIRouter(prefix="/webhooks", tags=["webhooks"])

    @router.post(
        "/terraform",
        status_code=202,
        responses=_responses(200, 400, 401, 422, 503),
        openapi_extra=_terraform_doc(),
    )
    async def terraform(request: Request) -> JSONResponse:
        body = await request.body()
        if not verify(
            _secret("XPLANE_WEBHOOK_SECRET"), body, request.headers.get(SIGNATURE_HEADER)
        ):
            raise ApiError(401, "bad signature", [(SIGNATURE_HEADER, "does not match the body")])
        delivery = _delivery_id(request.headers.get(DELIVERY_HEADER))
        hook = _parse_terraform(body)
        age = abs(utcnow() - hook.timestamp)
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
            known_state = deliveries.record_delivery(
                session, delivery, "terraform", hook.model_dump(mode="json")
            )
            if known_state is not None:
                return _known(delivery, known_state, "terraform")
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
        # Stored: it is delivered whenever Temporal can take it (this replica or another).
        dispatcher = _dispatcher(request)
        if dispatcher is not None:
            dispatcher.wake()
        metrics.webhook_delivery("terraform", "accepted")
        return JSONResponse({"status": "accepted", "delivery": delivery}, status_code=202)

    @router.post(
        "/git",
        status_code=202,
        responses=_responses(200, 400, 401, 409, 503),
        openapi_extra=_git_doc(),
    )
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
        longest = DELIVERY_MAX - len(sender) - 1  # stored as "<sender>:<id>"
        if not delivery or len(delivery) > longest or not re.fullmatch(DELIVERY_PATTERN, delivery):
            metrics.webhook_delivery("git", "invalid")
            if not delivery:
                raise ApiError(400, "missing delivery id", [(header, "header is required")])
            message = f"must be 1 to {longest} visible ASCII characters"
            raise ApiError(400, "invalid delivery id", [(header, message)])
        event = request.headers.get("X-GitHub-Event") or request.headers.get("X-Gitlab-Event", "")
        if event not in ("push", "Push Hook", ""):
            return JSONResponse({"status": "ignored", "event": event}, status_code=200)
        notifier, dispatcher = _notifier(request), _dispatcher(request)
        if notifier is None or dispatcher is None:
            raise ApiError(503, "no workflow client configured")
        key = f"{sender}:{delivery}"
        ctx = get_ctx(request)
        factory = ctx.factory
        lease = dispatcher.lease()  # this request tries first; the dispatcher after the lease
        with transaction(factory) as session:
            known_state = deliveries.record_delivery(session, key, "git", {}, lease=lease)
        if known_state is not None:
            return _known(delivery, known_state, "git")
        pending = deliveries.Delivery(key, "git", {}, attempts=0, refusals=0)
        try:
            # One call to Temporal, bounded: a hung Temporal holds this request <= 5 s.
            timeout = ctx.settings.notifier_timeout.total_seconds()
            await asyncio.wait_for(notifier.sync_now(), timeout)
        except LoopNotRunning:
            # Refused, not acted on: the sender's redelivery of this id may try again.
            with transaction(factory) as session:
                deliveries.release_delivery(session, key)
            message = (
                "the gitops-sync loop is not running: nothing was signalled (start it, then retry)"
            )
            raise ApiError(409, "gitops-sync not running", [("workflow", message)]) from None
        except Exception as exc:
            # Temporal unreachable: stored, so the dispatcher delivers it once it is back.
            await dispatcher.failed(pending, exc)
            metrics.webhook_delivery("git", "accepted")
            return JSONResponse({"status": "pending", "delivery": delivery}, status_code=202)
        await dispatcher.delivered(pending)
        metrics.webhook_delivery("git", "accepted")
        return JSONResponse({"status": "accepted", "delivery": delivery}, status_code=202)

    return router


def _delivery_id(value: str | None) -> str:
    """The delivery header, or 400: it is stored, so it must fit its column."""
    if not value:
        metrics.webhook_delivery("terraform", "invalid")
        raise ApiError(400, "missing delivery id", [(DELIVERY_HEADER, "header is required")])
    if len(value) > DELIVERY_MAX or not re.fullmatch(DELIVERY_PATTERN, value):
        metrics.webhook_delivery("terraform", "invalid")
        message = f"must be 1 to {DELIVERY_MAX} visible ASCII characters"
        raise ApiError(400, "invalid delivery id", [(DELIVERY_HEADER, message)])
    return value


def _parse_terraform(body: bytes) -> TerraformWebhook:
    """The signed body as a :class:`TerraformWebhook`, or 422 naming the field."""
    try:
        return TerraformWebhook.model_validate(json.loads(body))
    except ValidationError as err:
        fields = [(".".join(map(str, e["loc"])) or "body", e["msg"]) for e in err.errors()]
    except RecursionError:
        fields = [("body", "malformed JSON: nested too deeply")]
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        fields = [("body", f"malformed JSON: {err}")]
    metrics.webhook_delivery("terraform", "invalid")
    raise ApiError(422, "invalid terraform webhook", fields)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {
        code: {"description": "answered"} if code < 400 else {"model": ErrorBody} for code in codes
    }


def _header(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": schema}


def _terraform_doc() -> dict[str, Any]:
    """The raw-body route's request, documented (the route reads and signs raw bytes)."""
    schema = TerraformWebhook.model_json_schema()
    schema["properties"]["timestamp"] = {
        "anyOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
        "description": "unix seconds or ISO 8601, within the replay window",
    }
    delivery = {"type": "string", "maxLength": DELIVERY_MAX, "pattern": DELIVERY_PATTERN}
    return {
        "parameters": [
            _header(SIGNATURE_HEADER, {"type": "string"}, required=True),
            _header(DELIVERY_HEADER, delivery, required=True),
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
    }


def _git_doc() -> dict[str, Any]:
    return {
        "parameters": [
            _header("X-Hub-Signature-256", {"type": "string"}),
            _header("X-Gitlab-Token", {"type": "string"}),
            _header("X-GitHub-Event", {"type": "string"}),
            _header(GITHUB_DELIVERY_HEADER, {"type": "string"}),
            _header(GITLAB_DELIVERY_HEADER, {"type": "string"}),
        ],
        "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
    }
