"""CLI: ``xplane events``: the event log, to follow one incident from end to end."""

from __future__ import annotations

import json

import typer


def register(root: typer.Typer) -> None:
    @root.command("events")
    def events(
        region: str = typer.Option(None, "--region", help="only this region"),
        service: str = typer.Option(None, "--service", help="only this service"),
        node: str = typer.Option(None, "--node", help="only this node"),
        kind: str = typer.Option(None, "--kind", help="kind prefix, e.g. dns. or node."),
        limit: int = typer.Option(50, "--limit", min=1, max=10_000),
        db: str = typer.Option(None, "--db", envvar="XPLANE_DB_URL", help="database URL"),
        output: str = typer.Option("table", "--output", "-o", help="table | json"),
    ) -> None:
        """Show recent events (newest last): DNS applies, node transitions, commits, CI."""
        from rich.console import Console
        from rich.table import Table

        from xplane.store.db import db_url_from_env, make_engine, make_sessionmaker
        from xplane.store.events import list_events

        engine = make_engine(db_url_from_env(db))
        with make_sessionmaker(engine)() as session:
            rows = list_events(
                session,
                region=region,
                service=service,
                node_id=node,
                kind_prefix=kind,
                limit=limit,
            )
        engine.dispose()
        rows.reverse()
        if output == "json":
            typer.echo(
                json.dumps(
                    [
                        {
                            "at": r.at.isoformat(),
                            "kind": r.kind,
                            "source": r.source,
                            "service": r.service,
                            "region": r.region,
                            "node_id": r.node_id,
                            "correlation_id": r.correlation_id,
                            "message": r.message,
                            "data": r.data,
                        }
                        for r in rows
                    ],
                    indent=2,
                )
            )
            return
        table = Table(title=f"{len(rows)} event(s)")
        for column in ("TIME", "KIND", "REGION", "NODE", "MESSAGE"):
            table.add_column(column, overflow="fold")
        for r in rows:
            table.add_row(
                r.at.strftime("%H:%M:%S"), r.kind, r.region or "-", r.node_id or "-", r.message
            )
        Console().print(table)
