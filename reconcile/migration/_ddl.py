"""Online DDL: ``uk_user_order``, the order columns and indexes, the daemon's own tables.

Each ALTER is one statement, atomic in InnoDB: it either finished or left the table as it was,
so a failure half-way through ``add_unique_key`` leaves every earlier step done and the failed
one undone, and re-running skips what exists. Statements ask for ``ALGORITHM=INPLACE,
LOCK=NONE`` (writes go on while the index is built); if the server refuses, the step falls back
to the server's default algorithm with a ``online ddl refused`` warning, or fails with
``online_only``. The session's ``lock_wait_timeout`` (the metadata-lock wait) is kept short, so
an ALTER queued behind a long transaction gives up instead of stalling every query on the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.db import Database, map_db_errors
from reconcile.errors import DatabaseError, DuplicateKey, ReconcileError, SchemaNotReady
from reconcile.migration._common import (
    CONSUME,
    ORDERS,
    DuplicatesRemain,
    SchemaState,
    count_duplicates,
    require_mysql,
    schema_state,
)
from reconcile.schema import (
    POWER_INDEX,
    SWEEP_INDEX,
    SWEEP_INDEX_COLUMNS,
    UNIQUE_KEY,
    binding,
    create_own_schema,
    trading_api_config,
    trading_robot,
)

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


@dataclass(frozen=True)
class AddKeyResult:
    dry_run: bool
    steps: tuple[DdlStep, ...] = ()
    seconds: float = 0.0
    duplicate_groups: int = 0
    extra_rows: int = 0

    @property
    def changed(self) -> bool:
        return any(s.done for s in self.steps)

    def step(self, name: str) -> DdlStep | None:
        return next((s for s in self.steps if s.name == name), None)


def _driver_code(exc: BaseException) -> int | None:
    cause = exc.__cause__
    orig = getattr(cause, "orig", None)
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


async def _watch(db: Database, conn_id: int, step: str, started: float, every: float) -> None:
    """Log MariaDB's own progress figures for the running ALTER every ``every`` seconds."""
    query = text(
        "SELECT STAGE, MAX_STAGE, PROGRESS, STATE FROM information_schema.PROCESSLIST "
        "WHERE ID = :id"
    )
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
            fields.update(stage=f"{row[0]}/{row[1]}", progress_pct=str(row[2]), state=row[3])
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
                    _watch(db, conn_id, name, time.monotonic(), options.progress_every)
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


def planned_ddl(state: SchemaState) -> list[tuple[str, str]]:
    """(step name, SQL) for what ``add_unique_key`` still has to do, in the order it does it."""
    steps: list[tuple[str, str]] = []
    if state.unique_key_problem:
        raise SchemaNotReady(state.unique_key_problem)
    adds = []
    if not state.order_columns["power_consumed"]:
        adds.append("ADD COLUMN power_consumed TINYINT NOT NULL DEFAULT 0")
    if not state.order_columns["power_amount"]:
        adds.append("ADD COLUMN power_amount DECIMAL(20,8) NOT NULL DEFAULT 0")
    if adds:
        steps.append(("order columns", f"ALTER TABLE {ORDERS} {', '.join(adds)}"))
    if not state.power_index:
        steps.append(
            (
                POWER_INDEX,
                f"ALTER TABLE {ORDERS} ADD INDEX {POWER_INDEX} "
                "(power_consumed, status, realized_profit)",
            )
        )
    if not state.unique_key:
        steps.append(
            (UNIQUE_KEY, f"ALTER TABLE {CONSUME} ADD UNIQUE KEY {UNIQUE_KEY} (user_id, order_id)")
        )
    if not state.sweep_index:
        steps.append(
            (
                SWEEP_INDEX,
                f"ALTER TABLE {ORDERS} ADD INDEX {SWEEP_INDEX} ({', '.join(SWEEP_INDEX_COLUMNS)})",
            )
        )
    missing_own = [t for t, present in state.own_tables.items() if not present]
    if missing_own:
        steps.append(("own tables", f"CREATE TABLE IF NOT EXISTS {', '.join(missing_own)}"))
    return steps


def _needed(step: str) -> Callable[[AsyncConnection], Awaitable[bool]]:
    async def needed(conn: AsyncConnection) -> bool:
        return any(name == step for name, _ in planned_ddl(await schema_state(conn)))

    return needed


async def add_unique_key(
    db: Database, *, dry_run: bool = False, options: DdlOptions | None = None
) -> AddKeyResult:
    """Add what the daemon needs: order columns and indexes, ``uk_user_order``, own tables.

    Refuses (``DuplicatesRemain``) while duplicates remain, before changing anything.
    """
    require_mysql(db)
    options = options or DdlOptions()

    async def inspect(conn: AsyncConnection) -> tuple[SchemaState, tuple[int, int]]:
        state = await schema_state(conn)
        dups = (0, 0) if state.unique_key else await count_duplicates(conn)
        return state, dups

    state, (groups, extra) = await db.transaction(inspect, what="migrate inspect schema")
    plan = planned_ddl(state)
    if dry_run:
        return AddKeyResult(
            dry_run=True,
            steps=tuple(DdlStep(n, s) for n, s in plan),
            duplicate_groups=groups,
            extra_rows=extra,
        )
    if groups and any(name == UNIQUE_KEY for name, _ in plan):
        raise DuplicatesRemain(groups, extra)
    started = time.monotonic()
    done: list[DdlStep] = []
    for name, sql in plan:
        if name == "own tables":
            done.append(await _own_tables(db, sql))
            continue
        try:
            done.append(await run_alter(db, name, sql, needed=_needed(name), options=options))
        except DuplicateKey as exc:

            async def recount(conn: AsyncConnection) -> tuple[int, int]:
                return await count_duplicates(conn)

            g, e = await db.transaction(recount, what="migrate count duplicates")
            raise DuplicatesRemain(g, e, during_alter=True) from exc
    seconds = time.monotonic() - started
    log.info(
        "migrate add-unique-key done",
        seconds=round(seconds, 3),
        steps=[s.name for s in done if s.done],
    )
    return AddKeyResult(dry_run=False, steps=tuple(done), seconds=seconds)


# The first release linked a record to an order through hg_trading_order itself: orders it
# inserted carry order_sn = "SX" + sha256(platform:account:record key)[:40] with the record key
# in exchange_order_id, and orders it closed carry close_reason 'exchange_sync' with the record
# key in exchange_order_id where that was empty. Their bindings are back-filled, so an upgrade
# inserts and charges nothing twice. (Engine orders whose empty exchange_order_id it filled with
# a record key cannot be told apart here: the matching rules compare record keys with
# exchange_order_id for them - reconcile.matching, rule b.)
BACKFILL_BINDINGS = f"""
INSERT INTO {binding.name}
    (platform, account_id, record_key, order_id, primary_order_id, kind, rule, created_at)
SELECT LOWER(TRIM(a.platform)), a.id, o.exchange_order_id, o.id, o.id, 'order', 'backfill', NOW()
FROM {ORDERS} o
JOIN {trading_robot.name} r ON r.id = o.robot_id
JOIN {trading_api_config.name} a ON a.id = r.api_config_id
WHERE o.exchange_order_id <> ''
  AND (o.order_sn = CONCAT('SX', LEFT(SHA2(CONCAT(LOWER(TRIM(a.platform)), ':', a.id, ':',
                                                o.exchange_order_id), 256), 40))
       OR o.close_reason = 'exchange_sync')
ON DUPLICATE KEY UPDATE {binding.name}.id = {binding.name}.id
"""  # noqa: S608 - table names only


async def _own_tables(db: Database, sql: str) -> DdlStep:
    async def create(conn: AsyncConnection) -> int:
        await create_own_schema(conn)
        return int((await conn.execute(text(BACKFILL_BINDINGS))).rowcount)

    started = time.monotonic()
    backfilled = await db.transaction(create, what="migrate create own tables")
    seconds = time.monotonic() - started
    log.info(
        "migrate step",
        step="own tables",
        status="done",
        seconds=round(seconds, 3),
        bindings_backfilled=backfilled,
    )
    return DdlStep("own tables", sql, seconds=seconds, done=True)


async def drop_unique_key(db: Database, options: DdlOptions) -> DdlStep:
    async def needed(conn: AsyncConnection) -> bool:
        return (await schema_state(conn)).unique_key

    return await run_alter(
        db,
        f"drop {UNIQUE_KEY}",
        f"ALTER TABLE {CONSUME} DROP INDEX {UNIQUE_KEY}",
        needed=needed,
        options=options,
    )


@dataclass(frozen=True)
class VerifyResult:
    duplicate_groups: int
    extra_rows: int
    unique_key: bool
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify(db: Database) -> VerifyResult:
    """The runbook's verification: no duplicate (user_id, order_id) rows, and the key exists."""
    require_mysql(db)

    async def read(conn: AsyncConnection) -> tuple[SchemaState, tuple[int, int]]:
        return await schema_state(conn), await count_duplicates(conn)

    state, (groups, extra) = await db.transaction(read, what="migrate verify")
    problems = []
    if groups:
        problems.append(
            f"{CONSUME} has {groups} duplicate (user_id, order_id) groups ({extra} extra rows)"
        )
    if state.unique_key_problem:
        problems.append(state.unique_key_problem)
    elif not state.unique_key:
        problems.append(f"{CONSUME} has no unique key {UNIQUE_KEY}")
    result = VerifyResult(groups, extra, state.unique_key, tuple(problems))
    log.info(
        "migrate verify",
        ok=result.ok,
        duplicate_groups=groups,
        extra_rows=extra,
        unique_key=state.unique_key,
    )
    return result
