"""CLI: ``xplane regions retire SERVICE REGION --reason R`` (admin, through the API, so
it is authorized, audited and answered by the region's lifecycle workflow); ``retry``
lives in :mod:`xplane.cli.actions_cmd`."""

from __future__ import annotations

import typer

from xplane.cli.nodes_cmd import ServerOption

app = typer.Typer(help="Region lifecycles (through the API).", no_args_is_help=True)


@app.command("retire")
def retire(
    service: str = typer.Argument(..., help="the service the region serves"),
    name: str = typer.Argument(..., help="region name"),
    reason: str = typer.Option(..., "--reason", help="why (recorded with the action)"),
    server: str | None = ServerOption,
) -> None:
    """GTM weight to 0, drain, pool to 0 via Git, remove the pool (also: `retired: true`)."""
    from xplane.cli.actions_cmd import act

    answer = act(server, f"/regions/{service}/{name}/retire", {"reason": reason})
    typer.echo(f"{answer['message']}; follow it with `xplane events --region {name}`")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="regions")
