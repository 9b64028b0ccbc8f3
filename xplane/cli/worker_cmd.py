"""CLI: ``xplane worker``: run the Temporal worker against a Temporal cluster."""

from __future__ import annotations

import asyncio

import typer


def register(root: typer.Typer) -> None:
    @root.command("worker")
    def worker(
        temporal_address: str = typer.Option(
            None, "--temporal", envvar="XPLANE_TEMPORAL_ADDRESS", help="host:port of Temporal"
        ),
        namespace: str = typer.Option(None, envvar="XPLANE_TEMPORAL_NAMESPACE"),
        task_queue: str = typer.Option(None, envvar="XPLANE_TASK_QUEUE"),
        db: str = typer.Option(None, "--db", envvar="XPLANE_DB_URL", help="database URL"),
    ) -> None:
        """Run the XPlane worker (all workflows and activities) until interrupted."""
        from xplane.observability.logging import configure_logging_from_env
        from xplane.runtime import run_worker_forever
        from xplane.settings import Settings

        settings = Settings.from_env(
            temporal_address=temporal_address,
            temporal_namespace=namespace,
            task_queue=task_queue,
            db_url=db,
        )
        configure_logging_from_env()
        asyncio.run(run_worker_forever(settings))
