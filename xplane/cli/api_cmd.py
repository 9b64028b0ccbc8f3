"""CLI: ``xplane api`` runs the HTTP API on uvicorn."""

from __future__ import annotations

import logging

import typer

from xplane.api.settings import ApiSettings


def api(
    db: str | None = typer.Option(None, "--db", help="Database URL [env XPLANE_DB_URL]"),
    host: str | None = typer.Option(None, "--host", help="Listen address [env XPLANE_API_HOST]"),
    port: int | None = typer.Option(None, "--port", help="Listen port [env XPLANE_API_PORT]"),
    init_db: bool = typer.Option(
        False, "--init-db", help="Create missing tables first (development; use migrations in prod)"
    ),
) -> None:
    """Serve node registration, heartbeats and the read endpoints.

    Tokens come from the environment only: XPLANE_BOOTSTRAP_TOKEN (and optionally
    XPLANE_BOOTSTRAP_TOKEN_<REGION>), XPLANE_ADMIN_TOKEN.
    """
    from xplane.api.app import create_app
    from xplane.api.serve import serve_forever

    try:
        settings = ApiSettings.from_env(db_url=db, host=host, port=port)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.bootstrap_token is None and not settings.region_bootstrap_tokens:
        typer.echo(
            "warning: no XPLANE_BOOTSTRAP_TOKEN set: every registration is refused", err=True
        )
    if settings.admin_token is None:
        typer.echo(
            "warning: no XPLANE_ADMIN_TOKEN set: the read endpoints refuse everyone", err=True
        )
    if init_db:
        import xplane.store.tables  # noqa: F401  (registers every table)
        from xplane.store.db import Base, make_engine

        engine = make_engine(settings.db_url)
        Base.metadata.create_all(engine)
        engine.dispose()
    serve_forever(create_app(settings), settings.host, settings.port)


def register(root: typer.Typer) -> None:
    """Attach this module's commands to the root `xplane` app."""
    root.command("api")(api)
