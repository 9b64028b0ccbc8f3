"""Schema migrations (Alembic), configured in code: no alembic.ini to find or keep in sync.

Every command XPlane runs against a database calls :func:`upgrade` first, so a
new release migrates the schema before using it (SQLite and PostgreSQL alike).

After changing a table module (anything ``xplane.store.tables`` imports),
generate the next revision from the repo root with::

    .venv/bin/python -m xplane.store.migrate revision -m "add nodes tables"

It upgrades a throwaway SQLite database to head and autogenerates the
difference to ``Base.metadata`` into ``xplane/store/migrations/versions/``;
read the result, then ``tests/test_migrations.py`` checks that a fresh SQLite
and PostgreSQL database upgraded to head match the metadata exactly.
Other commands: ``upgrade [--db URL]``, ``check [--db URL]``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

import xplane.store.tables  # noqa: F401  (registers every table on Base.metadata)
from xplane.filelock import exclusive_lock
from xplane.store.db import Base, db_url_from_env, make_engine, sqlite_file

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK_KEY = 0x78706C616E65  # "xplane": the advisory lock id of schema migrations


class SchemaMismatchError(RuntimeError):
    """The database schema differs from the table modules (a migration is missing)."""


@contextmanager
def _alembic(url: str | None) -> Iterator[Config]:
    """An Alembic config bound to one open connection (env.py uses it as is)."""
    engine = make_engine(db_url_from_env(url))
    try:
        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            # %% escapes configparser interpolation
            cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
            cfg.attributes["connection"] = conn
            yield cfg
    finally:
        engine.dispose()


def upgrade(url: str | None = None) -> None:
    """Migrate the database at ``url`` (default: XPLANE_DB_URL, then the local SQLite) to head.

    Replicas and workers starting together on a new database would each create the
    tables and all but one would fail: one migrates at a time (a PostgreSQL advisory
    lock held for the migration's transaction; a lock file beside a SQLite database),
    and the others then find the schema at head.
    """
    url = db_url_from_env(url)
    with _sqlite_migration_lock(url), _alembic(url) as cfg:
        conn = cfg.attributes["connection"]
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        command.upgrade(cfg, "head")


@contextmanager
def _sqlite_migration_lock(url: str) -> Iterator[None]:
    path = sqlite_file(url)
    if path is None:
        yield
        return
    with exclusive_lock(path.with_name(path.name + ".migrate.lock")):
        yield


def schema_diff(url: str | None = None) -> list[Any]:
    """Alembic's autogenerate diff between the database and ``Base.metadata`` ([] = in sync)."""
    engine = make_engine(db_url_from_env(url))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def check_schema_matches(url: str | None = None) -> None:
    """Raise SchemaMismatchError listing every difference, if any."""
    diff = schema_diff(url)
    if diff:
        lines = "\n".join(f"  {d}" for d in diff)
        raise SchemaMismatchError(
            f"database schema differs from the table modules (a migration is missing?):\n{lines}"
        )


def revision(message: str) -> None:
    """Autogenerate the next revision against a throwaway SQLite database at head."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/scratch.db"
        upgrade(url)
        with _alembic(url) as cfg:
            command.revision(cfg, message=message, autogenerate=True)


cli = typer.Typer(
    help="Schema migrations.", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
)  # fmt: skip
DbOption = Annotated[str | None, typer.Option("--db", help="default: XPLANE_DB_URL")]


@cli.command("revision", help="autogenerate the next migration")
def _revision_command(message: Annotated[str, typer.Option("-m", "--message")]) -> None:
    revision(message)


@cli.command("upgrade", help="migrate a database to head")
def _upgrade_command(db: DbOption = None) -> None:
    upgrade(db)


@cli.command("check", help="compare schemas")
def _check_command(db: DbOption = None) -> None:
    check_schema_matches(db)
    print("schema matches")


def main(argv: list[str] | None = None) -> None:
    cli(args=argv, prog_name="python -m xplane.store.migrate")


if __name__ == "__main__":
    main()
