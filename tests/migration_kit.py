"""The migration tests' legacy database, its seed, and what they need of each server.

The legacy shape: hotgo's tables from upstream's DDL (MySQL's, or PostgreSQL's with the power
columns as the operators' script adds them) without ``uk_user_order``, none of the daemon's own
tables, and duplicate consume rows (groups of 2-4) inserted in rounds, the way a sweep
re-charging orders produced them. Expected figures are computed here from the seeded rows,
independently of the code under test.

Where a test needs the server itself - a failing trigger, a second session holding a lock, the
list of sessions, a bulk of rows - the helpers below say it in each server's terms, so the tests
read (and assert) the same on both.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pymysql
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.databases import FAST_RETRY, mysql_admin, pg_dsn
from kits.upstream import create_upstream_pg_schema, create_upstream_schema
from reconcile import migration as m
from reconcile.storage.db import Database, DatabaseSettings
from reconcile.storage.schema import power_consume, trading_order, wallet

CONSUME = power_consume.name


@dataclass
class Legacy:
    """What was seeded: every consume row, and the wallets' starting balances."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # id, user_id, order_id, power
    wallets: dict[int, Decimal] = field(default_factory=dict)
    totals: dict[int, Decimal] = field(default_factory=dict)

    def groups(self) -> dict[tuple[int, int], list[dict[str, Any]]]:
        acc: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
        for r in sorted(self.rows, key=lambda r: r["id"]):
            acc[(r["user_id"], r["order_id"])].append(r)
        return {k: v for k, v in acc.items() if len(v) > 1}

    def extra_ids(self) -> set[int]:
        return {r["id"] for rs in self.groups().values() for r in rs[:-1]}

    def kept_ids(self) -> set[int]:
        extra = self.extra_ids()
        return {r["id"] for r in self.rows if r["id"] not in extra}

    def over_by_order(self) -> dict[tuple[int, int], Decimal]:
        return {
            k: sum((r["power"] for r in rs[:-1]), Decimal(0)) for k, rs in self.groups().items()
        }

    def over_by_user(self) -> dict[int, Decimal]:
        acc: dict[int, Decimal] = defaultdict(Decimal)
        for (uid, _), amount in self.over_by_order().items():
            acc[uid] += amount
        return dict(acc)


def is_pg(db: Database) -> bool:
    return db.dialect.is_postgresql


async def legacy_database(url: str, *, power_columns: bool = True, **settings: Any) -> Database:
    db = Database(DatabaseSettings(url=url, retry=settings.pop("retry", FAST_RETRY), **settings))
    await db.open()

    async def create(conn: AsyncConnection) -> None:
        # upstream's own DDL: no uk_user_order, none of the daemon's tables
        if is_pg(db):
            await create_upstream_pg_schema(
                conn, with_unique_key=False, own=False, power_columns=power_columns
            )
        else:
            await create_upstream_schema(conn, with_unique_key=False, own=False)

    try:
        await db.transaction(create, what="create legacy schema")
    except BaseException:  # a set-up that fails or skips leaves no connection behind
        await db.close()
        raise
    return db


async def seed_legacy(db: Database, *, orders: int = 24, users: int = 6, seed: int = 3) -> Legacy:
    """Orders of ``users`` users, each charged 1-4 times (sizes cycle so every size occurs);
    user ``users`` has no wallet row. Consume rows are inserted in rounds: ids interleave."""
    rnd = random.Random(seed)
    now = db.now()
    legacy = Legacy()
    order_rows, sizes = [], []
    for i in range(orders):
        uid = 1 + i % users
        order_rows.append(
            {
                "user_id": uid,
                "robot_id": 100 + uid,
                "order_sn": f"LG{seed}-{i}",
                "symbol": "BTCUSDT",
                "direction": "long",
                "open_price": Decimal("100"),
                "close_price": Decimal("101"),
                "quantity": Decimal("1"),
                "leverage": 10,
                "margin": Decimal("10"),
                "realized_profit": Decimal(rnd.randint(1, 99999)) / 100,
                "open_time": now - timedelta(hours=3),
                "close_time": now - timedelta(hours=2),
                "status": 2,
                "power_consumed": 1,
                "created_at": now,
                "updated_at": now,
            }
        )
        sizes.append(1 + (i * 7 + seed) % 4)
    for uid in range(1, users):
        legacy.wallets[uid] = Decimal(rnd.randint(0, 10**6)) / 100
        legacy.totals[uid] = Decimal(rnd.randint(0, 10**6)) / 100

    async def ins(conn: AsyncConnection) -> None:
        await conn.execute(trading_order.insert(), order_rows)
        ids = [
            r[0]
            for r in await conn.execute(select(trading_order.c.id).order_by(trading_order.c.id))
        ]
        await conn.execute(
            wallet.insert(),
            [
                {
                    "user_id": u,
                    "power": p,
                    "gift_power": Decimal("7"),
                    "total_power_consume": legacy.totals[u],
                }
                for u, p in legacy.wallets.items()
            ],
        )
        for round_no in range(4):
            batch = []
            for i, oid in enumerate(ids):
                if sizes[i] > round_no:
                    power = Decimal(rnd.randint(1, 10**8)) / 10**8 * (round_no + 1)
                    batch.append(
                        {
                            "user_id": order_rows[i]["user_id"],
                            "robot_id": 7,
                            "order_id": oid,
                            "order_sn": order_rows[i]["order_sn"],
                            "profit_amount": Decimal("1.5"),
                            "consume_rate": Decimal("0.1"),
                            "consume_power": power,
                            "from_power": power,
                            "original_power": power,
                            "created_at": now,
                        }
                    )
            rnd.shuffle(batch)
            for row in batch:
                result = await conn.execute(power_consume.insert().values(**row))
                legacy.rows.append(
                    {
                        "id": result.inserted_primary_key[0],  # type: ignore[index]
                        "user_id": row["user_id"],
                        "order_id": row["order_id"],
                        "power": row["consume_power"],
                    }
                )

    await db.transaction(ins, what="seed legacy")
    return legacy


async def fetch(db: Database, sql: str, **params: Any) -> list[Any]:
    async def read(conn: AsyncConnection) -> list[Any]:
        return list(await conn.execute(text(sql), params))

    return await db.transaction(read, what="test read")


async def execute(db: Database, sql: str, **params: Any) -> None:
    async def run(conn: AsyncConnection) -> None:
        await conn.execute(text(sql), params)

    await db.transaction(run, what="test execute")


def current_schema(db: Database) -> str:
    return "current_schema()" if is_pg(db) else "DATABASE()"


async def tables(db: Database) -> set[str]:
    rows = await fetch(
        db,
        "SELECT TABLE_NAME FROM information_schema.TABLES "
        f"WHERE TABLE_SCHEMA = {current_schema(db)}",
    )
    return {r[0] for r in rows}


async def indexes(db: Database) -> list[tuple[Any, ...]]:
    """(table, index, definition) of every index: what the migration's DDL changes."""
    if is_pg(db):
        sql = (
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema()"
        )
    else:
        sql = (
            "SELECT TABLE_NAME, INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = DATABASE()"
        )
    return sorted(tuple(r) for r in await fetch(db, sql))


async def snapshot(db: Database) -> dict[str, Any]:
    """Everything the migration may touch, for 'nothing changed' assertions."""
    names = sorted(await tables(db))
    snap: dict[str, Any] = {"tables": names, "indexes": await indexes(db)}
    for t in (
        "hg_toogo_power_consume",
        "hg_toogo_wallet",
        "hg_toogo_wallet_log",
        "hg_trading_order",
        "toogo_reconcile_refund",
        "toogo_reconcile_backup",
    ):
        if t in names:
            snap[t] = [tuple(r) for r in await fetch(db, f"SELECT * FROM {t} ORDER BY id")]
    return snap


async def wallets(db: Database) -> dict[int, tuple[Decimal, Decimal, Decimal]]:
    rows = await fetch(
        db, "SELECT user_id, power, total_power_consume, gift_power FROM hg_toogo_wallet"
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def assert_refund_ledger(
    ledger: list[Any],
    legacy: Legacy,
    start: dict[int, Decimal],
    change_type: str = m.REFUND,
    sign: int = 1,
) -> None:
    """One ledger row per over-charged order; amounts exact; before/after chained per user."""
    over = legacy.over_by_order()
    assert {(r.user_id, r.related_id) for r in ledger} == set(over)
    assert len(ledger) == len(over)
    running = dict(start)
    for r in sorted(ledger, key=lambda r: r.id):
        assert r.change_type == change_type and r.account_type == "power"
        assert r.related_type == "trading_order"
        assert r.change_amount == sign * over[(r.user_id, r.related_id)]
        assert r.before_amount == running.get(r.user_id, Decimal(0))
        assert r.after_amount == r.before_amount + r.change_amount
        running[r.user_id] = r.after_amount


async def refund_ledger(db: Database, change_type: str = m.REFUND) -> list[Any]:
    return await fetch(
        db, "SELECT * FROM hg_toogo_wallet_log WHERE change_type = :t ORDER BY id", t=change_type
    )


# -- the server's own means ---------------------------------------------------------------------


def database_name(db: Database) -> str:
    name = db.settings.sqlalchemy_url().database
    assert name
    return name


async def fail_trigger(db: Database, table: str, when: str, row_id: int | None = None) -> None:
    """A trigger ``trc_fail`` on ``table`` (``when``: BEFORE INSERT/UPDATE/DELETE) that fails
    the statement with 'injected failure' - for every row, or only the row with ``row_id``:
    ``SIGNAL`` on MySQL, a plpgsql ``RAISE EXCEPTION`` on PostgreSQL."""
    row = "OLD" if "DELETE" in when else "NEW"
    if is_pg(db):
        test = f"IF {row}.id = {row_id} THEN " if row_id is not None else "IF TRUE THEN "
        await execute(
            db,
            "CREATE OR REPLACE FUNCTION trc_fail() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {test}RAISE EXCEPTION 'injected failure'; END IF; RETURN {row}; END $$",
        )
        trigger = f"CREATE TRIGGER trc_fail {when} ON {table} FOR EACH ROW"
        await execute(db, f"{trigger} EXECUTE FUNCTION trc_fail()")
        return
    signal = "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected failure'"
    body = f"BEGIN IF {row}.id = {row_id} THEN {signal}; END IF; END" if row_id else signal
    await execute(
        db,
        f"CREATE TRIGGER trc_fail {when} ON `{database_name(db)}`.{table} FOR EACH ROW {body}",
    )


async def drop_fail_trigger(db: Database, table: str) -> None:
    await execute(db, f"DROP TRIGGER trc_fail ON {table}" if is_pg(db) else "DROP TRIGGER trc_fail")


async def bulk_consume_rows(db: Database, rows: int, *, user_offset: int = 0) -> None:
    """``rows`` distinct consume rows (no duplicates among them), so building an index takes a
    moment: MariaDB's sequence engine, PostgreSQL's generate_series."""
    source = f"generate_series(1, {rows}) AS s(seq)" if is_pg(db) else f"seq_1_to_{rows}"
    await execute(
        db,
        f"INSERT INTO {CONSUME} (user_id, robot_id, order_id, order_sn, profit_amount, "
        "consume_rate, consume_power, original_power) "
        f"SELECT {user_offset} + seq, 1, seq, 'bulk', 0.1, 0.1, 0.01, 0.01 FROM {source}",
    )


class Session:
    """A second client session of the test database, for holding locks the migration must
    wait for, and for looking at (and killing) the migration's own sessions."""

    def __init__(self, db: Database) -> None:
        self.db_name = database_name(db)
        self.pg = is_pg(db)
        self._my: pymysql.connections.Connection | None = None
        self._pg: asyncpg.Connection | None = None

    async def open(self) -> Session:
        if self.pg:
            self._pg = await asyncpg.connect(pg_dsn(self.db_name), timeout=5)
        else:
            self._my = mysql_admin()
            with self._my.cursor() as cur:
                cur.execute(f"USE `{self.db_name}`")
        return self

    async def close(self) -> None:
        if self._pg is not None:
            await self._pg.close()
        if self._my is not None:
            self._my.close()

    async def run(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """One statement; ``$1``-style placeholders (rewritten to ``%s`` for MySQL)."""
        if self._pg is not None:
            return [tuple(r) for r in await self._pg.fetch(sql, *params)]
        assert self._my is not None
        for n in range(len(params), 0, -1):
            sql = sql.replace(f"${n}", "%s")
        with self._my.cursor() as cur:
            cur.execute(sql, params or None)
            return list(cur.fetchall())

    async def begin(self) -> None:
        await self.run("BEGIN")

    async def commit(self) -> None:
        await self.run("COMMIT")

    async def rollback(self) -> None:
        await self.run("ROLLBACK")

    async def lock_wallet(self, user_id: int) -> None:
        await self.begin()
        await self.run("SELECT power FROM hg_toogo_wallet WHERE user_id = $1 FOR UPDATE", user_id)

    async def sessions(self) -> list[tuple[int, str]]:
        """(id, statement) of the other live sessions of this database."""
        if self.pg:  # a transaction sees one statistics snapshot unless told to drop it
            await self.run("SELECT pg_stat_clear_snapshot()")
            sql = (
                "SELECT pid, query FROM pg_stat_activity WHERE datname = $1 "
                "AND pid <> pg_backend_pid() AND state = 'active'"
            )
        else:
            sql = (
                "SELECT ID, INFO FROM information_schema.PROCESSLIST "
                "WHERE DB = $1 AND ID <> CONNECTION_ID() AND COMMAND <> 'Killed'"
            )
        return [(int(i), q or "") for i, q in await self.run(sql, self.db_name)]

    async def waiting(
        self,
        needle: str,
        task: asyncio.Task[Any],
        *,
        table: str = "hg_toogo_wallet",
        skip: int = 0,
        timeout: float = 10.0,
    ) -> int:
        """The id of a session running a statement on ``table`` that contains ``needle``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if task.done():
                raise AssertionError(f"the migration finished before it waited: {task.result()!r}")
            for session_id, query in await self.sessions():
                if session_id != skip and needle in query and table in query:
                    return session_id
            await asyncio.sleep(0.01)
        raise AssertionError(f"no session running {needle!r} on {table}")

    async def kill(self, session_id: int) -> None:
        if self.pg:
            await self.run("SELECT pg_terminate_backend($1)", session_id)
        else:
            await self.run(f"KILL CONNECTION {int(session_id)}")


#: how the unique key's build starts, as the server lists the running statement
KEY_BUILD = {
    "mysql": "ALTER TABLE hg_toogo_power_consume ADD UNIQUE",
    "postgresql": "CREATE UNIQUE INDEX CONCURRENTLY uk_user_order",
}
