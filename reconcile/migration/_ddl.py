"""Online DDL: ``uk_user_order``, the order columns and indexes, the daemon's own tables - the
plan of what ``add_unique_key`` still has to do, its steps in turn, dropping the key again, and
the runbook's verification.

On MySQL/MariaDB each step is one ALTER run by ``_alter`` (online, atomic in InnoDB); PostgreSQL
builds the same with ``CREATE INDEX CONCURRENTLY`` on an autocommit connection under
``lock_timeout`` (see ``_pg``). Each step is done completely or not at all, on both, and
re-running skips what exists. The own tables' step and its back-fills are in ``_own_tables``.
See docs/cutover.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.errors import DuplicateKey, SchemaNotReady
from reconcile.migration import _pg
from reconcile.migration._alter import ONLINE, DdlOptions, DdlStep, run_alter, watch_progress
from reconcile.migration._common import CONSUME, ORDERS, SchemaState, require_server, schema_state
from reconcile.migration._duplicates import DuplicatesRemain, count_duplicates
from reconcile.migration._own_tables import create_own_tables
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    POWER_INDEX,
    ROBOT_CLOSE_COLUMNS,
    ROBOT_CLOSE_INDEX,
    SWEEP_INDEX,
    UNIQUE_KEY,
    sweep_index_columns,
)

log = structlog.get_logger("reconcile.migration")


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
            watch_progress(db, pid, name, time.monotonic(), options.progress_every)
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
            done.append(await create_own_tables(db, sql))
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


__all__ = [
    "AddKeyResult",
    "VerifyResult",
    "add_unique_key",
    "drop_unique_key",
    "planned_ddl",
    "shown_sql",
    "verify",
]
