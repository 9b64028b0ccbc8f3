"""CLI: ``xplane nodes list`` / ``xplane nodes drain ID`` against the API."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from xplane.api.client import ActionPendingError, AdminClient, ApiClientError
from xplane.cli.credentials import DEFAULT_SERVER, api_token, api_url

app = typer.Typer(help="Registered nodes (through the API).", no_args_is_help=True)

ServerOption = typer.Option(
    None, "--server", help=f"API URL (env XPLANE_API_URL, default {DEFAULT_SERVER})"
)
TokenOption = typer.Option(
    None,
    "--token",
    help="API token (prefer env XPLANE_TOKEN: a flag shows in ps); else XPLANE_ADMIN_TOKEN, "
    "else the stored `xplane login`",
)


def _client(server: str | None, token: str | None) -> AdminClient:
    url = api_url(server)
    return AdminClient(url, api_token(url, token))


def _fail(exc: Exception) -> typer.Exit:
    hint = ""
    if isinstance(exc, ApiClientError) and exc.status == 401:
        hint = " (pass --token, set XPLANE_TOKEN, or run `xplane login`)"
    typer.echo(f"error: {exc}{hint}", err=True)
    return typer.Exit(1)


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def nodes_table(nodes: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(nodes)} node(s)")
    for column in (
        "ID",
        "SERVICE",
        "REGION",
        "ADDRESS",
        "STATE",
        "STATUS",
        "CPU",
        "RTT ms",
        "ERR",
        "QPS",
        "PROBES",
        "HEARTBEAT",
    ):
        table.add_column(column, no_wrap=column in ("ID", "ADDRESS"))
    for n in nodes:
        probes = "-" if not n.get("probes_total") else f"{n['probes_ok']}/{n['probes_total']}"
        age = n.get("heartbeat_age_seconds")
        status = n["status"] + (" (drain requested)" if n.get("drain_requested") else "")
        table.add_row(
            n["id"],
            n["service"],
            n["region"],
            n["address"],
            n["state"],
            status,
            _num(n.get("cpu"), ".0%"),
            _num(n.get("rtt_ms"), ".1f"),
            _num(n.get("error_rate"), ".1%"),
            _num(n.get("qps"), ".1f"),
            probes,
            "never" if age is None else f"{age:.0f}s ago",
        )
    return table


@app.command("list")
def list_cmd(
    service: str | None = typer.Option(None, "--service"),
    region: str | None = typer.Option(None, "--region"),
    state: str | None = typer.Option(None, "--state", help="idle|warm|active|drain|delete"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
    server: str | None = ServerOption,
    token: str | None = TokenOption,
) -> None:
    """List registered nodes with their state, status and latest metrics."""
    try:
        with _client(server, token) as client:
            nodes = client.list_nodes(service=service, region=region, state=state)
    except Exception as exc:  # API errors and transport errors alike: one line, exit 1
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(nodes, indent=2))
    else:
        Console().print(nodes_table(nodes))


@app.command("drain")
def drain_cmd(
    node_id: str = typer.Argument(..., help="Node to drain"),
    reason: str = typer.Option("requested by operator", "--reason"),
    server: str | None = ServerOption,
    token: str | None = TokenOption,
) -> None:
    """Drain a node: out of DNS, then its agent is told to stop taking traffic.

    Answered by the node's lifecycle (a Workflow Update), or refused with its reason."""
    from xplane.cli.actions_cmd import _pending, action_wait

    try:
        with _client(server, token) as client:
            answer = client.action(f"/nodes/{node_id}/drain", {"reason": reason}, action_wait())
    except ActionPendingError as exc:
        raise _pending(exc) from None
    except Exception as exc:
        raise _fail(exc) from None
    typer.echo(answer["message"])


def register(root: typer.Typer) -> None:
    """Attach this module's commands to the root `xplane` app."""
    root.add_typer(app, name="nodes")
