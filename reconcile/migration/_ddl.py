"""Online DDL: ``uk_user_order``, the order columns and indexes, the daemon's own tables.

On MySQL/MariaDB (below); PostgreSQL builds the same with ``CREATE INDEX CONCURRENTLY`` on an
autocommit connection under ``lock_timeout`` (see ``_pg``). Each step is done completely or not
at all, on both, and re-running skips what exists.

On MySQL each ALTER is one statement, atomic in InnoDB: it either finished or left the table as
it was, so a failure half-way through ``add_unique_key`` leaves every earlier step done and the
failed one undone. Statements ask for ``ALGORITHM=INPLACE,
LOCK=NONE`` (writes go on while the index is built); if the server refuses, the step falls back
to the server's default algorithm with a ``online ddl refused`` warning, or fails with
``online_only``. The session's ``lock_wait_timeout`` (the metadata-lock wait) is kept short, so
an ALTER queued behind a long transaction gives up instead of stalling every query on the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import TextClause, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.errors import DatabaseError, DuplicateKey, ReconcileError, SchemaNotReady
from reconcile.migration import _pg
from reconcile.migration._common import (
    CONSUME,
    ORDERS,
    DuplicatesRemain,
    SchemaState,
    count_duplicates,
    require_server,
    schema_state,
)
from reconcile.storage.db import Database, map_db_errors
from reconcile.storage.schema import (
    POWER_INDEX,
    ROBOT_CLOSE_COLUMNS,
    ROBOT_CLOSE_INDEX,
    SWEEP_INDEX,
    UNIQUE_KEY,
    binding,
    create_own_schema,
    exchange_record,
    record_order_id,
    sweep_index_columns,
    trading_api_config,
    trading_robot,
)

log = structlog.get_logger("reconcile.migration")

ONLINE = "ALGORITHM=INPLACE, LOCK=NONE"
_NOT_ONLINE = frozenset({1845, 1846})  # ER_ALTER_OPERATION_NOT_SUPPORTED(_REASON)
BACKFILL_PAGE = 1000  # records read per statement by _backfill_record_orders


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


_MYSQL_PROGRESS = text(
    "SELECT STAGE, MAX_STAGE, PROGRESS, STATE FROM information_schema.PROCESSLIST WHERE ID = :id"
)


def _mysql_progress(row: Any) -> dict[str, Any]:
    return {"stage": f"{row[0]}/{row[1]}", "progress_pct": str(row[2]), "state": row[3]}


async def _watch(db: Database, conn_id: int, step: str, started: float, every: float) -> None:
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


def planned_ddl(state: SchemaState, *, pg: bool = False) -> list[tuple[str, str]]:
    """(step name, SQL) for what ``add_unique_key`` still has to do, in the order it does it.

    The SQL is as it runs: MySQL's without the ``ALGORITHM`` clause (``run_alter`` adds it);
    PostgreSQL's as the statements of the step, one a line (``_pg_step`` runs them in turn).
    """
    steps: list[tuple[str, str]] = []
    if state.unique_key_problem:
        raise SchemaNotReady(state.unique_key_problem)
    adds = []
    ine = " IF NOT EXISTS" if pg else ""
    if not state.order_columns["power_consumed"]:
        kind = "SMALLINT" if pg else "TINYINT"
        adds.append(f"ADD COLUMN{ine} power_consumed {kind} NOT NULL DEFAULT 0")
    if not state.order_columns["power_amount"]:
        kind = "NUMERIC(20,8)" if pg else "DECIMAL(20,8)"
        adds.append(f"ADD COLUMN{ine} power_amount {kind} NOT NULL DEFAULT 0")
    if adds:
        steps.append(("order columns", f"ALTER TABLE {ORDERS} {', '.join(adds)}"))

    def index(name: str, table: str, columns: str, *, unique: bool = False) -> str:
        if not pg:
            kind = "UNIQUE KEY" if unique else "INDEX"
            return f"ALTER TABLE {table} ADD {kind} {name} ({columns})"
        build = [f"DROP INDEX CONCURRENTLY IF EXISTS {name}"]  # left by a failed build
        if name not in state.invalid_indexes:
            build = []
        build.append(
            f"CREATE {'UNIQUE ' if unique else ''}INDEX CONCURRENTLY {name} ON {table} ({columns})"
        )
        if unique:
            build.append(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}")
        return "\n".join(build)

    if not state.power_index:
        steps.append(
            (POWER_INDEX, index(POWER_INDEX, ORDERS, "power_consumed, status, realized_profit"))
        )
    if not state.unique_key:
        steps.append((UNIQUE_KEY, index(UNIQUE_KEY, CONSUME, "user_id, order_id", unique=True)))
    if not state.sweep_index:
        columns = ", ".join(sweep_index_columns("postgresql"))
        steps.append((SWEEP_INDEX, index(SWEEP_INDEX, ORDERS, columns)))
    if not state.robot_close_index:
        columns = ", ".join(ROBOT_CLOSE_COLUMNS)
        steps.append((ROBOT_CLOSE_INDEX, index(ROBOT_CLOSE_INDEX, ORDERS, columns)))
    missing_own = [t for t, present in state.own_tables.items() if not present]
    if missing_own:
        steps.append(("own tables", f"CREATE TABLE IF NOT EXISTS {', '.join(missing_own)}"))
    return steps


def shown_sql(name: str, sql: str, *, pg: bool) -> str:
    """A step's SQL as the plan prints it: what will run, online clause included."""
    if pg or name == "own tables":
        return sql.replace("\n", ";\n    ")
    return f"{sql}, {ONLINE}"


def _needed(step: str) -> Callable[[AsyncConnection], Awaitable[bool]]:
    async def needed(conn: AsyncConnection) -> bool:
        plan = planned_ddl(await schema_state(conn), pg=_pg.is_pg(conn))
        return any(name == step for name, _ in plan)

    return needed


async def _pg_step(db: Database, name: str, options: DdlOptions) -> DdlStep:
    """One PostgreSQL step: its statements, as the catalog says they are still needed, on an
    autocommit connection; a build that fails drops the index it left behind (invalid), and a
    key that cannot become a constraint is dropped again - the step is all or nothing."""
    shown = ""

    async def unit(conn: AsyncConnection) -> bool:
        nonlocal shown
        plan = dict(planned_ddl(await schema_state(conn), pg=True))
        if name not in plan:
            return False
        statements = plan[name].split("\n")
        shown = shown_sql(name, plan[name], pg=True)
        pid = await _pg.backend_pid(conn)
        watcher = asyncio.create_task(
            _watch(db, pid, name, time.monotonic(), options.progress_every)
        )
        built: str | None = None
        try:
            for statement in statements:
                log.info("migrate statement", step=name, sql=statement)
                try:
                    await conn.exec_driver_sql(statement)
                except BaseException:
                    if built is not None or _pg.index_name(statement):
                        table = CONSUME if name == UNIQUE_KEY else ORDERS
                        await _pg.drop_index(
                            db, table, built or name, options.lock_wait, only_invalid=not built
                        )
                    raise
                built = _pg.index_name(statement) or built
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        return True

    log.info("migrate step", step=name, status="start")
    started = time.monotonic()
    done = await _pg.run_ddl(db, f"migrate {name}", unit, lock_wait=options.lock_wait)
    seconds = time.monotonic() - started
    log.info(
        "migrate step",
        step=name,
        status="done" if done else "already present",
        seconds=round(seconds, 3),
        online=True,
    )
    return DdlStep(name, shown, seconds=seconds, online=True, done=done)


async def add_unique_key(
    db: Database, *, dry_run: bool = False, options: DdlOptions | None = None
) -> AddKeyResult:
    """Add what the daemon needs: order columns and indexes, ``uk_user_order``, own tables.

    Refuses (``DuplicatesRemain``) while duplicates remain, before changing anything.
    """
    require_server(db)
    options = options or DdlOptions()

    async def inspect(conn: AsyncConnection) -> tuple[SchemaState, tuple[int, int]]:
        state = await schema_state(conn)
        dups = (0, 0) if state.unique_key else await count_duplicates(conn)
        return state, dups

    state, (groups, extra) = await db.transaction(inspect, what="migrate inspect schema")
    pg = db.dialect.is_postgresql
    plan = planned_ddl(state, pg=pg)
    if dry_run:
        return AddKeyResult(
            dry_run=True,
            steps=tuple(DdlStep(n, shown_sql(n, s, pg=pg)) for n, s in plan),
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
            if pg:
                done.append(await _pg_step(db, name, options))
            else:
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
PG_BACKFILL_BINDINGS = _pg.backfill_bindings_sql(
    binding.name, ORDERS, trading_robot.name, trading_api_config.name
)


async def _own_tables(db: Database, sql: str) -> DdlStep:
    async def create(conn: AsyncConnection) -> tuple[int, int]:
        await create_own_schema(conn)
        backfill = PG_BACKFILL_BINDINGS if _pg.is_pg(conn) else BACKFILL_BINDINGS
        bindings = int((await conn.execute(text(backfill))).rowcount)
        return bindings, await _backfill_record_orders(db, conn)

    started = time.monotonic()
    backfilled, order_ids = await db.transaction(create, what="migrate create own tables")
    seconds = time.monotonic() - started
    log.info(
        "migrate step",
        step="own tables",
        status="done",
        seconds=round(seconds, 3),
        bindings_backfilled=backfilled,
        record_order_ids_backfilled=order_ids,
    )
    return DdlStep("own tables", sql, seconds=seconds, done=True)


async def _backfill_record_orders(db: Database, conn: AsyncConnection) -> int:
    """The exchange order ids of the records kept before toogo_reconcile_record_order existed
    (their normalized JSON has them), so rule exchange_record of reconcile.trades sees the legs
    of trades synced before the upgrade. Idempotent: existing rows are left alone."""
    r = exchange_record.c
    insert = db.dialect.upsert(
        record_order_id, key=("platform", "account_id", "record_key", "exchange_order_id")
    )
    written, after = 0, 0
    while True:
        page = list(
            await conn.execute(
                select(r.id, r.platform, r.account_id, r.record_key, r.normalized_json)
                .where(r.id > after)
                .order_by(r.id)
                .limit(BACKFILL_PAGE)
            )
        )
        if not page:
            return written
        after = page[-1].id
        rows = [
            {"platform": p.platform, "account_id": p.account_id, "record_key": p.record_key,
             "exchange_order_id": str(ref)[:100]}
            for p in page
            for ref in sorted(set(json.loads(p.normalized_json).get("exchange_order_ids") or ()))
            if ref
        ]  # fmt: skip
        if rows:
            await conn.execute(insert, rows)
            written += len(rows)


async def drop_unique_key(db: Database, options: DdlOptions) -> DdlStep:
    if db.dialect.is_postgresql:
        return await _pg_drop_key(db, options)

    async def needed(conn: AsyncConnection) -> bool:
        return (await schema_state(conn)).unique_key

    return await run_alter(
        db,
        f"drop {UNIQUE_KEY}",
        f"ALTER TABLE {CONSUME} DROP INDEX {UNIQUE_KEY}",
        needed=needed,
        options=options,
    )


async def _pg_drop_key(db: Database, options: DdlOptions) -> DdlStep:
    """PostgreSQL: the constraint (with its index), or a plain or invalid index of that name."""
    name, shown = f"drop {UNIQUE_KEY}", ""

    async def unit(conn: AsyncConnection) -> bool:
        nonlocal shown
        state = await schema_state(conn)
        if not state.unique_key and UNIQUE_KEY not in state.invalid_indexes:
            return False
        shown = (
            f"ALTER TABLE {CONSUME} DROP CONSTRAINT {UNIQUE_KEY}"
            if state.key_constraint
            else f"DROP INDEX CONCURRENTLY IF EXISTS {UNIQUE_KEY}"
        )
        await conn.exec_driver_sql(shown)
        return True

    log.info("migrate step", step=name, status="start")
    started = time.monotonic()
    done = await _pg.run_ddl(db, f"migrate {name}", unit, lock_wait=options.lock_wait)
    seconds = time.monotonic() - started
    log.info("migrate step", step=name, status="done" if done else "already absent")
    return DdlStep(name, shown, seconds=seconds, online=True, done=done)


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
    require_server(db)

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
