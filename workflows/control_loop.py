"""The control-loop building block every XPlane loop shares (observe -> plan -> act).

A subclass defines ``@workflow.run`` (Temporal requires it on the class itself),
calls :meth:`ControlLoopWorkflow.run_loop`, and implements :meth:`reconcile`.
The base gives it, Kubernetes-controller style:

* a tick interval with jitter from ``workflow.random()`` (loops don't run in lockstep);
* wake-up signals, coalesced: ten ``world_changed`` signals while a reconcile
  runs lead to one more reconcile, not ten;
* ``pause`` / ``resume`` signals (operators, and the control plane's health gate), and
  ``pause`` / ``resume`` Workflow Updates of the same names: validated (pausing a paused
  loop is refused with the reason) and answered once no reconcile is in flight;
* a ``status`` query: last run, last error, counters, paused, pending wake-ups;
* continue-as-new when Temporal suggests it (or after ``max_iterations`` so an
  idle loop's history stays small), with the counters and pending wake-ups carried.

Errors of one reconcile (an activity that exhausted its retries) are recorded
in the status and the loop goes on: a controller never dies of a bad tick.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

MAX_PENDING_REASONS = 32  # coalescing bound: reasons are for humans, not a queue


class LoopCarry(BaseModel):
    """Loop state that survives continue-as-new."""

    runs: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    generation: int = 0  # how many times this loop continued-as-new
    paused: bool = False
    pause_reason: str | None = None
    pending: list[str] = Field(default_factory=list)
    last_run_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_reasons: list[str] = Field(default_factory=list)
    last_result: dict[str, Any] = Field(default_factory=dict)


class LoopStatus(LoopCarry):
    """What the ``status`` query answers."""

    workflow_id: str
    interval_seconds: float
    iterations_this_run: int
    details: dict[str, Any] = Field(default_factory=dict)


class LoopActionRequest(BaseModel):
    """An operator's ``pause`` / ``resume`` (or ``sync``) Workflow Update."""

    reason: str
    by: str = "operator"


class LoopActionResult(BaseModel):
    """What a loop's update did: the loop's state after it, and a sentence."""

    workflow_id: str
    action: Literal["pause", "resume", "sync"]
    paused: bool
    message: str
    result: dict[str, Any] = Field(default_factory=dict)  # sync: the reconcile's summary
    error: str | None = None  # sync: why the reconcile failed


def loop_refusal(
    workflow_id: str, action: str, paused: bool, pause_reason: str | None
) -> str | None:
    """Why ``action`` on a loop in this state is refused (None: it is not)."""
    if action == "pause" and paused:
        return f"loop {workflow_id} is already paused ({pause_reason or 'no reason given'})"
    if action == "resume" and not paused:
        return f"loop {workflow_id} is not paused"
    if action == "sync" and paused:
        return f"loop {workflow_id} is paused ({pause_reason}); resume it first"
    return None


class LoopSettings(BaseModel):
    interval_seconds: float = 30.0
    jitter_seconds: float = 0.0
    max_iterations: int = 200  # per run, before continue-as-new
    run_immediately: bool = True  # reconcile once at start, before the first tick


class ControlLoopWorkflow:
    """Base class: signals, query and the loop itself. See the module docstring."""

    def __init__(self) -> None:
        self.loop = LoopCarry()
        self.settings = LoopSettings()
        self._iterations = 0
        # One reconcile at a time, whether the loop or an update handler runs it.
        self._reconcile_lock = asyncio.Lock()

    # ------------------------------------------------------------- overridables
    async def reconcile(self, reasons: list[str]) -> dict[str, Any]:
        """Observe, plan and act once. Return a small JSON-able summary."""
        raise NotImplementedError

    def continue_as_new_args(self) -> list[Any]:
        """Arguments for the next run; must carry ``self.loop``."""
        raise NotImplementedError

    def status_details(self) -> dict[str, Any]:
        """Loop-specific part of the ``status`` query."""
        return {}

    def interval(self) -> timedelta:
        """Tick interval; a subclass may derive it from its policy."""
        return timedelta(seconds=self.settings.interval_seconds)

    # ----------------------------------------------------------------- handlers
    @workflow.signal
    def wake(self, reason: str = "wake") -> None:
        """Ask for a reconcile as soon as possible (coalesced)."""
        self.request(reason)

    @workflow.signal
    def pause(self, reason: str = "paused by operator") -> None:
        self.loop.paused = True
        self.loop.pause_reason = reason

    @workflow.signal
    def resume(self) -> None:
        self.loop.paused = False
        self.loop.pause_reason = None

    @workflow.update(name="pause")
    async def pause_update(self, request: LoopActionRequest) -> LoopActionResult:
        self.loop.paused = True
        self.loop.pause_reason = f"{request.reason} (by {request.by})"
        async with self._reconcile_lock:  # the reconcile in flight, if any, finishes first
            pass
        return self._answer("pause", "paused: no reconcile runs until it is resumed")

    @pause_update.validator
    def _validate_pause(self, request: LoopActionRequest) -> None:
        self._validate_action("pause", request)

    @workflow.update(name="resume")
    async def resume_update(self, request: LoopActionRequest) -> LoopActionResult:
        was = self.loop.pause_reason
        self.loop.paused = False
        self.loop.pause_reason = None
        return self._answer("resume", f"resumed (was paused: {was})")

    @resume_update.validator
    def _validate_resume(self, request: LoopActionRequest) -> None:
        self._validate_action("resume", request)

    def _validate_action(self, action: str, request: LoopActionRequest) -> None:
        if not request.reason.strip():
            raise ValueError("a reason is required")
        refusal = loop_refusal(
            workflow.info().workflow_id, action, self.loop.paused, self.loop.pause_reason
        )
        if refusal is not None:
            raise ValueError(refusal)

    def _answer(self, action: Literal["pause", "resume", "sync"], message: str) -> LoopActionResult:
        return LoopActionResult(
            workflow_id=workflow.info().workflow_id,
            action=action,
            paused=self.loop.paused,
            message=f"loop {workflow.info().workflow_id} {message}",
        )

    async def reconcile_now(self, reasons: list[str]) -> LoopActionResult:
        """Reconcile in an update handler, after any in flight, and answer its outcome."""
        await self._reconcile_once(reasons)  # returns with no other reconcile run since
        answer = self._answer("sync", "reconciled")
        if self.loop.last_error is not None:
            answer.error = self.loop.last_error
            answer.message = f"loop {workflow.info().workflow_id} reconcile failed"
        else:
            answer.result = self.loop.last_result
        return answer

    @workflow.query
    def status(self) -> LoopStatus:
        return LoopStatus(
            **self.loop.model_dump(),
            workflow_id=workflow.info().workflow_id,
            interval_seconds=self.interval().total_seconds(),
            iterations_this_run=self._iterations,
            details=self.status_details(),
        )

    def request(self, reason: str) -> None:
        if reason not in self.loop.pending and len(self.loop.pending) < MAX_PENDING_REASONS:
            self.loop.pending.append(reason)

    # --------------------------------------------------------------------- loop
    async def run_loop(self, carry: LoopCarry | None, settings: LoopSettings) -> None:
        if carry is not None:
            self.loop = carry
        self.settings = settings
        first = settings.run_immediately and carry is None
        while True:
            if not first and not self.loop.pending:
                await self._sleep_until_tick_or_wake()
            first = False
            if self.loop.paused:
                await workflow.wait_condition(lambda: not self.loop.paused)
            reasons = self.loop.pending or ["tick"]
            self.loop.pending = []
            await self._reconcile_once(reasons)
            self._iterations += 1
            if (
                workflow.info().is_continue_as_new_suggested()
                or self._iterations >= self.settings.max_iterations
            ):
                await workflow.wait_condition(workflow.all_handlers_finished)
                self.loop.generation += 1
                workflow.continue_as_new(args=self.continue_as_new_args())

    async def _sleep_until_tick_or_wake(self) -> None:
        timeout = self.interval().total_seconds()
        if self.settings.jitter_seconds > 0:
            timeout += workflow.random().uniform(0, self.settings.jitter_seconds)
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: bool(self.loop.pending), timeout=timeout)

    async def _reconcile_once(self, reasons: list[str]) -> None:
        # One at a time, the loop's or an update handler's. Uncontended (always, without
        # updates) the lock takes no step, so recorded histories replay unchanged.
        async with self._reconcile_lock:
            now = workflow.now()
            self.loop.last_run_at = now
            self.loop.last_reasons = reasons
            try:
                result = await self.reconcile(reasons)
            except (ActivityError, ChildWorkflowError, ApplicationError) as err:
                self.loop.errors += 1
                self.loop.consecutive_errors += 1
                self.loop.last_error = _describe(err)
                workflow.logger.warning("reconcile failed: %s", self.loop.last_error)
                return
            self.loop.runs += 1
            self.loop.consecutive_errors = 0
            self.loop.last_error = None
            self.loop.last_success_at = now
            self.loop.last_result = result


def _describe(err: BaseException) -> str:
    parts = [str(err)]
    cause = err.__cause__
    while cause is not None:
        parts.append(str(cause))
        cause = cause.__cause__
    return ": ".join(p for p in parts if p)
