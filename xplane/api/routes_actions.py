"""Operator actions that answer: each runs a Workflow Update and returns its answer.

========================================  ==========================  ========
route                                     workflow / update           role
========================================  ==========================  ========
POST /nodes/{node_id}/drain               node-<id> / drain           operator
POST /nodes/{node_id}/undrain             node-<id> / undrain         operator
POST /loops/{workflow_id}/pause           <loop> / pause              operator
POST /loops/{workflow_id}/resume          <loop> / resume             operator
POST /regions/{service}/{region}/retry    region-<region> / retry     operator
POST /regions/{service}/{region}/retire   region-<region> / retire    admin
POST /sync                                gitops-sync / sync          operator
POST /gate/close, /gate/open              the store (no workflow)     operator
POST /gtm/{service}/plan/approve          gtm-<service> / approve_plan  admin
POST /gtm/{service}/plan/reject           gtm-<service> / reject_plan   admin
GET /actions/{workflow_id}/{update_id}    a pending update's result   viewer
========================================  ==========================  ========

Every body needs a ``reason``. A refusal (the update's validator, or its handler when
the state moved on) is a 409 with the workflow's message, an unknown workflow a 404,
Temporal unreachable a 503 (nothing was sent), a handler that failed (a DNS provider) a
502. No request waits on Temporal more than 5 s in total: an update the workflow has not
answered by then is a 202 naming the workflow and the update, whose result
``GET /actions/{workflow_id}/{update_id}`` answers later (200, or 202 while pending).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from workflows.control_loop import LoopActionRequest, LoopActionResult
from workflows.gtm_loop import PlanDecision, PlanDecisionResult
from workflows.region_lifecycle import RegionActionResult, RegionRetryRequest
from xplane import ids
from xplane.api.actions import (
    ActionFailed,
    ActionPending,
    ActionRefused,
    ActionsUnavailable,
    T,
    UpdateMissing,
    WorkflowActions,
    WorkflowClosed,
    WorkflowMissing,
)
from xplane.api.context import ApiContext, get_ctx
from xplane.api.errors import ApiError
from xplane.api.schemas import NO_NUL_PATTERN, DrainRequest, ErrorBody, RequestModel, text
from xplane.config.errors import NAME_PATTERN
from xplane.gate import GateSettings
from xplane.heartbeat import HeartbeatSettings
from xplane.messages import NodeActionRequest, NodeActionResult
from xplane.store import gate as gate_store
from xplane.store.db import transaction, utcnow
from xplane.store.tables import column_length

router = APIRouter(tags=["actions"])  # who may act: xplane.api.authz


class ActionPendingBody(BaseModel):
    """The workflow did not answer within the request's budget: the action goes on."""

    status: Literal["pending"] = "pending"
    # accepted: the workflow took it (its validator passed); sent: not taken yet (it may
    # still be refused).
    state: Literal["accepted", "sent"]
    workflow_id: str
    update_id: str
    poll: str = Field(description="GET this path for the result (200), 202 while pending")
    message: str


_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 502, 503)
}
_PENDING: dict[int | str, dict[str, object]] = {
    202: {"model": ActionPendingBody, "description": "not answered yet: poll"}
}
_ACTION_ANSWERS: dict[int | str, dict[str, object]] = {**_PENDING, **_ERRORS}
REASON_MAX = column_length("control_gate", "operator_reason")

NodeIdPath = Annotated[str, Path(max_length=column_length("nodes", "id"), pattern=NO_NUL_PATTERN)]
NamePath = Annotated[str, Path(max_length=63, pattern=NAME_PATTERN)]
# Only XPlane's control loops have pause/resume: no arbitrary workflow id reaches Temporal.
LOOP_PATTERN = r"^(gtm-[a-z0-9-]{1,63}|autoscale-[a-z0-9-]{1,127}|gitops-sync|world-state)$"
LoopIdPath = Annotated[str, Path(max_length=140, pattern=LOOP_PATTERN)]
# Every workflow an action route sends an update to (and nothing else).
ACTION_WORKFLOW_PATTERN = (
    r"^(node-[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?|region-[a-z0-9-]{1,63}"
    r"|gtm-[a-z0-9-]{1,63}|autoscale-[a-z0-9-]{1,127}|gitops-sync|world-state)$"
)
ActionWorkflowPath = Annotated[str, Path(max_length=140, pattern=ACTION_WORKFLOW_PATTERN)]
UpdateIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


class ActionBody(RequestModel):
    """Why: recorded with the action, shown in the workflow's status and the event log."""

    reason: Annotated[str, text(REASON_MAX, 1)]


class PlanDecisionBody(ActionBody):
    provider: Annotated[str, text(64, 1)] | None = Field(
        default=None, description="provider key (e.g. 0:powerdns); optional when one is held"
    )
    digest: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")] | None = Field(
        default=None, description="the held plan's digest, as its status shows it"
    )


class GateActionResult(BaseModel):
    action: Literal["close", "open"]
    closed: bool  # the operator's switch after the action
    message: str
    gate: list[str]  # the gate as `xplane gate` shows it


def actor(request: Request) -> str:
    """Who acts, for the workflows' records (the identity, once the auth layer sets it)."""
    who = getattr(request.state, "actor", None)
    return who if isinstance(who, str) and who else "operator"


def get_actions(request: Request) -> WorkflowActions | None:
    """The app's Temporal bridge; None answers 503, after the body was validated."""
    actions: WorkflowActions | None = getattr(request.app.state, "actions", None)
    return actions


async def run_update(
    actions: WorkflowActions | None,
    workflow_id: str,
    update: str,
    arg: BaseModel,
    result_type: type[T],
    *,
    field: str,
    missing: str | None = None,
    closed: str | None = None,
) -> T | JSONResponse:
    """The update's answer, a 202 while it is pending, or the ApiError for how it did
    not answer."""
    actions = _need(actions)
    try:
        return await actions.update(workflow_id, update, arg, result_type)
    except ActionPending as exc:
        return pending(exc)
    except ActionRefused as exc:
        raise ApiError(409, str(exc), [(field, str(exc))]) from None
    except WorkflowMissing as exc:
        raise ApiError(404, missing or str(exc), [(field, str(exc))]) from None
    except WorkflowClosed as exc:
        message = closed if closed and exc.status == "completed" else str(exc)
        raise ApiError(409, message, [(field, message)]) from None
    except ActionFailed as exc:
        raise ApiError(502, "the action failed", [(field, str(exc))]) from None
    except ActionsUnavailable as exc:
        raise ApiError(503, "Temporal unavailable", [("temporal", str(exc))]) from None


def _need(actions: WorkflowActions | None) -> WorkflowActions:
    if actions is None:
        raise ApiError(
            503,
            "operator actions need Temporal",
            [("temporal", "start the API with --temporal (XPLANE_TEMPORAL_ADDRESS)")],
        )
    return actions


def pending(exc: ActionPending) -> JSONResponse:
    """202: the update goes on; its result is at ``poll``."""
    poll = f"/actions/{exc.workflow_id}/{exc.update_id}"
    if exc.state == "accepted":
        message = f"{exc.workflow_id} accepted the action and has not finished it yet"
    else:
        message = f"sent to {exc.workflow_id}, not taken yet (it may still be refused)"
    body = ActionPendingBody(
        state=exc.state,
        workflow_id=exc.workflow_id,
        update_id=exc.update_id,
        poll=poll,
        message=f"{message}: GET {poll} for its result",
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=202)


# --------------------------------------------------------------------- nodes
@router.post("/nodes/{node_id}/drain", response_model=NodeActionResult, responses=_ACTION_ANSWERS)
async def drain_node(
    node_id: NodeIdPath,
    body: DrainRequest,
    request: Request,
    actions: WorkflowActions | None = Depends(get_actions),
) -> NodeActionResult | JSONResponse:
    """Out of DNS now, then the agent is told to stop taking traffic; deleted after the
    record TTL and the drain timeout unless undrained first."""
    return await _node_action(actions, node_id, "drain", body.reason, actor(request))


@router.post("/nodes/{node_id}/undrain", response_model=NodeActionResult, responses=_ACTION_ANSWERS)
async def undrain_node(
    node_id: NodeIdPath,
    body: DrainRequest,
    request: Request,
    actions: WorkflowActions | None = Depends(get_actions),
) -> NodeActionResult | JSONResponse:
    """Withdraw a drain in time: the node comes back through warm when it is healthy."""
    return await _node_action(actions, node_id, "undrain", body.reason, actor(request))


async def _node_action(
    actions: WorkflowActions | None, node_id: str, update: str, reason: str, by: str
) -> NodeActionResult | JSONResponse:
    return await run_update(
        actions,
        ids.node_workflow_id(node_id),
        update,
        NodeActionRequest(reason=reason, by=by),
        NodeActionResult,
        field="node_id",
        missing="unknown node",
        closed=f"node {node_id} is already deleted",
    )


# --------------------------------------------------------------------- loops
@router.post(
    "/loops/{workflow_id}/pause", response_model=LoopActionResult, responses=_ACTION_ANSWERS
)
async def pause_loop(
    workflow_id: LoopIdPath,
    body: ActionBody,
    request: Request,
    actions: WorkflowActions | None = Depends(get_actions),
) -> LoopActionResult | JSONResponse:
    """No reconcile until resumed; answered once the reconcile in flight (if any) ended."""
    return await _loop_action(actions, workflow_id, "pause", body.reason, actor(request))


@router.post(
    "/loops/{workflow_id}/resume", response_model=LoopActionResult, responses=_ACTION_ANSWERS
)
async def resume_loop(
    workflow_id: LoopIdPath,
    body: ActionBody,
    request: Request,
    actions: WorkflowActions | None = Depends(get_actions),
) -> LoopActionResult | JSONResponse:
    return await _loop_action(actions, workflow_id, "resume", body.reason, actor(request))


async def _loop_action(
    actions: WorkflowActions | None, workflow_id: str, update: str, reason: str, by: str
) -> LoopActionResult | JSONResponse:
    return await run_update(
        actions,
        workflow_id,
        update,
        LoopActionRequest(reason=reason, by=by),
        LoopActionResult,
        field="workflow_id",
        missing="unknown loop",
    )


@router.post("/sync", response_model=LoopActionResult, responses=_ACTION_ANSWERS)
async def sync_now(
    body: ActionBody, request: Request, actions: WorkflowActions | None = Depends(get_actions)
) -> LoopActionResult | JSONResponse:
    """Pull the config repo now; answers what the sync did."""
    return await run_update(
        actions,
        ids.GITOPS_SYNC_ID,
        "sync",
        LoopActionRequest(reason=body.reason, by=actor(request)),
        LoopActionResult,
        field="workflow_id",
        missing="the GitOps sync loop is not running",
    )


# ------------------------------------------------------------------- regions
@router.post(
    "/regions/{service}/{region}/retry",
    response_model=RegionActionResult,
    responses=_ACTION_ANSWERS,
)
async def retry_region(
    service: NamePath,
    region: NamePath,
    body: ActionBody,
    request: Request,
    actions: WorkflowActions | None = Depends(get_actions),
) -> RegionActionResult | JSONResponse:
    """Start a failed bootstrap again."""
    return await _region_action(actions, service, region, "retry", body.reason, actor(request))


@router.post(
    "/regions/{service}/{region}/retire",
    response_model=RegionActionResult,
    responses=_ACTION_ANSWERS,
)
async def retire_region(
    service: NamePath,
    region: NamePath,
    body: ActionBody,
    request: Request,
    actions: WorkflowActions | None = Depends(get_actions),
) -> RegionActionResult | JSONResponse:
    """Take the region out: GTM 0, drain, pool to 0 via Git, remove (admin)."""
    return await _region_action(actions, service, region, "retire", body.reason, actor(request))


async def _region_action(
    actions: WorkflowActions | None, service: str, region: str, update: str, reason: str, by: str
) -> RegionActionResult | JSONResponse:
    return await run_update(
        actions,
        ids.region_id(region),
        update,
        RegionRetryRequest(reason=reason, by=by, service=service),
        RegionActionResult,
        field="region",
        missing="unknown region",
    )


# ----------------------------------------------------------------------- GTM
@router.post(
    "/gtm/{service}/plan/approve", response_model=PlanDecisionResult, responses=_ACTION_ANSWERS
)
async def approve_plan(
    service: NamePath,
    body: PlanDecisionBody,
    request: Request,
    actions: WorkflowActions | None = Depends(get_actions),
) -> PlanDecisionResult | JSONResponse:
    """Apply the DNS plan the safety threshold held, once, past the threshold (admin)."""
    return await _plan(actions, service, "approve_plan", body, actor(request))


@router.post(
    "/gtm/{service}/plan/reject", response_model=PlanDecisionResult, responses=_ACTION_ANSWERS
)
async def reject_plan(
    service: NamePath,
    body: PlanDecisionBody,
    request: Request,
    actions: WorkflowActions | None = Depends(get_actions),
) -> PlanDecisionResult | JSONResponse:
    """Drop the held plan: DNS keeps its answer until the loop wants another (admin)."""
    return await _plan(actions, service, "reject_plan", body, actor(request))


async def _plan(
    actions: WorkflowActions | None, service: str, update: str, body: PlanDecisionBody, by: str
) -> PlanDecisionResult | JSONResponse:
    return await run_update(
        actions,
        ids.gtm_id(service),
        update,
        PlanDecision(reason=body.reason, by=by, provider=body.provider, digest=body.digest),
        PlanDecisionResult,
        field="service",
        missing="unknown service",
    )


# ------------------------------------------------------------------- pending
@router.get(
    "/actions/{workflow_id}/{update_id}",
    response_model=dict[str, Any],
    responses={
        **_PENDING,
        **{code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422, 502, 503)},
    },
)
async def action_result(
    workflow_id: ActionWorkflowPath,
    update_id: UpdateIdPath,
    actions: WorkflowActions | None = Depends(get_actions),
) -> dict[str, Any] | JSONResponse:
    """The result of an action answered 202: 200 with the workflow's answer (as the
    action's route would have given it), 202 while it is still running (waits up to 5 s
    for it), 409 / 502 as the action would have answered, 404 for an unknown update."""
    actions = _need(actions)
    try:
        return await actions.result(workflow_id, update_id)
    except ActionPending as exc:
        return pending(exc)
    except ActionRefused as exc:
        raise ApiError(409, str(exc), [("update_id", str(exc))]) from None
    except (WorkflowMissing, UpdateMissing) as exc:
        raise ApiError(404, "unknown update", [("update_id", str(exc))]) from None
    except WorkflowClosed as exc:
        raise ApiError(409, str(exc), [("workflow_id", str(exc))]) from None
    except ActionFailed as exc:
        raise ApiError(502, "the action failed", [("update_id", str(exc))]) from None
    except ActionsUnavailable as exc:
        raise ApiError(503, "Temporal unavailable", [("temporal", str(exc))]) from None


# ---------------------------------------------------------------------- gate
@router.post("/gate/close", response_model=GateActionResult, responses=_ERRORS)
def close_gate(
    body: ActionBody, request: Request, ctx: ApiContext = Depends(get_ctx)
) -> GateActionResult:
    """Hold every destructive step now (stored: works while Temporal is down)."""
    return _gate(ctx, True, body.reason, actor(request))


@router.post("/gate/open", response_model=GateActionResult, responses=_ERRORS)
def open_gate(
    body: ActionBody, request: Request, ctx: ApiContext = Depends(get_ctx)
) -> GateActionResult:
    """Lift the operator's close, and end holds whose inputs are healthy again."""
    return _gate(ctx, False, body.reason, actor(request))


def _gate(ctx: ApiContext, closed: bool, reason: str, by: str) -> GateActionResult:
    who = f"api:{by}"
    with transaction(ctx.factory) as session:
        stored = gate_store.read_gate(session)
        refusal = gate_refusal(closed, stored.operator_closed, stored.operator_reason)
        if refusal is not None:
            raise ApiError(409, refusal, [("gate", refusal)])
        gate_store.set_operator(session, closed, reason, by=who)
    with ctx.factory() as session:
        lines = gate_store.describe(
            gate_store.read_gate(session),
            utcnow(),
            HeartbeatSettings.from_env(),
            GateSettings.from_env(),
        )
    return GateActionResult(
        action="close" if closed else "open",
        closed=closed,
        message=f"gate {'closed' if closed else 'opened'} by {who}: {reason}",
        gate=lines,
    )


def gate_refusal(close: bool, operator_closed: bool, operator_reason: str | None) -> str | None:
    """A close of a gate the operator already closed is refused (its reason would be lost).
    Opening is always accepted: it also ends holds whose inputs are healthy again."""
    if close and operator_closed:
        return f"the gate is already closed by an operator: {operator_reason}"
    return None
