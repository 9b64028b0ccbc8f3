"""CLI: ``xplane api`` runs the HTTP API on uvicorn."""

from __future__ import annotations

import typer


def api(
    db: str | None = typer.Option(None, "--db", help="Database URL [env XPLANE_DB_URL]"),
    host: str | None = typer.Option(None, "--host", help="Listen address [env XPLANE_API_HOST]"),
    port: int | None = typer.Option(None, "--port", help="Listen port [env XPLANE_API_PORT]"),
    heartbeat_interval: str | None = typer.Option(
        None,
        "--heartbeat-interval",
        help="Between a node's heartbeats, e.g. 10s or 0.5 (told to agents; down after "
        "XPLANE_HEARTBEAT_TIMEOUT, default 3x) [env XPLANE_HEARTBEAT_INTERVAL]",
    ),
    temporal: str | None = typer.Option(
        None,
        "--temporal",
        envvar="XPLANE_TEMPORAL_ADDRESS",
        help="Temporal host:port: registrations and CI webhooks become workflow signals",
    ),
    max_concurrency: int | None = typer.Option(
        None,
        "--max-concurrency",
        min=1,
        help="Requests in flight at once; more are answered 503 [env XPLANE_API_MAX_CONCURRENCY]",
    ),
    task_queue: str = typer.Option("xplane", envvar="XPLANE_TASK_QUEUE"),
    migrate: bool = typer.Option(True, "--migrate/--no-migrate", help="Alembic upgrade first"),
) -> None:
    """Serve node registration, heartbeats and the read endpoints.

    Tokens come from the environment only: XPLANE_BOOTSTRAP_TOKEN (and optionally
    XPLANE_BOOTSTRAP_TOKEN_<REGION>), XPLANE_ADMIN_TOKEN; people log in with OIDC
    (XPLANE_OIDC_ISSUER, XPLANE_OIDC_AUDIENCE) or API tokens (`xplane tokens`).
    """
    from xplane.api.app import create_app
    from xplane.api.serve import serve_forever
    from xplane.api.settings import ApiSettings
    from xplane.heartbeat import HeartbeatSettings
    from xplane.observability.logging import configure_logging_from_env

    try:
        # Wins over XPLANE_HEARTBEAT_INTERVAL in this process only: workers and the CLI
        # read the environment, so a deployment sets that (docs/deploy.md).
        heartbeat = HeartbeatSettings.from_env(interval=heartbeat_interval)
        settings = ApiSettings.from_env(
            db_url=db,
            host=host,
            port=port,
            heartbeat=heartbeat,
            max_concurrency=max_concurrency,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    configure_logging_from_env()
    if settings.bootstrap_token is None and not settings.region_bootstrap_tokens:
        typer.echo(
            "warning: no XPLANE_BOOTSTRAP_TOKEN set: every registration is refused", err=True
        )
    if settings.admin_token is None and settings.oidc_issuer is None:
        typer.echo(
            "warning: neither XPLANE_ADMIN_TOKEN nor XPLANE_OIDC_ISSUER set: only API tokens "
            "are accepted (`xplane tokens create NAME --role admin --db URL` makes one)",
            err=True,
        )
    if migrate:
        from xplane.store.migrate import upgrade

        upgrade(settings.db_url)
    notifier = actions = None
    if temporal:
        _check_cluster(settings.db_url, temporal, task_queue)
        from xplane.api.actions import TemporalActions
        from xplane.temporal.notifier import TemporalNotifier

        notifier = TemporalNotifier(None, task_queue, address=temporal)
        actions = TemporalActions(address=temporal)
    else:
        typer.echo(
            "warning: no Temporal address: registrations and webhooks signal nothing, "
            "operator actions answer 503",
            err=True,
        )
    app = create_app(settings, notifier=notifier, webhook_notifier=notifier, actions=actions)
    serve_forever(app, settings.host, settings.port)


def _check_cluster(db_url: str, temporal: str, task_queue: str) -> None:
    """Refuse to serve another cluster's database (exit 2, both cluster ids named)."""
    import os
    import sys
    from pathlib import Path

    from xplane.temporal.cluster import MISMATCH_EXIT_CODE, ClusterMismatch, check_api_replica

    own_process = Path(sys.argv[0]).name == "xplane"
    namespace = os.environ.get("XPLANE_TEMPORAL_NAMESPACE", "default")
    try:
        check_api_replica(db_url, temporal, namespace, task_queue, exit_now=own_process)
    except ClusterMismatch as exc:
        typer.echo(f"xplane api: {exc}", err=True)
        if own_process:
            sys.stderr.flush()
            os._exit(MISMATCH_EXIT_CODE)  # no teardown: see xplane/cli/worker_cmd.py
        raise typer.Exit(MISMATCH_EXIT_CODE) from None


def register(root: typer.Typer) -> None:
    """Attach this module's commands to the root `xplane` app."""
    root.command("api")(api)
