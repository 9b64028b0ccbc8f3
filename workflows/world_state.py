"""WorldStateWorkflow (ID ``world-state``): turn node status transitions into signals.

Every few seconds one activity compares each node's derived status (fresh
heartbeat? probes ok? drain requested?) with the status last acted on, and
signals only the changes to ``node-<id>`` and ``gtm-<service>``. Its own
history grows by one activity per tick whatever the number of nodes, and it
continues-as-new before Temporal's limits.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow

from workflows import policies
from workflows.control_loop import ControlLoopWorkflow, LoopCarry, LoopSettings
from xplane import ids

with workflow.unsafe.imports_passed_through():
    from activities.nodes import NodeActivities, ScanRequest, ScanResult


class WorldStateParams(BaseModel):
    # No heartbeat timeout here: the scan activity judges with the worker's setting
    # (xplane/heartbeat.py), the one every reader uses. An old run's field is ignored.
    settings: LoopSettings = Field(default_factory=lambda: LoopSettings(interval_seconds=2))
    loop: LoopCarry | None = None
    transitions_total: int = 0


@workflow.defn(name=ids.WORLD_STATE)
class WorldStateWorkflow(ControlLoopWorkflow):
    def __init__(self) -> None:
        super().__init__()
        self.params = WorldStateParams()
        self.last_nodes = 0
        self.heartbeat_timeout_seconds: float | None = None
        self.gate: dict[str, Any] = {}
        self.gate_held: list[str] = []
        self.gate_held_count = 0

    @workflow.run
    async def run(self, params: WorldStateParams) -> None:
        self.params = params
        await self.run_loop(params.loop, params.settings)

    async def reconcile(self, reasons: list[str]) -> dict[str, Any]:
        result: ScanResult = await workflow.execute_activity_method(
            NodeActivities.scan_node_transitions,
            ScanRequest(now=workflow.now()),
            start_to_close_timeout=policies.DB_TIMEOUT,
            heartbeat_timeout=policies.HEARTBEAT_TIMEOUT,
            retry_policy=policies.DB,
        )
        self.last_nodes = result.nodes
        self.heartbeat_timeout_seconds = result.heartbeat_timeout_seconds
        self.gate, self.gate_held, self.gate_held_count = (
            result.gate,
            result.held,
            result.held_count,
        )
        self.params.transitions_total += len(result.transitions)
        return {
            "nodes": result.nodes,
            "transitions": [f"{t.node_id}:{t.status.value}" for t in result.transitions][:20],
        }

    def continue_as_new_args(self) -> list[Any]:
        return [self.params.model_copy(update={"loop": self.loop})]

    def status_details(self) -> dict[str, Any]:
        return {
            "nodes": self.last_nodes,
            "transitions_total": self.params.transitions_total,
            "heartbeat_timeout_seconds": self.heartbeat_timeout_seconds,
            # The self-health gate as of the last scan, and down transitions it held back.
            "gate": self.gate,
            "gate_held": self.gate_held,
            "gate_held_count": self.gate_held_count,
        }
