"""The ``xplane`` command: one Typer app, each command group in its own module."""

from __future__ import annotations

import typer

from xplane.cli import (
    agent_cmd,
    api_cmd,
    autoscale_cmd,
    config_cmd,
    demo_cmd,
    events_cmd,
    gtm_cmd,
    infra_cmd,
    nodes_cmd,
    regions_cmd,
    status_cmd,
    sync_cmd,
    up_cmd,
    worker_cmd,
)

app = typer.Typer(
    name="xplane",
    help="XPlane: a cloud-neutral control plane on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """XPlane: a cloud-neutral control plane on Temporal."""


for module in (
    config_cmd,
    sync_cmd,
    nodes_cmd,
    api_cmd,
    agent_cmd,
    gtm_cmd,
    autoscale_cmd,
    infra_cmd,
    events_cmd,
    worker_cmd,
    up_cmd,
    status_cmd,
    demo_cmd,
    regions_cmd,
):
    module.register(app)


@app.command("version")
def version() -> None:
    """Print XPlane's version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("xplane"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
