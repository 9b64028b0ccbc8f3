"""Recording workflow histories for the replay test (tests/test_replay.py).

Set ``XPLANE_RECORD_HISTORIES=1`` and run the lifecycle tests to refresh the
recorded histories in ``tests/histories/`` (commit them with the change that
made them). Normal runs record nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from temporalio.client import WorkflowHandle

HISTORIES = Path(__file__).resolve().parent.parent / "histories"


async def keep(handle: WorkflowHandle, name: str) -> None:
    if not os.environ.get("XPLANE_RECORD_HISTORIES"):
        return
    history = await handle.fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())
