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
        api_port: int = typer.Option(8080, help="XPlane API port (0 = any free)"),
        pdns_api_port: int = typer.Option(8081, help="PowerDNS API port (the example's)"),
        dns_port: int = typer.Option(5354, help="PowerDNS DNS port (UDP and TCP)"),
        node_health_port: int = typer.Option(
            18080, help="port of each local node's /healthz on its own address (0 = any free)"
        ),
        sync_interval: float = typer.Option(15.0, help="seconds between GitOps syncs"),
    ) -> None:
        """Start Temporal, the worker and the loops locally; Ctrl-C stops them all."""
        from xplane.up import UpOptions, run_up

        options = UpOptions(
            data_dir=data_dir,
            repo=repo,
            temporal_port=temporal_port,
            ui_port=ui_port,
            api_port=api_port,
            pdns_api_port=pdns_api_port,
            dns_port=dns_port,
            node_health_port=node_health_port,
            sync_interval_seconds=sync_interval,
        )

        def say(line: str) -> None:
            typer.echo(line, err=False)

        from xplane.observability.logging import configure_logging_from_env

        # Logs (JSON) go to a file: the terminal shows progress lines.
        data_dir.mkdir(parents=True, exist_ok=True)
        configure_logging_from_env(stream=open(data_dir / "xplane.log", "a"))  # noqa: SIM115

        from xplane.procs import PortBusy
        from xplane.up import UpError

        try:
            asyncio.run(run_up(options, say))
        except (UpError, PortBusy) as exc:  # a one-line reason, not a traceback
            typer.echo(f"xplane up: {exc}", err=True)
            raise typer.Exit(1) from None
