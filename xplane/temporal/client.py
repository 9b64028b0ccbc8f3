"""Connecting to Temporal the same way everywhere (pydantic payloads)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.client import Client
from temporalio.common import TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter


async def connect(address: str, namespace: str = "default") -> Client:
    """A client with XPlane's payload converter, tracing when configured, and TLS /
    API key from ``XPLANE_TEMPORAL_*`` (see :mod:`xplane.temporal.security`)."""
    from xplane.observability.tracing import tracing_interceptors
    from xplane.temporal.security import security_from_env

    security = security_from_env()
    return await Client.connect(
        address,
        namespace=namespace,
        data_converter=pydantic_data_converter,
        interceptors=tracing_interceptors(),
        tls=security.tls,
        api_key=security.api_key,
    )


def signal_name(signal: str | Callable[..., Any]) -> str:
    """A signal's registered name: a string as given, a handler by its definition.

    ``start_workflow(start_signal=...)`` takes only a name; this resolves a handler
    (``NodeLifecycleWorkflow.registered``) the way ``WorkflowHandle.signal`` does, so
    callers that can import the workflow name its signals by reference.
    """
    return workflow._SignalDefinition.must_name_from_fn_or_str(signal)


async def signal_with_start(
    client: Client,
    *,
    workflow_type: str | Callable[..., Awaitable[Any]],
    workflow_id: str,
    start_arg: Any,
    signal: str | Callable[..., Any],
    signal_arg: Any,
    task_queue: str,
    search_attributes: TypedSearchAttributes | None = None,
    rpc_timeout: timedelta | None = None,
) -> None:
    """Deliver ``signal`` to the owner workflow, starting it first if it isn't running.

    ``workflow_type`` and ``signal`` are the workflow's run method and signal handler
    where the caller may import the workflow (the edges), else their names from
    :mod:`xplane.ids` (activities). Nothing is lost when the sender is faster than the
    workflow: the signal is recorded in the new run's history before its first task.
    ``rpc_timeout`` bounds the call (retries of an unreachable server included).
    """
    await client.start_workflow(
        workflow_type,
        start_arg,
        id=workflow_id,
        task_queue=task_queue,
        start_signal=signal_name(signal),
        start_signal_args=[signal_arg],
        search_attributes=search_attributes,
        rpc_timeout=rpc_timeout,
    )
