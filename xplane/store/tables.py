"""Imports every table module so ``Base.metadata`` knows the whole schema.

Alembic's env and the test fixtures import this one module.
"""

from sqlalchemy import String

from xplane.store import (  # noqa: F401
    api_tokens,
    cluster,
    config_tables,
    events,
    gate,
    load_hours,
    node_tables,
    pools,
    webhook_deliveries,
)
from xplane.store.db import Base


def column_length(table: str, column: str) -> int:
    """The declared length of a ``String(n)`` column: the one source of input limits.

    PostgreSQL refuses a longer value (a 500 if it got that far) and SQLite would
    store it silently; the API models validate against this instead, on both.
    """
    kind = Base.metadata.tables[table].c[column].type
    if not isinstance(kind, String) or kind.length is None:
        raise ValueError(f"{table}.{column} has no declared length")
    return kind.length
