"""Bulk statements compiled once per dialect and run straight on the DB driver.

For the heartbeat hot path SQLAlchemy's per-execution work (compiling the
statement, running a bind processor per value, building parameter lists) costs
more CPU than SQLite spends storing the rows. A :class:`DriverStatement` does
that work once: it compiles a Core statement for the connection's dialect,
keeps the bind processors of its columns, and then hands plain tuples (or
dicts, for named paramstyles) to the driver's ``executemany``. Types are still
SQLAlchemy's (timezone handling included), so rows read back exactly as if
written through Core.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import UpdateBase


class DriverStatement:
    """One INSERT/UPDATE with bind parameters named after the keys callers pass."""

    def __init__(self, statement: UpdateBase) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the statement once per row, in one driver round (nothing to do without rows)."""
        if not rows:
            return
        compiled = self._compiled.get(conn.dialect.name)
        if compiled is None:
            compiled = self._compiled[conn.dialect.name] = _Compiled(self.statement, conn.dialect)
        conn.exec_driver_sql(compiled.sql, compiled.params(rows))


class _Compiled:
    def __init__(self, statement: UpdateBase, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.names: list[str] = (
            list(compiled.positiontup or []) if compiled.positional else list(compiled.binds)
        )
        self.positional = compiled.positional
        # The processors SQLAlchemy would apply (e.g. datetime -> SQLite text), by bind name.
        processors = compiled._bind_processors
        self.processors: dict[str, Callable[[Any], Any]] = {
            name: cast("Callable[[Any], Any]", processors[name])
            for name in self.names
            if name in processors
        }

    def params(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        # The driver runs no column defaults: every parameter must be given (checked on
        # the first row, for a clear error rather than a KeyError halfway through).
        missing = [n for n in self.names if n not in rows[0]]
        if missing:
            raise ValueError(f"{self.sql!r}: no value for {', '.join(missing)}")
        procs = self.processors
        if self.positional:
            # Per row: one itemgetter call, then only the values that need converting.
            names = self.names
            pick = itemgetter(*names) if len(names) > 1 else (lambda row: (row[names[0]],))
            converts = [(i, procs[n]) for i, n in enumerate(self.names) if n in procs]
            if not converts:
                return [pick(row) for row in rows]
            out: list[tuple[Any, ...]] = []
            for row in rows:
                values = list(pick(row))
                for i, proc in converts:
                    values[i] = proc(values[i])
                out.append(tuple(values))
            return out
        return [{n: procs[n](row[n]) if n in procs else row[n] for n in self.names} for row in rows]
