"""Recorded histories of the lifecycle workflows replay cleanly against the current code.

A change that would break running workflows (a new activity call where there was
none, reordered commands) fails here instead of in production. Refresh the
recordings deliberately (see tests/support/histories.py) when a change is
versioned with ``workflow.patched``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workers.main import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_there_are_recorded_histories_of_each_lifecycle() -> None:
    names = {p.stem for p in HISTORIES}
    assert any(n.startswith("node_lifecycle") for n in names)
    assert any(n.startswith("region_lifecycle") for n in names)


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


def test_every_update_handler_is_in_a_recorded_history() -> None:
    """Each operator action (a Workflow Update) was accepted in some recording, so its
    handler replays here: a change to what one does is caught like any other."""
    accepted: set[tuple[str, str]] = set()
    for path in HISTORIES:
        history = json.loads(path.read_text())
        events = history["events"]
        kind = events[0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]
        for event in events:
            attributes = event.get("workflowExecutionUpdateAcceptedEventAttributes")
            if attributes:
                accepted.add((kind, attributes["acceptedRequest"]["input"]["name"]))
    defined = {
        (defn.name, update)
        for defn in (workflow._Definition.must_from_class(w) for w in WORKFLOWS)
        for update in defn.updates
        if defn.name is not None and update is not None
    }
    loops = {"pause", "resume"}  # the control loop's own, inherited by every loop
    missing = {
        (kind, name)
        for kind, name in defined - accepted
        if not (name in loops and any(n == name for _, n in accepted))
    }
    assert not missing, f"no recorded history accepts these updates: {sorted(missing)}"
