"""CLI: ``xplane config validate DIR`` and ``xplane config show DIR``.

Both read a config tree (``gtm/``, ``autoscale/``, ``regions/``) from a directory,
e.g. a checkout of the config repo, without any server.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from xplane.config.errors import ConfigError
from xplane.config.loader import load_config
from xplane.config.models import ConfigTree

app = typer.Typer(help="Check and inspect a GitOps config tree.", no_args_is_help=True)

ConfigDir = Annotated[
    Path,
    typer.Argument(
        exists=True, file_okay=False, metavar="DIR", help="Root with gtm/, autoscale/, regions/."
    ),
]


class Output(StrEnum):
    json = "json"
    yaml = "yaml"


def _load_or_exit(root: Path) -> ConfigTree:
    try:
        return load_config(root)
    except ConfigError as exc:
        for issue in exc.issues:
            typer.echo(str(issue), err=True)
        raise typer.Exit(code=1) from None


@app.command("validate")
def validate(root: ConfigDir) -> None:
    """Exit 0 with a one-line summary, or 1 with one line per problem on stderr."""
    tree = _load_or_exit(root)
    typer.echo(f"valid: {tree.summary()}")


@app.command("show")
def show(
    root: ConfigDir,
    output: Annotated[Output, typer.Option("--output", "-o", help="json or yaml.")] = Output.yaml,
) -> None:
    """Print the normalised tree: defaults filled, aliases resolved, groups expanded."""
    data = _load_or_exit(root).model_dump(mode="json", by_alias=True)
    if output is Output.json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(yaml.dump(data, Dumper=_FlowListDumper, sort_keys=False), nl=False)


class _FlowListDumper(yaml.SafeDumper):
    """Lists of scalars on one line (``expected_status`` would otherwise take 200 lines)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(x, dict | list) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowListDumper.add_representer(list, _represent_list)


def register(root: typer.Typer) -> None:
    """Attach ``xplane config ...`` to the root app."""
    root.add_typer(app, name="config")
