"""Operator actions reach workflows as Temporal Workflow Updates, and come back answered.

:class:`TemporalActions` runs one update and turns every way it can end into one typed
outcome the routes map to HTTP: the handler's result, :class:`ActionRefused` (the
validator's or handler's refusal: 409), :class:`WorkflowMissing` (404),
:class:`WorkflowClosed` (the workflow is over: 409), :class:`ActionFailed` (the handler
failed, e.g. a DNS provider: 502) and :class:`ActionsUnavailable` (Temporal cannot be
reached, no worker polls for the workflow, or no answer in time: 503). It connects
lazily, in the server's event loop.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

T = TypeVar("T", bound=BaseModel)

# What a refusal raised in workflow code arrives as: a validator's ValueError, or a
# handler's ApplicationError(type="ActionRefused") when the state moved on meanwhile.
REFUSAL_TYPES = frozenset({"ValueError", "ActionRefused"})
CONNECT_TIMEOUT = timedelta(seconds=5)
# A drain waits for its transition to be written; approving a plan, for the DNS write.
UPDATE_TIMEOUT = timedelta(seconds=60)


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


class WorkflowActions(Protocol):
    async def update(
        self, workflow_id: str, update: str, arg: BaseModel, result_type: type[T]
    ) -> T:
        """Run ``update`` on ``workflow_id`` and answer its result (or an ActionError)."""
        ...


class TemporalActions:
    """Workflow Updates through a Temporal client (given, or connected on first use)."""

    def __init__(
        self,
        client: Client | None = None,
        address: str | None = None,
        namespace: str | None = None,
        update_timeout: timedelta = UPDATE_TIMEOUT,
    ) -> None:
        self._client = client
        self._address = address
        self._namespace = namespace or os.environ.get("XPLANE_TEMPORAL_NAMESPACE") or "default"
        self._timeout = update_timeout
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

    async def update(
        self, workflow_id: str, update: str, arg: BaseModel, result_type: type[T]
    ) -> T:
        client = await self._connected()
        handle = client.get_workflow_handle(workflow_id)
        await self._ready(client, handle)
        try:
            result = await asyncio.wait_for(
                handle.execute_update(
                    update, arg, result_type=result_type, rpc_timeout=self._timeout
                ),
                self._timeout.total_seconds(),
            )
        except WorkflowUpdateFailedError as exc:
            raise _failure(exc) from None
        except TimeoutError:
            raise ActionsUnavailable(
                f"no answer from {workflow_id} within {self._timeout.total_seconds():g} s "
                "(is a worker running?); the action may still apply"
            ) from None
        except RPCError as exc:
            raise await _rpc_failure(handle, workflow_id, exc) from None
        if not isinstance(result, result_type):  # the converter gave a dict: be strict
            result = result_type.model_validate(result)
        return result

    async def _ready(self, client: Client, handle: WorkflowHandle[Any, Any]) -> None:
        """Before sending: the workflow runs, and some worker polls its task queue.

        An update nobody polls for would wait in the server and apply whenever a worker
        comes back, long after the caller was told it timed out: refuse it instead.
        """
        try:
            described = await handle.describe(rpc_timeout=CONNECT_TIMEOUT)
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
                timeout=CONNECT_TIMEOUT,
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


async def _rpc_failure(
    handle: WorkflowHandle[Any, Any], workflow_id: str, exc: RPCError
) -> ActionError:
    """An RPC error of the update: a missing or closed workflow, bad input, or Temporal."""
    if exc.status == RPCStatusCode.NOT_FOUND:  # it ended (or went) since _ready
        try:
            described = await handle.describe(rpc_timeout=CONNECT_TIMEOUT)
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
