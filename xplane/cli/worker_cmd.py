"""CLI: ``xplane worker``: run the Temporal worker against a Temporal cluster.

Exit code 2: the database belongs to another cluster than the Temporal namespace
serves (the error names both cluster ids); no task was taken.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

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
        ensure_loops: bool = typer.Option(
            True,
            "--ensure-loops/--no-ensure-loops",
            envvar="XPLANE_ENSURE_LOOPS",
            help="Start gitops-sync (from XPLANE_CONFIG_REPO) and world-state unless running.",
        ),
    ) -> None:
        """Run the XPlane worker (all workflows and activities) until interrupted."""
        from xplane.observability.logging import configure_logging_from_env
        from xplane.settings import Settings
        from xplane.temporal.cluster import MISMATCH_EXIT_CODE, ClusterMismatch
        from xplane.temporal.runtime import run_worker_forever

        settings = Settings.from_env(
            temporal_address=temporal_address,
            temporal_namespace=namespace,
            task_queue=task_queue,
            db_url=db,
        )
        configure_logging_from_env()
        try:
            asyncio.run(run_worker_forever(settings, ensure_loops=ensure_loops))
        except ClusterMismatch as exc:
            typer.echo(f"xplane worker: {exc}", err=True)
            if Path(sys.argv[0]).name == "xplane":
                # Our own process: skip the interpreter teardown, where a Temporal
                # client can abort (sdk-python issue 300) and hide exit code 2.
                sys.stderr.flush()
                os._exit(MISMATCH_EXIT_CODE)
            raise typer.Exit(MISMATCH_EXIT_CODE) from None
