"""Multi-row writes for the consumer's hot path, as driver-level statements.

Charging a page of 500 orders takes four writes whatever the page size: one multi-row INSERT of
consume rows, one UPDATE of the wallets, one multi-row INSERT of ledger rows, one UPDATE of the
orders. The UPDATEs join the target to a derived table of (key, value) rows (MySQL ``UPDATE ...
JOIN (SELECT ... UNION ALL ...)``, PostgreSQL ``UPDATE ... FROM (VALUES ...)``) or, on SQLite,
carry per-row values in a ``CASE key WHEN ? THEN ? ... END``. Built here with positional
parameters because building the same statements as SQLAlchemy expressions costs more client CPU
than the database spends executing them (see BENCHMARKS.md). PostgreSQL numbers its parameters
(``$1``) and may use one several times: the constants of a multi-row INSERT are sent once.
See docs/charging.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection


class BulkWriter:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._quote = conn.dialect.identifier_preparer.quote
        self._mark = "%s" if conn.dialect.paramstyle in ("format", "pyformat") else "?"
        # SQLite keeps decimals as exact text (see reconcile.storage.schema); MySQL takes Decimal.
        self._text_decimals = conn.dialect.name == "sqlite"
        self._numbered = conn.dialect.name == "postgresql"

    def _sql_type(self, table: Table, column: str) -> str:
        return str(table.c[column].type.compile(dialect=self._conn.dialect))

    def _binder(self, table: Table, column: str) -> Callable[[Any], Any]:
        """SQLite: the column type's own bind processing (exact decimal text at the column's
        scale, as every other write stores it); MySQL takes Python values as they are."""
        if not self._text_decimals:
            return _same
        dialect = self._conn.dialect
        process = table.c[column].type.dialect_impl(dialect).bind_processor(dialect)
        return process or _same

    async def insert(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        constants: Mapping[str, Any] | None = None,
    ) -> None:
        """One multi-row INSERT (the driver batches an executemany of an INSERT).

        ``constants`` are the same for every row: on MySQL they are escaped once by the driver
        and written into the statement instead of being escaped again for every row.
        """
        if not rows:
            return
        constants = constants or {}
        names = ", ".join(self._quote(c) for c in (*columns, *constants))
        prefix = f"INSERT INTO {self._quote(table.name)} ({names}) VALUES "  # noqa: S608
        if self._text_decimals:  # SQLite: executemany of one parameterized row
            marks = ", ".join([self._mark] * (len(columns) + len(constants)))
            binders = [self._binder(table, c) for c in columns]
            extra = tuple(self._binder(table, c)(v) for c, v in constants.items())
            await self._conn.exec_driver_sql(
                f"{prefix}({marks})",
                [tuple(b(v) for b, v in zip(binders, row, strict=True)) + extra for row in rows],
            )
            return
        if self._numbered:  # PostgreSQL: every row's own $n; the constants' $n shared by all
            width = len(columns)
            const = ", ".join(f"${len(rows) * width + i + 1}" for i in range(len(constants)))
            values = ", ".join(
                "("
                + ", ".join(f"${r * width + i + 1}" for i in range(width))
                + (f", {const}" if const else "")
                + ")"
                for r in range(len(rows))
            )
            params = [v for row in rows for v in row] + list(constants.values())
            await self._conn.exec_driver_sql(prefix + values, tuple(params))
            return
        # MySQL: one statement with every row; constants escaped once by the driver
        driver = (await self._conn.get_raw_connection()).driver_connection
        if driver is None:  # pragma: no cover - a pooled connection always has one
            raise RuntimeError("no driver connection")
        literals = [driver.escape(v).replace("%", "%%") for v in constants.values()]
        row_sql = "(" + ", ".join([self._mark] * len(columns) + literals) + ")"
        params = [v for row in rows for v in row]
        await self._conn.exec_driver_sql(prefix + ", ".join([row_sql] * len(rows)), tuple(params))

    async def update_cases(
        self,
        table: Table,
        key: str,
        cases: Mapping[str, tuple[str, Mapping[int, Any]]],
        constants: Mapping[str, Any],
    ) -> None:
        """``UPDATE table SET col = template(CASE key WHEN k THEN v ... END), ... WHERE key IN``.

        ``cases`` maps a column to (template, {key: value}); the template's ``{}`` is replaced by
        the CASE expression, e.g. ``"power - {}"`` or ``"{}"``. All mappings share one key set.
        """
        keys = sorted(next(iter(cases.values()))[1])
        if not keys:
            return
        q, m = self._quote, self._mark
        sets: list[str] = []
        params: list[Any] = []
        for column, (template, mapping) in cases.items():
            whens = " ".join([f"WHEN {m} THEN {m}"] * len(keys))
            sets.append(f"{q(column)} = " + template.format(f"CASE {q(key)} {whens} END"))
            bind = self._binder(table, column)
            for k in keys:
                params += (k, bind(mapping[k]))
        for column, value in constants.items():
            sets.append(f"{q(column)} = {m}")
            params.append(self._binder(table, column)(value))
        in_list = ", ".join([m] * len(keys))
        params += keys
        sql = f"UPDATE {q(table.name)} SET {', '.join(sets)} WHERE {q(key)} IN ({in_list})"  # noqa: S608
        await self._conn.exec_driver_sql(sql, tuple(params))

    async def update_join_values(
        self,
        table: Table,
        key: str,
        values: Mapping[int, Any],
        assignments: Mapping[str, str],
        constants: Mapping[str, Any],
    ) -> None:
        """MySQL: ``UPDATE table t JOIN (SELECT k, v UNION ALL ...) d ON t.key = d.k SET ...``.

        ``assignments`` map a column to an SQL expression over ``t.<column>`` and ``d.v`` (code
        constants, e.g. ``"t.power - d.v"``); per-row values travel as parameters. The engine
        joins on the key instead of evaluating a CASE per row, and reads no other table.
        """
        if not values:
            return
        q, m = self._quote, self._mark
        keys = sorted(values)
        if self._numbered:
            await self._update_from_values(table, key, keys, values, assignments, constants)
            return
        if getattr(self._conn.dialect, "is_mariadb", False):
            # a table value constructor (MariaDB >= 10.3) parses far cheaper than a UNION of
            # SELECTs; the first row, NULLs that join nothing, names the columns
            rows = ", ".join([f"({m}, {m})"] * len(keys))
            derived = f"SELECT NULL AS k, NULL AS v UNION ALL VALUES {rows}"
        else:
            derived = " UNION ALL ".join(
                [f"SELECT {m} AS k, {m} AS v"] + [f"SELECT {m}, {m}"] * (len(keys) - 1)
            )
        sets = [f"t.{q(col)} = {expr}" for col, expr in assignments.items()]
        sets += [f"t.{q(col)} = {m}" for col in constants]
        params: list[Any] = [x for k in keys for x in (k, values[k])]
        params += list(constants.values())
        sql = (
            f"UPDATE {q(table.name)} AS t JOIN ({derived}) AS d ON t.{q(key)} = d.k "  # noqa: S608
            f"SET {', '.join(sets)}"
        )
        await self._conn.exec_driver_sql(sql, tuple(params))

    async def add(
        self,
        table: Table,
        key: str,
        deltas: Mapping[int, Any],
        signs: Mapping[str, int],
        current: Mapping[str, Mapping[int, Any]],
        constants: Mapping[str, Any],
    ) -> None:
        """Add ``sign * deltas[k]`` to each column of ``signs`` in the row keyed ``k``.

        MySQL: atomic ``col = col + x`` arithmetic in one UPDATE ... JOIN. SQLite keeps decimals
        as text, so SQL arithmetic would be float: the new figures are computed here from
        ``current`` (the values read under the write lock ``BEGIN IMMEDIATE`` took) instead.
        """
        if not self._text_decimals:
            ops = {1: "+", -1: "-"}
            await self.update_join_values(
                table,
                key,
                deltas,
                {col: f"t.{self._quote(col)} {ops[sign]} d.v" for col, sign in signs.items()},
                constants,
            )
            return
        cases = {
            col: ("{}", {k: current[col][k] + sign * d for k, d in deltas.items()})
            for col, sign in signs.items()
        }
        await self.update_cases(table, key, cases, constants)

    async def _update_from_values(
        self,
        table: Table,
        key: str,
        keys: list[int],
        values: Mapping[int, Any],
        assignments: Mapping[str, str],
        constants: Mapping[str, Any],
    ) -> None:
        """PostgreSQL: ``UPDATE table AS t SET ... FROM (VALUES ($1::bigint, $2::numeric), ...)
        AS d(k, v) WHERE t.key = d.k``; ``d.v`` takes the type of the first assigned column."""
        q = self._quote
        key_type = self._sql_type(table, key)
        value_type = self._sql_type(table, next(iter(assignments)))
        rows = ", ".join(
            f"(${2 * i + 1}::{key_type}, ${2 * i + 2}::{value_type})" for i in range(len(keys))
        )
        base = 2 * len(keys)
        sets = [f"{q(col)} = {expr}" for col, expr in assignments.items()]
        sets += [f"{q(col)} = ${base + i + 1}" for i, col in enumerate(constants)]
        params: list[Any] = [x for k in keys for x in (k, values[k])]
        params += list(constants.values())
        sql = (
            f"UPDATE {q(table.name)} AS t SET {', '.join(sets)} "  # noqa: S608
            f"FROM (VALUES {rows}) AS d(k, v) WHERE t.{q(key)} = d.k"
        )
        await self._conn.exec_driver_sql(sql, tuple(params))


def _same(value: Any) -> Any:
    return value
