"""The identity of one activity's side effect, the same in every retry of it.

Temporal keeps an activity's id across its attempts, and a workflow run never reuses
one: ``<workflow id>/<run id>/<activity id>`` names one scheduled side effect (one
autoscale decision's commit, one lifecycle step's commit). A retry looks for it to
tell "my earlier attempt did this" from "someone else did".
"""

from __future__ import annotations

from temporalio import activity


def operation_id() -> str | None:
    """This activity's operation id; None outside an activity (the CLI) or without a workflow."""
    if not activity.in_activity():
        return None
    info = activity.info()
    if not info.workflow_id:
        return None
    return f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"
