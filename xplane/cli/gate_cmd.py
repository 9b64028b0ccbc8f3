"""CLI: ``xplane gate [close|open] --reason TEXT``: the self-health gate, and its manual switch.

The switch lives in the store (``control_gate``), not in a workflow: it works while
Temporal is down, every reader sees it at its next activity, and it outlives restarts.
``close`` / ``open`` go through the API (authorized and audited there); with an explicit
``--db`` they write the store directly, for when the API itself is down.
"""

from __future__ import annotations

import getpass

import typer


def register(root: typer.Typer) -> None:
    gate = typer.Typer(
        help="The self-health gate: holds destructive steps while XPlane cannot trust its view.",
        invoke_without_command=True,
        no_args_is_help=False,
    )
    root.add_typer(gate, name="gate")

    db_option = typer.Option(None, "--db", envvar="XPLANE_DB_URL", help="database URL")

    @gate.callback()
    def show(ctx: typer.Context, db: str = db_option) -> None:
        """Show whether the gate holds, where and why."""
        if ctx.invoked_subcommand is not None:
            return
        from xplane.gate import GateSettings
        from xplane.heartbeat import HeartbeatSettings
        from xplane.store import gate as gate_store
        from xplane.store.db import db_url_from_env, make_engine, make_sessionmaker, utcnow

        engine = make_engine(db_url_from_env(db))
        try:
            with make_sessionmaker(engine)() as session:
                stored = gate_store.read_gate(session)
        finally:
            engine.dispose()
        lines = gate_store.describe(
            stored, utcnow(), HeartbeatSettings.from_env(), GateSettings.from_env()
        )
        for line in lines:
            typer.echo(line)

    # No environment fallback here: a shell's XPLANE_DB_URL must not bypass the API.
    direct_option = typer.Option(
        None, "--db", help="write this database directly (the API down); default: the API"
    )
    server_option = typer.Option(
        None, "--server", help="API URL [env XPLANE_API_URL, default http://127.0.0.1:8080]"
    )

    def _set(closed: bool, reason: str, db: str | None, server: str | None) -> None:
        if db is None:
            from xplane.cli.actions_cmd import act

            answer = act(server, f"/gate/{'close' if closed else 'open'}", {"reason": reason})
            typer.echo(answer["message"])
            for line in answer["gate"]:
                typer.echo(line)
            return
        from xplane.auth.audit import cli_identity, record_audit
        from xplane.auth.roles import Target
        from xplane.store import gate as gate_store
        from xplane.store.db import db_url_from_env, make_engine, make_sessionmaker, transaction

        engine = make_engine(db_url_from_env(db))
        try:
            with transaction(make_sessionmaker(engine)) as session:
                gate_store.set_operator(session, closed, reason, by=f"cli:{getpass.getuser()}")
                record_audit(
                    session,
                    action="gate.close" if closed else "gate.open",
                    identity=cli_identity(),
                    target=Target(),
                    outcome="ok",
                    reason=reason,
                    source="cli",
                )
        finally:
            engine.dispose()
        typer.echo(f"gate {'closed' if closed else 'opened'}: {reason}")

    @gate.command("close")
    def close(
        reason: str = typer.Option(..., "--reason", help="why (recorded in the event log)"),
        db: str | None = direct_option,
        server: str | None = server_option,
    ) -> None:
        """Hold every destructive step (node down, delete, replacement, DNS removal) now."""
        _set(True, reason, db, server)

    @gate.command("open")
    def open_(
        reason: str = typer.Option(..., "--reason", help="why (recorded in the event log)"),
        db: str | None = direct_option,
        server: str | None = server_option,
    ) -> None:
        """Lift the operator's close, and end any hold whose inputs are healthy again
        without waiting out the stable period or recovery quiet period."""
        _set(False, reason, db, server)
