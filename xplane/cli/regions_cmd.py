"""CLI: ``xplane regions retire NAME``: signal the region's lifecycle workflow."""

from __future__ import annotations

import asyncio

import typer

app = typer.Typer(help="Region lifecycles (through Temporal).", no_args_is_help=True)


@app.command("retire")
def retire(
    name: str = typer.Argument(..., help="region name"),
    temporal: str = typer.Option(
        "127.0.0.1:7233", "--temporal", envvar="XPLANE_TEMPORAL_ADDRESS", help="host:port"
    ),
) -> None:
    """GTM weight to 0, drain, pool to 0 via Git, remove the pool (also: `retired: true`)."""
    from workflows.region_lifecycle import RegionLifecycleWorkflow
    from xplane import ids
    from xplane.temporal.client import connect

    async def send() -> None:
        client = await connect(temporal)
        await client.get_workflow_handle(ids.region_id(name)).signal(
            RegionLifecycleWorkflow.retire, "operator"
        )

    try:
        asyncio.run(send())
    except Exception as err:
        typer.echo(f"error: region-{name}: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"region-{name}: retire requested; follow it with `xplane events --region {name}`")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="regions")
