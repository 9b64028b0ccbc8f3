"""CLI: ``xplane status [--watch]``: regions, nodes by state, weights, DNS, pending commits."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import typer


def register(root: typer.Typer) -> None:
    @root.command("status")
    def status(
        data_dir: Path = typer.Option(Path(".xplane"), "--data-dir", help="`xplane up` state"),
        db: str = typer.Option(None, "--db", envvar="XPLANE_DB_URL", help="database URL"),
        temporal: str = typer.Option(None, "--temporal", envvar="XPLANE_TEMPORAL_ADDRESS"),
        watch: bool = typer.Option(False, "--watch", "-w", help="refresh every 2 s"),
        output: str = typer.Option("table", "--output", "-o", help="table | json"),
    ) -> None:
        """What XPlane sees and does now (reads the store and Temporal)."""
        from rich.console import Console
        from rich.live import Live

        from xplane.status import NoStore, add_temporal, read_up_info, store_report
        from xplane.status_view import render

        up = read_up_info(data_dir)
        db_url = db or up.get("db_url") or f"sqlite:///{data_dir.resolve() / 'xplane.db'}"
        address = temporal or up.get("temporal_address")

        def collect():
            # `xplane up` runs with its own heartbeat setting: judge its store by it.
            up_timeout = up.get("heartbeat_timeout_seconds") if up.get("db_url") == db_url else None
            report = store_report(db_url, timedelta(seconds=up_timeout) if up_timeout else None)
            if up.get("api_url"):
                report.console = f"{up['api_url']}/ui"
            if address:
                try:
                    asyncio.run(add_temporal(report, address, up.get("temporal_ui")))
                except Exception as err:  # Temporal down: still show the store
                    report.workflows = []
                    report.temporal_ui = f"unreachable ({err.__class__.__name__})"
            return report

        try:
            first = collect()
        except NoStore as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        if output == "json":
            typer.echo(first.model_dump_json(indent=2))
            return
        console = Console()
        if not watch:
            console.print(render(first))
            return
        with Live(render(first), console=console, refresh_per_second=1) as live:
            try:
                while True:
                    time.sleep(2)
                    live.update(render(collect()))
            except KeyboardInterrupt:
                pass
