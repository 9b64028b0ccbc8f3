"""CLI: ``xplane sync --once``: one GitOps sync, the same code path as the worker's activity.

Exit codes: 0 applied or unchanged, 1 the branch head is invalid (each issue on
stderr; the previous revision stays in force), 2 the repo cannot be fetched.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from xplane.gitops.repo import RepoError
from xplane.gitops.sync import SyncResult, sync_once
from xplane.store.db import db_url_from_env, make_engine, make_sessionmaker
from xplane.store.migrate import upgrade


class Output(StrEnum):
    text = "text"
    json = "json"


def sync(
    once: bool = typer.Option(False, "--once", help="Sync once and exit."),
    repo: str = typer.Option(
        ..., "--repo", envvar="XPLANE_CONFIG_REPO", help="Config repo: a path or a git URL."
    ),
    branch: str = typer.Option("main", "--branch", help="Branch to apply."),
    db: str | None = typer.Option(
        None, "--db", envvar="XPLANE_DB_URL", help="Database URL (default: local SQLite)."
    ),
    workdir: Path = typer.Option(
        Path(".xplane/gitops"),
        "--workdir",
        envvar="XPLANE_GITOPS_WORKDIR",
        help="Where clones of the config repo are cached.",
    ),
    output: Output = typer.Option(Output.text, "--output", "-o", help="text or json."),
) -> None:
    """Pull the config repo, validate it, and make it the current config if it is new."""
    if not once:
        # The continuous loop is the GitOpsSync workflow (durable, signalled): `xplane worker`.
        raise typer.BadParameter(
            "only --once is supported here; the worker syncs continuously", param_hint="--once"
        )
    url = db_url_from_env(db)
    upgrade(url)
    engine = make_engine(url)
    try:
        result = sync_once(make_sessionmaker(engine), repo, branch, workdir)
    except RepoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        engine.dispose()
    _print(result, output)
    if not result.ok:
        raise typer.Exit(code=1)


def _print(result: SyncResult, output: Output) -> None:
    if output is Output.json:
        typer.echo(result.model_dump_json(indent=2))
        return
    typer.echo(f"{result.status.value}: {result.message}")
    for issue in result.issues:
        typer.echo(str(issue), err=True)


def register(root: typer.Typer) -> None:
    """Attach ``xplane sync`` to the root app."""
    root.command("sync")(sync)
