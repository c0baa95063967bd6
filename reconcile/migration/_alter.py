"""Running one DDL statement online on MySQL/MariaDB, and watching any DDL's progress.

On MySQL each ALTER is one statement, atomic in InnoDB: it either finished or left the table as
it was, so a failure half-way through ``add_unique_key`` leaves every earlier step done and the
failed one undone. Statements ask for ``ALGORITHM=INPLACE, LOCK=NONE`` (writes go on while the
index is built); if the server refuses, the step falls back to the server's default algorithm
with a ``online ddl refused`` warning, or fails with ``online_only``. The session's
``lock_wait_timeout`` (the metadata-lock wait) is kept short, so an ALTER queued behind a long
transaction gives up instead of stalling every query on the table. While a statement runs, the
server's own progress figures are logged (MariaDB's stage and percentage; PostgreSQL's
pg_stat_progress_create_index for the steps of ``_ddl``). See docs/cutover.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import TextClause, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.errors import DatabaseError, DuplicateKey, ReconcileError
from reconcile.migration import _pg
from reconcile.storage.db import Database, map_db_errors

log = structlog.get_logger("reconcile.migration")

ONLINE = "ALGORITHM=INPLACE, LOCK=NONE"
_NOT_ONLINE = frozenset({1845, 1846})  # ER_ALTER_OPERATION_NOT_SUPPORTED(_REASON)


@dataclass(frozen=True)
class DdlOptions:
    online_only: bool = False
    lock_wait: float = 5.0  # seconds an ALTER may wait for the table's metadata lock
    progress_every: float = 5.0


@dataclass(frozen=True)
class DdlStep:
    name: str
    sql: str
    seconds: float = 0.0
    online: bool = True
    done: bool = False


def _driver_code(exc: BaseException) -> int | None:
    cause = exc.__cause__
    orig = getattr(cause, "orig", None)
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


_MYSQL_PROGRESS = text(
    "SELECT STAGE, MAX_STAGE, PROGRESS, STATE FROM information_schema.PROCESSLIST WHERE ID = :id"
)


def _mysql_progress(row: Any) -> dict[str, Any]:
    return {"stage": f"{row[0]}/{row[1]}", "progress_pct": str(row[2]), "state": row[3]}


async def watch_progress(
    db: Database, conn_id: int, step: str, started: float, every: float
) -> None:
    """Log the server's own progress figures for the running DDL every ``every`` seconds
    (MariaDB's stage and percentage; PostgreSQL's pg_stat_progress_create_index)."""
    pg = db.dialect.is_postgresql
    query: TextClause = _pg.PROGRESS if pg else _MYSQL_PROGRESS
    fields_of = _pg.progress_fields if pg else _mysql_progress
    while True:
        await asyncio.sleep(every)
        try:
            with map_db_errors("read DDL progress"):
                async with db.engine.connect() as conn:
                    row = (await conn.execute(query, {"id": conn_id})).first()
        except ReconcileError as exc:
            log.debug("ddl progress unavailable", step=step, error=str(exc))
            continue
        fields = {"step": step, "elapsed_s": round(time.monotonic() - started, 1)}
        if row is not None:
            fields.update(fields_of(row))
        log.info("migrate progress", **fields)


async def run_alter(
    db: Database,
    name: str,
    sql: str,
    *,
    needed: Callable[[AsyncConnection], Awaitable[bool]],
    options: DdlOptions,
) -> DdlStep:
    """Run one DDL statement (``sql`` without the ALGORITHM clause) unless ``needed`` says no.

    ``needed`` is asked again inside every attempt, so a retry after a lost connection (the
    statement may have finished) does not run it twice.
    """

    async def attempt(statement: str) -> bool:
        async def unit(conn: AsyncConnection) -> bool:
            if not await needed(conn):
                return False
            wait = max(1, round(options.lock_wait))
            await conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {wait}")
            try:
                conn_id = int((await conn.exec_driver_sql("SELECT CONNECTION_ID()")).scalar_one())
                watcher = asyncio.create_task(
                    watch_progress(db, conn_id, name, time.monotonic(), options.progress_every)
                )
                try:
                    await conn.exec_driver_sql(statement)
                finally:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
            finally:
                with contextlib.suppress(sa_exc.SQLAlchemyError):
                    await conn.exec_driver_sql("SET SESSION lock_wait_timeout = DEFAULT")
            return True

        return await db.transaction(unit, what=f"migrate {name}")

    online_sql = f"{sql}, {ONLINE}" if sql.startswith("ALTER") else f"{sql} {ONLINE}"
    log.info("migrate step", step=name, sql=online_sql, status="start")
    started = time.monotonic()
    online = True
    try:
        done = await attempt(online_sql)
    except DatabaseError as exc:
        if _driver_code(exc) not in _NOT_ONLINE or isinstance(exc, DuplicateKey):
            raise
        if options.online_only:
            raise DatabaseError(
                f"{name}: the server refuses online DDL ({exc}); re-run without --online-only "
                "to accept a locking ALTER (writes to the table wait while it runs)"
            ) from exc
        log.warning(
            "online ddl refused",
            step=name,
            detail=str(exc),
            fallback="server default algorithm; writes may wait until it finishes",
        )
        online = False
        done = await attempt(sql)
    seconds = time.monotonic() - started
    log.info(
        "migrate step",
        step=name,
        status="done" if done else "already present",
        seconds=round(seconds, 3),
        online=online,
    )
    return DdlStep(name, online_sql if online else sql, seconds=seconds, online=online, done=done)


__all__ = ["ONLINE", "DdlOptions", "DdlStep", "run_alter", "watch_progress"]
