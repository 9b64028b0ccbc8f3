"""CLI: ``xplane tokens create|list|revoke``: API tokens for machines (through the API,
as an admin: every call is authorized and audited there)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from xplane.cli.nodes_cmd import ServerOption, _client, _fail

app = typer.Typer(help="API tokens for machines (admin only).", no_args_is_help=True)


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
) -> None:
    """Create a token; it is printed once, here, and never again."""
    body = {"name": name, "role": role, "scopes": scope, "expires_in": expires_in}
    if reason:
        body["reason"] = reason
    try:
        with _client(server) as client:
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
) -> None:
    """List tokens (names, roles, scopes, expiry; never the tokens)."""
    try:
        with _client(server) as client:
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
) -> None:
    """Revoke a token at once (it stays listed, revoked; its name is not reused)."""
    try:
        with _client(server) as client:
            token = client.revoke_token(name, reason)
    except Exception as exc:
        raise _fail(exc) from None
    typer.echo(f"{token['name']}: revoked at {token['revoked_at']}")


def register(root: typer.Typer) -> None:
    """Attach this module's commands to the root `xplane` app."""
    root.add_typer(app, name="tokens")
