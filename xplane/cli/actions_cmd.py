"""CLI: operator actions through the API, each answered by its workflow (or refused).

``xplane nodes undrain``, ``xplane loops pause|resume|sync``, ``xplane regions retry``,
``xplane gtm approve|reject`` (``xplane nodes drain`` and ``xplane gate close|open`` live
with their groups). Going through the API, every action is authorized and audited there.

The API waits on Temporal at most 5 s per request: an action the workflow has not
answered by then is pending (202). The CLI polls its result for up to ``--wait`` /
``XPLANE_ACTION_WAIT`` seconds (default 60); still running then, it prints the workflow
and update ids and exits 3, and ``xplane actions result WORKFLOW_ID UPDATE_ID`` prints
the result later.
"""

from __future__ import annotations

import json
import os
from typing import Any

import typer

from xplane.api.client import ACTION_WAIT_S, ActionPendingError
from xplane.cli import gtm_cmd, nodes_cmd, regions_cmd
from xplane.cli.nodes_cmd import ServerOption, _client, _fail

loops = typer.Typer(help="Control loops (through the API).", no_args_is_help=True)
actions = typer.Typer(help="Results of operator actions still running.", no_args_is_help=True)
ReasonOption = typer.Option(..., "--reason", help="why (recorded with the action)")
PENDING_EXIT_CODE = 3  # accepted (or sent), not answered yet: see `xplane actions result`


def action_wait() -> float:
    """How long an action polls a pending answer (``XPLANE_ACTION_WAIT``, seconds)."""
    try:
        return max(0.0, float(os.environ.get("XPLANE_ACTION_WAIT", ACTION_WAIT_S)))
    except ValueError:
        return ACTION_WAIT_S


def act(server: str | None, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST the action; print the error and exit 1 when refused or failed, exit 3 with
    the update's ids when the workflow has not answered within the wait."""
    try:
        with _client(server, None) as client:  # the token: XPLANE_TOKEN, or `xplane login`
            return client.action(path, body, wait=action_wait())
    except ActionPendingError as exc:
        raise _pending(exc) from None
    except Exception as exc:
        raise _fail(exc) from None


def _pending(exc: ActionPendingError) -> typer.Exit:
    typer.echo(str(exc))
    return typer.Exit(PENDING_EXIT_CODE)


@actions.command("result")
def result(
    workflow_id: str = typer.Argument(..., help="the workflow the action went to"),
    update_id: str = typer.Argument(..., help="the update id a pending answer named"),
    wait: float = typer.Option(ACTION_WAIT_S, "--wait", help="seconds to wait for it"),
    server: str | None = ServerOption,
) -> None:
    """Print the answer of an action that was still running (JSON); exit 3 if it still is."""
    try:
        with _client(server, None) as client:
            answer = client.action_result(workflow_id, update_id, wait=max(0.0, wait))
    except ActionPendingError as exc:
        raise _pending(exc) from None
    except Exception as exc:
        raise _fail(exc) from None
    if answer.get("message"):
        typer.echo(answer["message"])
    typer.echo(json.dumps(answer, indent=2, sort_keys=True))


def undrain(
    node_id: str = typer.Argument(..., help="Node to bring back"),
    reason: str = ReasonOption,
    server: str | None = ServerOption,
) -> None:
    """Withdraw a drain in time: the node comes back through warm when healthy."""
    typer.echo(act(server, f"/nodes/{node_id}/undrain", {"reason": reason})["message"])


@loops.command("pause")
def pause(
    workflow_id: str = typer.Argument(..., help="gtm-<service>, autoscale-<s>-<r>, ..."),
    reason: str = ReasonOption,
    server: str | None = ServerOption,
) -> None:
    """No reconcile until resumed (answered once the one in flight ended)."""
    typer.echo(act(server, f"/loops/{workflow_id}/pause", {"reason": reason})["message"])


@loops.command("resume")
def resume(
    workflow_id: str = typer.Argument(...),
    reason: str = ReasonOption,
    server: str | None = ServerOption,
) -> None:
    typer.echo(act(server, f"/loops/{workflow_id}/resume", {"reason": reason})["message"])


@loops.command("sync")
def sync(reason: str = ReasonOption, server: str | None = ServerOption) -> None:
    """Pull the config repo now (the gitops-sync loop) and print what the sync did."""
    answer = act(server, "/sync", {"reason": reason})
    typer.echo(answer["message"])
    if answer.get("error"):
        typer.echo(f"error: {answer['error']}", err=True)
        raise typer.Exit(1)
    result = answer.get("result") or {}
    typer.echo(f"{result.get('status')}: {result.get('message')} ({result.get('sha', '')[:12]})")


def retry(
    service: str = typer.Argument(...),
    region: str = typer.Argument(...),
    reason: str = ReasonOption,
    server: str | None = ServerOption,
) -> None:
    """Start a region's failed bootstrap again."""
    path = f"/regions/{service}/{region}/retry"
    typer.echo(act(server, path, {"reason": reason})["message"])


def _decision(
    verb: str,
    service: str,
    reason: str,
    provider: str | None,
    digest: str | None,
    server: str | None,
) -> None:
    body: dict[str, Any] = {"reason": reason}
    if provider:
        body["provider"] = provider
    if digest:
        body["digest"] = digest
    typer.echo(act(server, f"/gtm/{service}/plan/{verb}", body)["message"])


def approve(
    service: str = typer.Argument(...),
    reason: str = ReasonOption,
    provider: str | None = typer.Option(None, "--provider", help="e.g. 0:powerdns"),
    digest: str | None = typer.Option(None, "--digest", help="the held plan's, from status"),
    server: str | None = ServerOption,
) -> None:
    """Apply the DNS plan the safety threshold held, once (admin)."""
    _decision("approve", service, reason, provider, digest, server)


def reject(
    service: str = typer.Argument(...),
    reason: str = ReasonOption,
    provider: str | None = typer.Option(None, "--provider"),
    digest: str | None = typer.Option(None, "--digest"),
    server: str | None = ServerOption,
) -> None:
    """Drop the held DNS plan: DNS keeps its answer (admin)."""
    _decision("reject", service, reason, provider, digest, server)


def register(root: typer.Typer) -> None:
    """Attach the actions to their groups (``nodes``, ``regions``, ``gtm``) and ``loops``."""
    nodes_cmd.app.command("undrain")(undrain)
    regions_cmd.app.command("retry")(retry)
    gtm_cmd.app.command("approve")(approve)
    gtm_cmd.app.command("reject")(reject)
    root.add_typer(loops, name="loops")
    root.add_typer(actions, name="actions")
