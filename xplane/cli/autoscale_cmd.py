"""CLI: ``xplane autoscale plan`` (what-if, no server) and ``xplane autoscale commit`` (operators).

``plan`` reads a config tree and a WORLD.json (:class:`xplane.domain.WorldSnapshot`)
and prints each region's current and desired node count with the reason.
``commit`` sets one region's ``node_count`` in the infra repo, exactly as the
autoscaler does (same message format and author), for manual overrides.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from xplane.autoscale.what_if import AutoscaleWhatIf, what_if
from xplane.domain import WorldSnapshot

app = typer.Typer(help="Autoscaler: what-if plans and manual node-count commits.")


class Output(StrEnum):
    json = "json"
    table = "table"


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code=1)


def _load_world(path: Path) -> WorldSnapshot:
    try:
        return WorldSnapshot.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise _fail(f"{path}: cannot read: {exc.strerror}") from None
    except ValidationError as exc:
        lines = [f"{path}: not a valid world snapshot:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(file)"
            lines.append(f"  {where}: {err['msg']}")
        raise _fail("\n".join(lines)) from None


def _print_table(result: AutoscaleWhatIf) -> None:
    table = Table("service", "region", "current", "desired", "reason")
    for service, regions in result.services.items():
        for region, line in regions.items():
            change = str(line.desired)
            if line.desired != line.current:
                change += " (+)" if line.desired > line.current else " (-)"
            table.add_row(service, region, str(line.current), change, line.reason)
    Console(width=200).print(table)


@app.command("plan")
def plan_cmd(
    config: Annotated[
        Path, typer.Option("--config", exists=True, file_okay=False, help="Config tree root.")
    ],
    world: Annotated[
        Path, typer.Option("--world", exists=True, dir_okay=False, help="WORLD.json snapshot.")
    ],
    output: Annotated[Output, typer.Option("--output", "-o", help="json or table.")] = Output.table,
) -> None:
    """What the autoscaler would decide for every region, given the world (changes nothing)."""
    from xplane.config.errors import ConfigError
    from xplane.config.loader import load_config

    try:
        tree = load_config(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    result = what_if(tree, _load_world(world))
    if output is Output.json:
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        _print_table(result)


@app.command("commit")
def commit_cmd(
    repo: Annotated[str, typer.Option("--repo", help="Infra repo: local path or URL.")],
    region: Annotated[str, typer.Option("--region", help="Region whose pool to set.")],
    count: Annotated[int, typer.Option("--count", min=0, help="New node_count.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (commit body).")] = None,
    branch: Annotated[str, typer.Option("--branch", help="Branch to push to.")] = "main",
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Clone cache (default ~/.cache/xplane).")
    ] = None,
    create: Annotated[bool, typer.Option("--create", help="Create a missing tfvars.")] = False,
) -> None:
    """Set infra/node-pool/<region>.tfvars node_count to COUNT, commit and push."""
    from xplane.gitops.infra_repo import RepoError, commit_node_count, default_workdir, redact

    reason_text = reason or f"manual: node_count set to {count} by an operator"
    try:
        result = commit_node_count(
            repo,
            region,
            count,
            reason_text,
            {},
            workdir or default_workdir(),
            branch,
            create=create,
        )
    except RepoError as exc:
        raise _fail(f"error: {exc}") from None
    where = redact(repo)
    if result.status == "unchanged":
        typer.echo(f"unchanged: {result.path} already has node_count = {count} ({where})")
    else:
        before = "-" if result.previous_count is None else result.previous_count
        typer.echo(f"committed {result.sha[:12]}: {result.path} {before} -> {count} ({where})")


def register(root: typer.Typer) -> None:
    """Attach ``xplane autoscale`` to the root app."""
    root.add_typer(app, name="autoscale")
