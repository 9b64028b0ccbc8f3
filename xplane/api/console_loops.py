"""Loop states for the console, from each loop's ``status`` query in Temporal.

The store knows when a loop last acted (its events), not whether it is paused: only
the workflow does. When the API has a Temporal client (``xplane api --temporal``), the
overview asks every loop at once, bounded by a short timeout and cached for a few
seconds per replica, so a slow or unreachable Temporal never holds the page: the
loops then keep what their events say.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from fastapi import Request
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from workflows.control_loop import ControlLoopWorkflow
from xplane.api.console_views import LoopState, Overview

QUERY_TIMEOUT_S = 1.5
CACHE_S = 5.0
# All a request waits on Temporal, the wait for another request's round included.
TEMPORAL_BUDGET_S = 2 * QUERY_TIMEOUT_S + 0.5
QUERY_RPC_TIMEOUT = timedelta(seconds=QUERY_TIMEOUT_S)

LoopQuerier = Callable[[Sequence[str]], Awaitable[dict[str, LoopState]]]


def loop_state(workflow_id: str, status: dict[str, Any]) -> LoopState:
    """A ``status`` query's answer (``LoopStatus`` as JSON) in the operator's words."""
    last_run = status.get("last_run_at")
    if status.get("paused"):
        return LoopState(
            id=workflow_id,
            state="paused",
            why=status.get("pause_reason") or "paused (no reason given)",
            last_activity_at=last_run,
        )
    failures = int(status.get("consecutive_errors") or 0)
    if failures:
        return LoopState(
            id=workflow_id,
            state="failing",
            why=f"{failures} failed run(s) in a row: {status.get('last_error') or 'unknown error'}",
            last_activity_at=last_run,
        )
    reasons = status.get("last_reasons") or []
    runs = int(status.get("runs") or 0)
    why = f"{runs} run(s)" + (f"; last: {', '.join(map(str, reasons))}" if reasons else "")
    return LoopState(id=workflow_id, state="running", why=why, last_activity_at=last_run)


async def query_loops(client: Client, ids: Sequence[str]) -> dict[str, LoopState]:
    """Each loop's state; a workflow that is not running says so; other errors are left out."""

    async def one(workflow_id: str) -> tuple[str, LoopState | None]:
        try:
            answer = await client.get_workflow_handle(workflow_id).query(
                ControlLoopWorkflow.status, rpc_timeout=QUERY_RPC_TIMEOUT
            )
            status = answer.model_dump(mode="json")
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return workflow_id, LoopState(
                    id=workflow_id, state="stopped", why="no running workflow with this id"
                )
            return workflow_id, None
        except Exception:  # a query failure (e.g. workflow closed) leaves the events' view
            return workflow_id, None
        return workflow_id, loop_state(workflow_id, status)

    try:
        answers = await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in ids)), timeout=QUERY_TIMEOUT_S
        )
    except TimeoutError:
        return {}
    return {i: state for i, state in answers if state is not None}


class CachedLoops:
    """At most one round of queries per ``CACHE_S`` per replica (a failed one too: an
    unreachable Temporal is not asked again by every request). No request waits more
    than :data:`TEMPORAL_BUDGET_S`, however many queue behind a round in flight."""

    def __init__(self, client: Callable[[], Awaitable[Client]]) -> None:
        self._client = client
        self._at = -CACHE_S - 1.0
        self._ids: tuple[str, ...] = ()
        self._states: dict[str, LoopState] = {}
        self._lock = asyncio.Lock()

    async def __call__(self, ids: Sequence[str]) -> dict[str, LoopState]:
        try:
            async with asyncio.timeout(TEMPORAL_BUDGET_S):
                return await self._ask(tuple(ids))
        except TimeoutError:
            return dict(self._states) if tuple(ids) == self._ids else {}

    async def _ask(self, ids: tuple[str, ...]) -> dict[str, LoopState]:
        async with self._lock:
            if time.monotonic() - self._at > CACHE_S or ids != self._ids:
                try:
                    client = await asyncio.wait_for(self._client(), QUERY_TIMEOUT_S)
                    states = await query_loops(client, ids)
                except Exception:
                    states = {}
                self._states, self._at, self._ids = states, time.monotonic(), ids
            return dict(self._states)


def notifier_loops(notifier: object) -> LoopQuerier | None:
    """A querier over the API's Temporal notifier's client, if it has one."""
    connect = getattr(notifier, "connect", None)
    if connect is None:
        return None

    async def client() -> Client:
        await connect()
        found: Client = notifier._client  # type: ignore[attr-defined]
        return found

    return CachedLoops(client)


def app_loops(request: Request) -> LoopQuerier | None:
    """This app's querier (made on first use from its notifier; None without Temporal)."""
    state = request.app.state
    if not hasattr(state, "console_loops"):
        ctx = state.ctx
        state.console_loops = notifier_loops(ctx.notifier) if ctx.notifier else None
    querier: LoopQuerier | None = state.console_loops
    return querier


async def with_loop_states(view: Overview, querier: LoopQuerier | None) -> Overview:
    """The overview with Temporal's answer for every loop that gave one."""
    if querier is None:
        return view
    ids = [loop.id for service in view.services for loop in service.loops]
    states = await querier(ids)
    for service in view.services:
        service.loops = [states.get(loop.id, loop) for loop in service.loops]
    return view


async def loop_statuses(request: Request, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each loop's raw ``status`` answer (the held DNS plans read the GTM loops' details);
    empty without Temporal or when it does not answer in time."""
    ctx = request.app.state.ctx
    connect = getattr(ctx.notifier, "connect", None) if ctx.notifier else None
    if connect is None:
        return {}

    async def one(client: Client, workflow_id: str) -> tuple[str, dict[str, Any] | None]:
        try:
            answer = await client.get_workflow_handle(workflow_id).query(
                ControlLoopWorkflow.status, rpc_timeout=QUERY_RPC_TIMEOUT
            )
        except Exception:  # not running, or the query failed: nothing to show for it
            return workflow_id, None
        return workflow_id, answer.model_dump(mode="json")

    try:
        await asyncio.wait_for(connect(), QUERY_TIMEOUT_S)
        client: Client = ctx.notifier._client
        answers = await asyncio.wait_for(
            asyncio.gather(*(one(client, i) for i in ids)), timeout=QUERY_TIMEOUT_S
        )
    except Exception:
        return {}
    return {i: s for i, s in answers if s is not None}
