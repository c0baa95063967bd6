"""What differs between the databases, in one place, so the rules read the same on every one.

The database layer owns one :class:`Dialect` (``Database.dialect``); the core asks it instead of
branching on the backend's name: MySQL/MariaDB (the production default), PostgreSQL (the second
production database) and SQLite (the embedded default, one instance, decimals kept as exact
text). Adding a database means adding a dialect here and its error codes in
``reconcile.storage.db``.
See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    and_,
    case,
    not_,
    or_,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.sql.dml import Insert


class _Proposed:
    """Marker for :meth:`Dialect.upsert`: keep the value the INSERT proposed."""

    def __repr__(self) -> str:
        return "PROPOSED"


PROPOSED: Final = _Proposed()


@dataclass(frozen=True)
class Dialect:
    name: str
    #: several instances may share the database: the poll schedule, SKIP LOCKED pages, the runbook
    concurrent: bool
    #: DECIMAL columns hold exact decimal text (SQLite), so SQL arithmetic on them is float
    text_decimals: bool

    @classmethod
    def for_backend(cls, backend: str) -> Dialect:
        if backend in ("mysql", "mariadb"):
            return cls("mysql", concurrent=True, text_decimals=False)
        if backend == "postgresql":
            return cls("postgresql", concurrent=True, text_decimals=False)
        if backend == "sqlite":
            return cls("sqlite", concurrent=False, text_decimals=True)
        raise ValueError(backend)

    @property
    def is_mysql(self) -> bool:
        return self.name == "mysql"

    @property
    def is_postgresql(self) -> bool:
        return self.name == "postgresql"

    def positive(self, column: Any) -> ColumnElement[bool]:
        """``column > 0`` for a DECIMAL column, exactly: on SQLite the stored text is tested
        (not negative, some non-zero digit) instead of going through a float."""
        if not self.text_decimals:
            return column > 0  # type: ignore[no-any-return]
        digits = type_coerce(column, String)
        return and_(not_(digits.like("-%")), digits.op("GLOB")("*[1-9]*"))

    def after(self, columns: tuple[Any, Any], position: tuple[Any, Any]) -> ColumnElement[bool]:
        """Keyset paging: rows after ``position`` in (first, second) order, written so that each
        database reads it as a range on its (..., first, second) index. PostgreSQL: a row
        comparison on an index ending in both columns. MySQL: the expanded form - its row
        comparison made the optimizer scan from the index's start on every page (InnoDB appends
        the primary key to a secondary index, so ``id`` needs no index column there)."""
        (a, b), (x, y) = columns, position
        if self.is_postgresql:
            return tuple_(a, b) > tuple_(x, y)
        return or_(a > x, and_(a == x, b > y))

    def bucket(self, column: Any, n: int, k: int) -> ColumnElement[bool]:
        """``column % n == k`` (a sweep worker's share of the users). PostgreSQL estimates an
        equality on an expression at 0.5 % of the rows: a 500-row page then looks like the
        whole result, and it sorts the backlog instead of reading the index in order. The same
        test in a CASE is estimated at 50 %."""
        if self.is_postgresql:
            return case((column % n == k, true()), else_=False) == true()
        return column % n == k  # type: ignore[no-any-return]

    def upsert(
        self,
        table: Table,
        *,
        key: Sequence[str],
        update: Mapping[str, Any] | None = None,
    ) -> Insert:
        """An INSERT that, when the unique key ``key`` already holds the row, updates it with
        ``update`` (``PROPOSED``: the value the INSERT proposed) or, without ``update``, leaves
        the existing row alone. Rows are given at execution: ``conn.execute(stmt, rows)``."""
        if self.is_mysql:
            ins = mysql.insert(table)
            if not update:  # a no-op assignment: MySQL has no ON CONFLICT DO NOTHING
                return ins.on_duplicate_key_update({key[0]: ins.inserted[key[0]]})
            return ins.on_duplicate_key_update(
                {k: ins.inserted[k] if v is PROPOSED else v for k, v in update.items()}
            )
        ins_c: postgresql.Insert | sqlite.Insert = (
            postgresql.insert(table) if self.is_postgresql else sqlite.insert(table)
        )
        if not update:
            return ins_c.on_conflict_do_nothing(index_elements=list(key))
        return ins_c.on_conflict_do_update(
            index_elements=list(key),
            set_={k: ins_c.excluded[k] if v is PROPOSED else v for k, v in update.items()},
        )


__all__ = ["PROPOSED", "Dialect"]
