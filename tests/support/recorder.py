"""A workflow that records every signal it receives: stands in for a loop under test."""

from __future__ import annotations

from collections.abc import Sequence

from temporalio import workflow
from temporalio.common import RawValue


@workflow.defn(name="RecorderWorkflow")
class RecorderWorkflow:
    def __init__(self) -> None:
        self.received: list[str] = []
        self.done = False

    @workflow.run
    async def run(self) -> list[str]:
        await workflow.wait_condition(lambda: self.done)
        return self.received

    @workflow.signal(dynamic=True)
    def record(self, name: str, args: Sequence[RawValue]) -> None:
        payload = workflow.payload_converter().from_payload(args[0].payload) if args else None
        self.received.append(f"{name}:{payload}" if payload is not None else name)

    @workflow.signal
    def finish(self) -> None:
        self.done = True

    @workflow.query
    def signals(self) -> list[str]:
        return self.received


@workflow.defn(dynamic=True)
class AnyWorkflowRecorder(RecorderWorkflow):
    """Stands in for every workflow type the worker doesn't register (signal-with-start targets)."""

    @workflow.run
    async def run(self, args: Sequence[RawValue]) -> list[str]:  # type: ignore[override]
        await workflow.wait_condition(lambda: self.done)
        return self.received
