"""CLI: ``xplane gtm plan``, what the GTM loop would publish for an imagined world.

Reads a config tree and a ``WORLD.json`` (nodes and pools), runs the same pure weight
function as the loop (no ramp history: target weights) and prints JSON or a table.
Exit 2 on unusable input (config errors, a bad world file, an unknown service).
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from xplane.config.errors import ConfigError
from xplane.config.loader import load_config
from xplane.gtm.weights import ServiceWeights
from xplane.gtm.what_if import WhatIfError, load_world, weights_for_world, weights_to_json
from xplane.heartbeat import HeartbeatSettings

app = typer.Typer(help="Global traffic management: weights and DNS.", no_args_is_help=True)

INPUT_ERROR = 2


class Output(StrEnum):
    json = "json"
    table = "table"


def _fail(lines: list[str]) -> typer.Exit:
    for line in lines:
        typer.echo(line, err=True)
    return typer.Exit(code=INPUT_ERROR)


@app.command("plan")
def plan(
    config: Annotated[
        Path,
        typer.Option(
            "--config", file_okay=False, metavar="DIR", help="Config tree (gtm/, regions/, ...)."
        ),
    ],
    world: Annotated[
        Path, typer.Option("--world", dir_okay=False, metavar="WORLD.json", help="Nodes, pools.")
    ],
    service: Annotated[
        str | None, typer.Option("--service", "-s", help="Only this service.")
    ] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="json or table.")] = Output.table,
) -> None:
    """Print each region's weight and the records to publish, without touching DNS."""
    try:
        tree = load_config(config)
    except ConfigError as exc:
        raise _fail([str(issue) for issue in exc.issues]) from None
    try:
        timeout_s = HeartbeatSettings.from_env().timeout_seconds
        services = weights_for_world(
            tree, load_world(world), service, heartbeat_timeout_s=timeout_s
        )
    except WhatIfError as exc:
        raise _fail(str(exc).splitlines()) from None
    if output is Output.json:
        typer.echo(json.dumps(weights_to_json(services), indent=2))
    else:
        _print_tables(services)


def _print_tables(services: dict[str, ServiceWeights]) -> None:
    console = Console()
    for name, weights in services.items():
        title = f"{name}" + (
            f"  [bold red]FAIL OPEN[/]: {escape(weights.reason)}" if weights.fail_open else ""
        )
        table = Table(title=title, title_justify="left")
        for column in ("region", "base", "health", "ready f.", "latency f.", "weight", "ready"):
            table.add_column(
                column, justify="left" if column == "region" else "right", no_wrap=True
            )
        table.add_column("reason")
        for region, rw in weights.regions.items():
            table.add_row(
                region + (" (fallback)" if rw.fallback else ""),
                f"{rw.base_weight:g}",
                f"{rw.health_ratio:.2f}",
                f"{rw.ready_nodes_factor:.2f}",
                f"{rw.latency_factor:.2f}",
                f"[bold]{rw.effective_weight:.2f}[/]",
                f"{rw.ready_nodes}/{rw.registered_nodes}",
                escape(rw.reason),
            )
        console.print(table)
        records = Table(title=f"{name}: records", title_justify="left")
        for column in ("address", "region", "node", "weight"):
            records.add_column(column, justify="right" if column == "weight" else "left")
        for rec in weights.records:
            records.add_row(
                escape(rec.address), rec.region, escape(rec.node_id), f"{rec.weight:.3f}"
            )
        console.print(records)


@app.command("apply")
def apply(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", file_okay=False, metavar="DIR", help="Config tree (else the store)."
        ),
    ] = None,
    world: Annotated[
        Path | None,
        typer.Option("--world", dir_okay=False, metavar="WORLD.json", help="Else the live store."),
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", envvar="XPLANE_DB_URL", help="Store for live input.")
    ] = None,
    service: Annotated[str | None, typer.Option("--service", "-s")] = None,
    doit: Annotated[bool, typer.Option("--doit", help="Write to DNS (default: dry run).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Pass the safety threshold.")] = False,
    takeover: Annotated[
        bool, typer.Option("--takeover", help="Adopt records XPlane does not own.")
    ] = False,
) -> None:
    """Show each provider's DNS change plan; write it only with --doit (as octoDNS does)."""
    from xplane.cli.gtm_live import live_inputs
    from xplane.dns.factory import make_provider
    from xplane.dns.plan import DnsError, desired_for_provider

    try:
        timeout = HeartbeatSettings.from_env().timeout
        if config is not None and world is not None:
            tree, snapshot = load_config(config), load_world(world)
        else:
            tree, snapshot = live_inputs(db, timeout)
        services = weights_for_world(
            tree, snapshot, service, heartbeat_timeout_s=timeout.total_seconds()
        )
    except ConfigError as exc:
        raise _fail([str(issue) for issue in exc.issues]) from None
    except (WhatIfError, LookupError) as exc:
        raise _fail(str(exc).splitlines()) from None
    failed = False
    for name, weights in services.items():
        policy = tree.gtm[name]
        for index, provider_config in enumerate(policy.dns_providers()):
            key = f"{name} {index}:{provider_config.provider}"
            desired = desired_for_provider(policy, provider_config, weights)
            try:
                provider = make_provider(provider_config)
                dns_plan = provider.plan(desired, takeover=takeover)
                typer.echo(f"{key}: {dns_plan.summary()}")
                for change in dns_plan.changes:
                    typer.echo(
                        f"  {change.action:6} {change.key}: {change.before} -> {change.after}"
                    )
                if doit and not dns_plan.empty:
                    result = provider.apply(dns_plan, force=force)
                    typer.echo(f"  applied: {result.write_calls} write call(s)")
            except DnsError as exc:
                typer.echo(f"{key}: error: {exc}", err=True)
                failed = True
    if not doit:
        typer.echo("dry run: nothing written (use --doit to apply)")
    if failed:
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    """Attach ``xplane gtm ...`` to the root app (``apply`` is added by the GTM loop's owner)."""
    root.add_typer(app, name="gtm")
