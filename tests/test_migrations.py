"""Alembic migrations: a fresh database upgraded to head is exactly the table modules."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import xplane.store.tables  # noqa: F401  (registers every table on Base.metadata)
from xplane.store import migrate
from xplane.store.db import Base, make_engine


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_fresh_database_matches_metadata(db_url: str) -> None:
    migrate.upgrade(db_url)

    assert migrate.schema_diff(db_url) == []
    migrate.check_schema_matches(db_url)
    assert _tables(db_url) == set(Base.metadata.tables) | {"alembic_version"}


def test_upgrade_twice_is_a_no_op(db_url: str) -> None:
    migrate.upgrade(db_url)
    migrate.upgrade(db_url)

    assert migrate.schema_diff(db_url) == []


def test_check_names_the_missing_table(db_url: str) -> None:
    """A database made without the migrations (here: empty) is reported, table by table."""
    with pytest.raises(migrate.SchemaMismatchError) as exc:
        migrate.check_schema_matches(db_url)

    assert "config_revisions" in str(exc.value)
    assert "gtm_policies" in str(exc.value)


def test_replicas_migrating_an_empty_database_at_once_all_succeed(db_url: str) -> None:
    """API replicas and workers starting together on a new database, as real processes."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "xplane.store.migrate", "upgrade", "--db", db_url]
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    failures = [
        err for proc in procs if (err := proc.communicate(timeout=120)[1]) and proc.returncode
    ]
    assert failures == []
    assert migrate.schema_diff(db_url) == []
