"""A minimal control loop for testing the building block (kept import-light for the sandbox)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import activity, workflow

from workflows.control_loop import ControlLoopWorkflow, LoopCarry, LoopSettings


class CounterParams(BaseModel):
    settings: LoopSettings = Field(default_factory=LoopSettings)
    loop: LoopCarry | None = None
    fail_on: list[int] = Field(default_factory=list)  # reconcile numbers whose activity fails


@activity.defn(name="count_reconcile")
async def count_reconcile(n: int, fail: bool) -> int:
    if fail:
        from temporalio.exceptions import ApplicationError

        raise ApplicationError(f"reconcile {n} failed on purpose", non_retryable=True)
    return n


@workflow.defn(name="CounterLoopWorkflow")
class CounterLoopWorkflow(ControlLoopWorkflow):
    def __init__(self) -> None:
        super().__init__()
        self.params = CounterParams()

    @workflow.run
    async def run(self, params: CounterParams) -> None:
        self.params = params
        await self.run_loop(params.loop, params.settings)

    @workflow.signal
    def poke(self, why: str) -> None:
        self.request(why)

    async def reconcile(self, reasons: list[str]) -> dict[str, Any]:
        n = self.loop.runs + self.loop.errors + 1
        await workflow.execute_activity(
            count_reconcile,
            args=[n, n in self.params.fail_on],
            start_to_close_timeout=timedelta(seconds=10),
        )
        return {"n": n, "reasons": reasons}

    def continue_as_new_args(self) -> list[Any]:
        return [self.params.model_copy(update={"loop": self.loop})]
