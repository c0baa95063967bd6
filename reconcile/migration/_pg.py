"""The runbook in PostgreSQL's terms: what differs from MySQL, in one module.

- **Catalog.** Indexes come from ``pg_index`` with their validity: a ``CREATE INDEX
  CONCURRENTLY`` that failed (a duplicate, a lock timeout, a cancel) leaves an *invalid* index
  behind, which is no key (``indisvalid``) yet may still be maintained and checked on every
  insert (``indisready``). Such an index of ours counts as absent; the step that builds it drops
  it first (``DROP INDEX CONCURRENTLY``), and a build that fails drops what it left.
- **Online DDL.** Indexes are built with ``CREATE [UNIQUE] INDEX CONCURRENTLY`` - reads and
  writes go on - and ``uk_user_order`` becomes a table constraint with ``ALTER TABLE ... ADD
  CONSTRAINT ... UNIQUE USING INDEX`` (a catalog change under a brief exclusive lock). These
  cannot run inside a transaction block: they run on an AUTOCOMMIT connection of their own
  (outside the pool), with ``lock_timeout`` set to ``--ddl-lock-wait`` so a busy table fails the
  step fast (reported, retried by ``up``'s next run) instead of queueing every query behind it.
  If the constraint cannot be attached, the index just built is dropped again: the step is done
  completely or not at all, as a MySQL ALTER.
- **Dump.** ``pg_dump`` (one consistent snapshot; the password in ``PGPASSWORD``).
See docs/cutover.md.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.errors import ReconcileError
from reconcile.storage.db import Database, map_db_errors

log = structlog.get_logger("reconcile.migration")


def is_pg(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "postgresql"


@dataclass(frozen=True)
class Index:
    unique: bool
    columns: tuple[str, ...]
    valid: bool = True
    constraint: bool = False


_INDEXES = text(
    """
    SELECT t.relname, i.relname, x.indisunique, x.indisvalid AND x.indisready,
           EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid
                   AND c.contype IN ('u', 'p')),
           ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                 ORDER BY k.n)
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_namespace s ON s.oid = t.relnamespace
    WHERE s.nspname = current_schema() AND t.relname = ANY(:tables)
    """
)


async def indexes(conn: AsyncConnection, tables: list[str]) -> dict[tuple[str, str], Index]:
    rows = await conn.execute(_INDEXES, {"tables": tables})
    return {
        (table, name): Index(bool(unique), tuple(cols), bool(valid), bool(constraint))
        for table, name, unique, valid, constraint, cols in rows
    }


def duplicate_groups_sql(consume: str) -> str:
    return (
        f"SELECT user_id, order_id, COUNT(*), string_agg(id::text, ',' ORDER BY id) "  # noqa: S608
        f"FROM {consume} GROUP BY user_id, order_id HAVING COUNT(*) > 1"
    )


def backup_table_ddl(name: str, source: str) -> list[str]:
    """The backup table: the live table's columns (types, NOT NULL) and its primary key; no
    defaults (they would tie it to the live table's sequence) and no other index (a backup of
    duplicates must not refuse them)."""
    return [f"CREATE TABLE {name} (LIKE {source})", f"ALTER TABLE {name} ADD PRIMARY KEY (id)"]


# -- DDL on an AUTOCOMMIT connection ------------------------------------------------------------


@contextlib.asynccontextmanager
async def autocommit(db: Database, lock_wait: float) -> AsyncIterator[AsyncConnection]:
    """A connection of its own in AUTOCOMMIT mode (CONCURRENTLY refuses transaction blocks),
    whose lock waits give up after ``lock_wait`` seconds; closed afterwards, so the setting
    never reaches the pool."""
    async with db.session_connection() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql(f"SET lock_timeout = '{max(1, round(lock_wait * 1000))}ms'")
        yield conn


async def run_ddl(
    db: Database,
    what: str,
    fn: Callable[[AsyncConnection], Awaitable[bool]],
    *,
    lock_wait: float,
) -> bool:
    """Run ``fn`` on an autocommit connection; a temporary failure (lock timeout, lost
    connection) re-runs it - bounded, jittered, logged as ``db retry`` - as
    ``Database.transaction`` does for transactions. ``fn`` asks the catalog what is still to do,
    so a re-run never repeats a statement that finished."""
    retrying = db.retrying(what)
    async for attempt in retrying:
        with attempt:
            async with autocommit(db, lock_wait) as conn:
                with map_db_errors(what):
                    return await fn(conn)
    raise AssertionError("unreachable")  # pragma: no cover


async def backend_pid(conn: AsyncConnection) -> int:
    return int((await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one())


def index_name(statement: str) -> str | None:
    """The index a ``CREATE [UNIQUE] INDEX CONCURRENTLY <name> ON ...`` statement builds."""
    words = statement.split()
    if "CONCURRENTLY" not in words or words[0] != "CREATE":
        return None
    return words[words.index("CONCURRENTLY") + 1]


async def drop_index(
    db: Database, table: str, name: str, lock_wait: float, *, only_invalid: bool
) -> bool:
    """After a failed step: drop the index ``name`` it left (``only_invalid``: only if invalid,
    never a good index that was there before). False (logged) if it stays: ``migrate check``
    then reports it and ``migrate up`` drops it before building it again."""
    try:
        async with autocommit(db, lock_wait) as conn:
            with map_db_errors(f"drop index {name}"):
                found = (await indexes(conn, [table])).get((table, name))
                if found is None or (only_invalid and found.valid):
                    return True
                await conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    except ReconcileError as exc:
        log.warning(
            "invalid index left",
            index=name,
            error=str(exc),
            remedy="`migrate check` reports it; `migrate up` drops and rebuilds it",
        )
        return False
    log.info("index of a failed step dropped", index=name)
    return True


PROGRESS = text(
    """
    SELECT p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total,
           a.wait_event_type, a.state
    FROM pg_stat_activity a LEFT JOIN pg_stat_progress_create_index p ON p.pid = a.pid
    WHERE a.pid = :id
    """
)


def progress_fields(row: Any) -> dict[str, Any]:
    """PostgreSQL's own figures of a running index build (pg_stat_progress_create_index)."""
    phase, blocks_done, blocks_total, tuples_done, tuples_total, wait, state = row
    pct = 0.0
    if blocks_total:
        pct = 100.0 * blocks_done / blocks_total
    elif tuples_total:
        pct = 100.0 * tuples_done / tuples_total
    return {
        "stage": phase or state,
        "progress_pct": f"{pct:.1f}",
        "state": f"waiting ({wait})" if wait == "Lock" else state,
    }


# -- SQL of the own tables step -----------------------------------------------------------------


def backfill_bindings_sql(binding: str, orders: str, robots: str, accounts: str) -> str:
    """PostgreSQL's form of the first release's bindings back-fill (see ``_own_tables``)."""
    return f"""
INSERT INTO {binding}
    (platform, account_id, record_key, order_id, primary_order_id, kind, rule, created_at)
SELECT LOWER(TRIM(a.platform)), a.id, o.exchange_order_id, o.id, o.id, 'order', 'backfill', NOW()
FROM {orders} o
JOIN {robots} r ON r.id = o.robot_id
JOIN {accounts} a ON a.id = r.api_config_id
WHERE o.exchange_order_id <> ''
  AND (o.order_sn = 'SX' || LEFT(encode(sha256(convert_to(
           LOWER(TRIM(a.platform)) || ':' || a.id || ':' || o.exchange_order_id, 'UTF8')),
           'hex'), 40)
       OR o.close_reason = 'exchange_sync')
ON CONFLICT DO NOTHING
"""  # noqa: S608 - table names only


# -- pg_dump ------------------------------------------------------------------------------------


def dump_command(
    url: URL, tool: str, tables: tuple[str, ...], lock_wait: int
) -> tuple[list[str], dict[str, str]]:
    """``pg_dump`` of ``tables``: one consistent snapshot, shared locks only (waited for at most
    ``lock_wait`` seconds); ``--clean --if-exists`` so ``psql -f FILE`` replaces the tables.
    The password travels in ``PGPASSWORD``, never on the command line."""
    argv = [
        tool,
        "--format=plain",
        "--clean",
        "--if-exists",
        "--no-owner",
        "--no-privileges",
        f"--lock-wait-timeout={max(1, lock_wait)}s",
    ]
    host = url.query.get("host") if url.host is None else url.host
    if isinstance(host, str):
        argv.append(f"--host={host}")
    if url.port:
        argv.append(f"--port={url.port}")
    if url.username:
        argv.append(f"--username={url.username}")
    argv.append("--no-password")  # never prompt: a missing password fails the dump
    argv += [f"--table={t}" for t in tables]
    argv.append(f"--dbname={url.database}")
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return argv, env
