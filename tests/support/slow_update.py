"""A loop whose ``pause`` update takes as long as the test wants (import-light for the
sandbox): the handler waits for the ``release`` signal before it answers."""

from __future__ import annotations

from temporalio import workflow

from workflows.control_loop import LoopActionRequest, LoopActionResult


@workflow.defn(name="SlowUpdateWorkflow")
class SlowUpdateWorkflow:
    def __init__(self) -> None:
        self.released = False
        self.paused = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)  # until the test terminates it

    @workflow.signal
    def release(self) -> None:
        self.released = True

    @workflow.update
    async def pause(self, request: LoopActionRequest) -> LoopActionResult:
        await workflow.wait_condition(lambda: self.released)
        self.paused = True
        return LoopActionResult(
            workflow_id=workflow.info().workflow_id,
            action="pause",
            paused=True,
            message=f"paused at last: {request.reason}",
        )

    @pause.validator
    def _validate_pause(self, request: LoopActionRequest) -> None:
        if self.paused:
            raise ValueError("already paused")
