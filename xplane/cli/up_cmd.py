"""CLI: ``xplane up``: the embedded default, one command."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer


def register(root: typer.Typer) -> None:
    @root.command("up")
    def up(
        data_dir: Path = typer.Option(Path(".xplane"), "--data-dir", help="state directory"),
        repo: str = typer.Option(
            None, "--repo", help="config repo (path or URL); default: seeded from the example"
        ),
        temporal_port: int = typer.Option(7233, help="Temporal frontend port (0 = any free)"),
        ui_port: int = typer.Option(8233, help="Temporal web UI port (0 = any free)"),
        sync_interval: float = typer.Option(15.0, help="seconds between GitOps syncs"),
    ) -> None:
        """Start Temporal, the worker and the loops locally; Ctrl-C stops them all."""
        from xplane.up import UpOptions, run_up

        options = UpOptions(
            data_dir=data_dir,
            repo=repo,
            temporal_port=temporal_port,
            ui_port=ui_port,
            sync_interval_seconds=sync_interval,
        )

        def say(line: str) -> None:
            typer.echo(line, err=False)

        asyncio.run(run_up(options, say))
