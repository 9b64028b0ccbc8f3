"""Operator actions reach workflows as Temporal Workflow Updates, and come back answered.

:class:`TemporalActions` runs one update and turns every way it can end into one typed
outcome the routes map to HTTP: the handler's result, :class:`ActionPending` (accepted,
or sent, but not answered within the request's budget: 202 with the update's id),
:class:`ActionRefused` (the validator's or handler's refusal: 409),
:class:`WorkflowMissing` (404), :class:`WorkflowClosed` (the workflow is over: 409),
:class:`ActionFailed` (the handler failed, e.g. a DNS provider: 502) and
:class:`ActionsUnavailable` (Temporal cannot be reached, or no worker polls for the
workflow: nothing was sent, 503). It connects lazily, in the server's event loop.

No request waits on Temporal longer than :data:`REQUEST_BUDGET` (5 s) in total: connect,
the checks before sending, the update's acceptance and its result share one deadline.
An update still running then is answered later by :meth:`TemporalActions.result`, by
its id (``GET /actions/{workflow_id}/{update_id}``), bounded the same way.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import (
    TaskQueueKind,
    TaskQueueType,
    UpdateWorkflowExecutionLifecycleStage,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.update.v1 import UpdateRef, WaitPolicy
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    PollWorkflowExecutionUpdateRequest,
    PollWorkflowExecutionUpdateResponse,
)
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

T = TypeVar("T", bound=BaseModel)

# What a refusal raised in workflow code arrives as: a validator's ValueError, or a
# handler's ApplicationError(type="ActionRefused") when the state moved on meanwhile.
REFUSAL_TYPES = frozenset({"ValueError", "ActionRefused"})
CONNECT_TIMEOUT = timedelta(seconds=5)
# Everything one request asks of Temporal, together: an update that takes longer (a plan
# approval waiting on a slow DNS provider) is answered 202 and its result fetched later.
REQUEST_BUDGET = timedelta(seconds=5)


class ActionError(Exception):
    """Base of the ways an action does not answer with a result."""


class ActionRefused(ActionError):
    """The workflow refused the action; the message says why (for the caller)."""


class WorkflowMissing(ActionError):
    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"no workflow {workflow_id}")
        self.workflow_id = workflow_id


class WorkflowClosed(ActionError):
    def __init__(self, workflow_id: str, status: str) -> None:
        super().__init__(f"workflow {workflow_id} is {status}")
        self.workflow_id, self.status = workflow_id, status


class ActionFailed(ActionError):
    """The update was accepted but its handler failed (not a refusal)."""


class ActionsUnavailable(ActionError):
    """Temporal is not configured, not reachable, or did not answer in time."""


class UpdateMissing(ActionError):
    """No update of this id on the workflow (never sent, or lost before it was accepted)."""


class ActionPending(ActionError):
    """Sent, but not answered within the request's budget: its result comes later.

    ``state`` is ``accepted`` when the workflow took the update (its validator passed,
    the handler runs), ``sent`` when it was sent but not yet taken (it may still be
    refused)."""

    def __init__(
        self, workflow_id: str, update_id: str, state: Literal["accepted", "sent"]
    ) -> None:
        super().__init__(f"update {update_id} on {workflow_id}: {state}, result pending")
        self.workflow_id, self.update_id, self.state = workflow_id, update_id, state


class WorkflowActions(Protocol):
    async def update(
        self, workflow_id: str, update: str, arg: BaseModel, result_type: type[T]
    ) -> T:
        """Run ``update`` on ``workflow_id`` and answer its result (or an ActionError;
        :class:`ActionPending` when it was not answered in time)."""
        ...

    async def result(self, workflow_id: str, update_id: str) -> dict[str, Any]:
        """The result of an update sent before (JSON), or an ActionError as for ``update``."""
        ...


class TemporalActions:
    """Workflow Updates through a Temporal client (given, or connected on first use)."""

    def __init__(
        self,
        client: Client | None = None,
        address: str | None = None,
        namespace: str | None = None,
        budget: timedelta = REQUEST_BUDGET,
    ) -> None:
        self._client = client
        self._address = address
        self._namespace = namespace or os.environ.get("XPLANE_TEMPORAL_NAMESPACE") or "default"
        self._budget = min(budget, REQUEST_BUDGET)
        self._lock = asyncio.Lock()

    async def _connected(self) -> Client:
        async with self._lock:
            if self._client is None:
                if not self._address:
                    raise ActionsUnavailable("no Temporal address configured")
                from xplane.temporal.client import connect

                try:
                    self._client = await asyncio.wait_for(
                        connect(self._address, self._namespace),
                        CONNECT_TIMEOUT.total_seconds(),
                    )
                except (TimeoutError, RuntimeError, OSError) as exc:
                    raise ActionsUnavailable(f"Temporal unreachable: {exc or 'timed out'}") from exc
            return self._client

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._budget.total_seconds()

    async def update(
        self, workflow_id: str, update: str, arg: BaseModel, result_type: type[T]
    ) -> T:
        deadline = self._deadline()
        update_id = uuid.uuid4().hex
        sent = accepted = False
        try:
            async with asyncio.timeout_at(deadline):
                client = await self._connected()
                handle = client.get_workflow_handle(workflow_id)
                await self._ready(client, handle, deadline)
                sent = True
                try:
                    started = await handle.start_update(
                        update,
                        arg,
                        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                        id=update_id,
                        result_type=result_type,
                        rpc_timeout=_left(deadline),
                    )
                    accepted = True
                    result = await started.result(rpc_timeout=_left(deadline))
                except WorkflowUpdateFailedError as exc:
                    raise _failure(exc) from None
                except RPCError as exc:
                    raise await _rpc_failure(handle, workflow_id, exc, deadline) from None
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            if not sent:
                raise ActionsUnavailable(
                    f"Temporal did not answer within {self._budget.total_seconds():g} s: "
                    "nothing was sent"
                ) from None
            raise ActionPending(
                workflow_id, update_id, "accepted" if accepted else "sent"
            ) from None
        if not isinstance(result, result_type):  # the converter gave a dict: be strict
            result = result_type.model_validate(result)
        return result

    async def result(self, workflow_id: str, update_id: str) -> dict[str, Any]:
        """Wait for an update's outcome within the budget (a long poll)."""
        deadline = self._deadline()
        asked = accepted = False
        try:
            async with asyncio.timeout_at(deadline):
                client = await self._connected()
                handle = client.get_workflow_handle(workflow_id)
                asked = True
                try:
                    polled = await _poll(client, workflow_id, update_id, _ACCEPTED, deadline)
                    accepted = True
                    if not polled.HasField("outcome"):
                        polled = await _poll(client, workflow_id, update_id, _COMPLETED, deadline)
                except RPCError as exc:
                    if exc.status == RPCStatusCode.DEADLINE_EXCEEDED:
                        raise TimeoutError from None
                    if exc.status != RPCStatusCode.NOT_FOUND:
                        raise ActionsUnavailable(f"Temporal: {exc.message}") from None
                    error = await _rpc_failure(handle, workflow_id, exc, deadline)
                    if isinstance(error, WorkflowMissing):
                        raise error from None
                    raise UpdateMissing(
                        f"no update {update_id} on {workflow_id} (never sent, or lost before "
                        "the workflow took it: send the action again)"
                    ) from None
                if not polled.HasField("outcome"):
                    raise TimeoutError
                outcome = polled.outcome
                if outcome.HasField("failure"):
                    cause = await client.data_converter.decode_failure(outcome.failure)
                    raise _failure(WorkflowUpdateFailedError(cause)) from None
                values = await client.data_converter.decode(outcome.success.payloads)
        except TimeoutError:
            if not asked:
                raise ActionsUnavailable(
                    f"Temporal did not answer within {self._budget.total_seconds():g} s"
                ) from None
            raise ActionPending(
                workflow_id, update_id, "accepted" if accepted else "sent"
            ) from None
        value = values[0] if values else None
        return value if isinstance(value, dict) else {"result": value}

    async def _ready(
        self, client: Client, handle: WorkflowHandle[Any, Any], deadline: float
    ) -> None:
        """Before sending: the workflow runs, and some worker polls its task queue.

        An update nobody polls for would wait in the server and apply whenever a worker
        comes back, long after the caller was told it timed out: refuse it instead.
        """
        try:
            described = await handle.describe(rpc_timeout=_left(deadline))
            if described.status != WorkflowExecutionStatus.RUNNING:
                status = described.status.name.lower() if described.status else "closed"
                raise WorkflowClosed(handle.id, status)
            queue = described.task_queue
            polled = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=client.namespace,
                    task_queue=TaskQueue(name=queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                ),
                timeout=_left(deadline),
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise WorkflowMissing(handle.id) from None
            raise ActionsUnavailable(f"Temporal: {exc.message}") from None
        if not polled.pollers:
            raise ActionsUnavailable(
                f"no worker polls task queue {queue} (are the workers running?): nothing was sent"
            )


def _failure(exc: WorkflowUpdateFailedError) -> ActionError:
    cause = exc.cause
    if isinstance(cause, ApplicationError) and (cause.type or "") in REFUSAL_TYPES:
        return ActionRefused(cause.message)
    parts: list[str] = []
    error: BaseException | None = cause
    while error is not None:
        text = getattr(error, "message", None) or str(error)
        if text and text not in parts:
            parts.append(text)
        error = error.__cause__
    return ActionFailed(": ".join(parts) or "the update failed")


_ACCEPTED = UpdateWorkflowExecutionLifecycleStage.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_ACCEPTED
_COMPLETED = (
    UpdateWorkflowExecutionLifecycleStage.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_COMPLETED
)


async def _poll(
    client: Client,
    workflow_id: str,
    update_id: str,
    stage: UpdateWorkflowExecutionLifecycleStage.ValueType,
    deadline: float,
) -> PollWorkflowExecutionUpdateResponse:
    """One long poll of an update's stage (the server answers once it is reached)."""
    return await client.workflow_service.poll_workflow_execution_update(
        PollWorkflowExecutionUpdateRequest(
            namespace=client.namespace,
            update_ref=UpdateRef(
                workflow_execution=WorkflowExecution(workflow_id=workflow_id),
                update_id=update_id,
            ),
            identity=client.identity,
            wait_policy=WaitPolicy(lifecycle_stage=stage),
        ),
        retry=True,
        timeout=_left(deadline),
    )


def _left(deadline: float) -> timedelta:
    """What remains of the request's budget (a little, at least: an RPC needs a deadline)."""
    left = deadline - asyncio.get_running_loop().time()
    return timedelta(seconds=max(0.05, left))


async def _rpc_failure(
    handle: WorkflowHandle[Any, Any], workflow_id: str, exc: RPCError, deadline: float
) -> ActionError:
    """An RPC error of the update: a missing or closed workflow, bad input, or Temporal."""
    if exc.status == RPCStatusCode.NOT_FOUND:  # it ended (or went) since _ready
        try:
            described = await handle.describe(rpc_timeout=_left(deadline))
        except RPCError as again:
            if again.status == RPCStatusCode.NOT_FOUND:
                return WorkflowMissing(workflow_id)
            return ActionsUnavailable(f"Temporal: {again.message}")
        status = described.status
        if status is not None and status != WorkflowExecutionStatus.RUNNING:
            return WorkflowClosed(workflow_id, status.name.lower())
        return ActionsUnavailable(f"Temporal: {exc.message}")
    if exc.status == RPCStatusCode.INVALID_ARGUMENT:
        return ActionRefused(f"Temporal refused the request: {exc.message}")
    return ActionsUnavailable(f"Temporal: {exc.message}")
