"""CLI: ``xplane tokens create|list|revoke``: API tokens for machines (through the API,
as an admin: every call is authorized and audited there)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from xplane.cli.nodes_cmd import ServerOption, TokenOption, _client, _fail

app = typer.Typer(help="API tokens for machines (admin only).", no_args_is_help=True)
# Straight to the store: the first admin token of a deployment without a shared one, or
# a revocation while the API is down. Audited as the OS user.
DbOption = typer.Option(
    None, "--db", help="Write the store directly instead of calling the API (database URL)"
)


def _in_store(
    db: str, action: str, name: str, reason: str | None, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    from xplane.api.routes_tokens import TokenCreate, token_out
    from xplane.auth.audit import cli_identity, record_audit
    from xplane.auth.roles import Target
    from xplane.durations import parse_duration
    from xplane.store import api_tokens
    from xplane.store.db import make_engine, make_sessionmaker, transaction, utcnow

    identity = cli_identity()
    engine = make_engine(db)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            if body is not None:
                request = TokenCreate.model_validate(body)
                expires = utcnow() + parse_duration(request.expires_in)
                new = api_tokens.create_token(
                    session, name, request.role, request.scopes, expires, identity.name
                )
                answer = {
                    **token_out(new.row, utcnow()).model_dump(mode="json"),
                    "token": new.token,
                }
            else:
                row = api_tokens.revoke_token(session, name)
                answer = token_out(row, utcnow()).model_dump(mode="json")
            record_audit(
                session,
                action=action,
                identity=identity,
                target=Target(name=name),
                outcome="ok",
                reason=reason,
                source="cli",
            )
    except api_tokens.TokenExists:
        raise RuntimeError(f"a token named {name!r} exists (names are never reused)") from None
    except api_tokens.TokenNotFound:
        raise RuntimeError(f"no token named {name!r}") from None
    finally:
        engine.dispose()
    return answer


@app.command("create")
def create_cmd(
    name: str = typer.Argument(..., help="Unique name (lower case, digits, . _ -)"),
    role: str = typer.Option(..., "--role", help="viewer | operator | admin"),
    scope: list[str] = typer.Option(
        [], "--scope", help="SERVICE or SERVICE/REGION (repeatable; none: everything)"
    ),
    expires_in: str = typer.Option("90d", "--expires-in", help="Lifetime, e.g. 12h, 30d"),
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in the audit log)"),
    server: str | None = ServerOption,
    token: str | None = TokenOption,
    db: str | None = DbOption,
) -> None:
    """Create a token; it is printed once, here, and never again."""
    body = {"name": name, "role": role, "scopes": scope, "expires_in": expires_in}
    if reason:
        body["reason"] = reason
    try:
        if db:
            created = _in_store(db, "token.create", name, reason, body)
        else:
            with _client(server, token) as client:
                created = client.create_token(body)
    except Exception as exc:
        raise _fail(exc) from None
    scopes = ", ".join(created["scopes"]) or "everything"
    typer.echo(f"token {created['name']}: {created['role']} on {scopes}, "
               f"expires {created['expires_at']}", err=True)  # fmt: skip
    typer.echo("shown once: keep it now", err=True)
    typer.echo(created["token"])


@app.command("list")
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
    server: str | None = ServerOption,
    token: str | None = TokenOption,
) -> None:
    """List tokens (names, roles, scopes, expiry; never the tokens)."""
    try:
        with _client(server, token) as client:
            tokens = client.list_tokens()
    except Exception as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(tokens, indent=2))
        return
    table = Table(title=f"{len(tokens)} token(s)")
    for column in ("NAME", "ROLE", "SCOPES", "STATE", "EXPIRES", "CREATED BY"):
        table.add_column(column)
    for t in tokens:
        table.add_row(
            t["name"],
            t["role"],
            ", ".join(t["scopes"]) or "*",
            t["state"],
            t["expires_at"][:19],
            t["created_by"],
        )
    Console().print(table)


@app.command("revoke")
def revoke_cmd(
    name: str = typer.Argument(..., help="Token to revoke"),
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in the audit log)"),
    server: str | None = ServerOption,
    token: str | None = TokenOption,
    db: str | None = DbOption,
) -> None:
    """Revoke a token at once (it stays listed, revoked; its name is not reused)."""
    try:
        if db:
            revoked = _in_store(db, "token.revoke", name, reason)
        else:
            with _client(server, token) as client:
                revoked = client.revoke_token(name, reason)
    except Exception as exc:
        raise _fail(exc) from None
    typer.echo(f"{revoked['name']}: revoked at {revoked['revoked_at']}")


def register(root: typer.Typer) -> None:
    """Attach this module's commands to the root `xplane` app."""
    root.add_typer(app, name="tokens")
