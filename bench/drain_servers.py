"""The two servers bench/drain.py drains a backlog on, MariaDB/MySQL and PostgreSQL: each one's
seed (in SQL on the server), its set-based reference (four statements doing the sweep's work in
one transaction, in that server's own SQL) and the ledger checks both drains are verified by.
``charge_set_based`` is also bench/bench_history.py's reference. The figures: BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pymysql
from sqlalchemy.engine import URL, make_url

from kits.upstream import create_upstream_pg_schema, create_upstream_schema

LOOKBACK_DAYS = 7  # the shipped sweep.lookback: the reference charges the same window
#: BENCH_ENGINE_IDS=1: every order carries an opening order id in exchange_order_id, as the
#: engine's rows do - each is then judged in full by reconcile.trades (rules close_order_id,
#: exchange_record and shape need one); without it the orders have none (a leg always has one)
ENGINE_IDS = os.environ.get("BENCH_ENGINE_IDS") == "1"

T = TypeVar("T")


# -- MariaDB / MySQL ----------------------------------------------------------------------------


def charge_set_based(cur: Any, where: str = "") -> None:
    """The four set-based charging statements in MySQL (same formula and rounding as the
    consumer): consume rows, ledger rows with their before/after by window functions, wallets,
    order flags. ``where`` narrows the orders (an SQL condition on ``o``, e.g. the look-back).
    Also used by bench_history's reference."""
    cur.execute(f"""INSERT INTO hg_toogo_power_consume (user_id, robot_id, order_id, order_sn,
        profit_amount, consume_rate, consume_power, from_power, vip_level, discount_rate,
        original_power, created_at)
        SELECT o.user_id, o.robot_id, o.id, o.order_sn, o.realized_profit, 0.10,
          GREATEST(ROUND(o.realized_profit * 0.10 * (1 - LEAST(GREATEST(
            COALESCE(u.power_discount, 0), 0), 100) / 100), 8), 0.01),
          GREATEST(ROUND(o.realized_profit * 0.10 * (1 - LEAST(GREATEST(
            COALESCE(u.power_discount, 0), 0), 100) / 100), 8), 0.01),
          COALESCE(u.vip_level, 1), COALESCE(u.power_discount, 0),
          ROUND(o.realized_profit * 0.10, 8), NOW()
        FROM hg_trading_order o LEFT JOIN hg_toogo_user u ON u.member_id = o.user_id
        WHERE o.power_consumed = 0 AND o.status = 2 AND o.realized_profit > 0
          {f"AND {where}" if where else ""}""")
    cur.execute("""INSERT INTO hg_toogo_wallet_log (user_id, account_type, change_type,
        change_amount, before_amount, after_amount, related_id, related_type, order_sn,
        created_at)
        SELECT c.user_id, 'power', 'power_consume', -c.consume_power,
          w.power - (SUM(c.consume_power) OVER (PARTITION BY c.user_id ORDER BY c.id)
                     - c.consume_power),
          w.power - SUM(c.consume_power) OVER (PARTITION BY c.user_id ORDER BY c.id),
          c.order_id, 'trading_order', c.order_sn, NOW()
        FROM hg_toogo_power_consume c JOIN hg_toogo_wallet w ON w.user_id = c.user_id
        ORDER BY c.user_id, c.id""")
    cur.execute("""UPDATE hg_toogo_wallet w JOIN (SELECT user_id, SUM(consume_power) AS s
        FROM hg_toogo_power_consume GROUP BY user_id) d ON d.user_id = w.user_id
        SET w.power = w.power - d.s, w.total_power_consume = w.total_power_consume + d.s""")
    cur.execute("""UPDATE hg_trading_order o JOIN hg_toogo_power_consume c
        ON c.user_id = o.user_id AND c.order_id = o.id
        SET o.power_consumed = 1, o.power_amount = c.consume_power""")


class MySQLServer:
    """The MariaDB/MySQL side: pymysql for the bench's own SQL, upstream's MySQL DDL."""

    label = "MariaDB"

    def __init__(self, url: URL) -> None:
        self.url = url.set(drivername="mysql+aiomysql", database=None)

    def admin(self, db: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.url.host or "127.0.0.1",
            port=self.url.port or 3306,
            user=self.url.username or "root",
            password=self.url.password or "",
            database=db,
            autocommit=True,
        )

    def daemon_url(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    def create(self, name: str) -> None:
        with self.admin().cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")

    def drop(self, name: str) -> None:
        with self.admin().cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")

    async def create_schema(self, conn: Any) -> None:
        await create_upstream_schema(conn, with_unique_key=True)

    def seed(self, name: str, orders: int, users: int) -> None:
        conn = self.admin(name)
        with conn.cursor() as cur:
            cur.execute(f"""INSERT INTO hg_toogo_wallet (user_id, power, gift_power,
                total_power_consume, created_at, updated_at)
                SELECT seq, 1000 + (seq % 97), 5, 0, NOW(), NOW() FROM seq_1_to_{users}""")
            cur.execute(f"""INSERT INTO hg_toogo_user (member_id, vip_level, power_discount,
                invite_code)
                SELECT seq, 2 + seq % 4, (seq * 37) % 5000 / 100, CONCAT('B', seq)
                FROM seq_1_to_{users}
                WHERE seq % 5 = 0""")
            ids = ("exchange_order_id, ", "CONCAT('1', LPAD(seq, 17, '0')), ")
            if not ENGINE_IDS:
                ids = ("", "")
            cur.execute(f"""INSERT INTO hg_trading_order (user_id, robot_id, order_sn, symbol,
                {ids[0]}direction, open_price, close_price, quantity, leverage, margin,
                realized_profit, open_time, close_time, status, power_consumed, power_amount,
                created_at, updated_at)
                SELECT 1 + seq % {users}, 1000 + seq % {users}, CONCAT('TO', seq), 'BTCUSDT',
                    {ids[1]}
                    'long', 100, 101, 0.01, 10, 0.1, 1 + (seq * 7919) % 500000 / 10000,
                    NOW() - INTERVAL (seq % 500000 + 3600) SECOND,
                    NOW() - INTERVAL (seq % 500000) SECOND, 2, 0, 0, NOW(), NOW()
                FROM seq_1_to_{orders}""")
            cur.execute("ANALYZE TABLE hg_trading_order")
        conn.close()

    def verify(self, name: str, orders: int) -> Any:
        conn = self.admin(name)
        with conn.cursor() as cur:
            results = []
            for query in VERIFY_QUERIES:
                cur.execute(query.format(pair="user_id, order_id"))
                results.append(cur.fetchone())
        conn.close()
        return check(results, orders)

    def reference(self, name: str) -> float:
        """Four set-based statements, one transaction, same formula and rounding."""
        conn = self.admin(name)
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            charge_set_based(cur, f"o.close_time >= NOW() - INTERVAL {LOOKBACK_DAYS} DAY")
            cur.execute("COMMIT")
        elapsed = time.perf_counter() - started
        conn.close()
        return elapsed


# -- PostgreSQL ---------------------------------------------------------------------------------


def pg_charge_statements(where: str = "") -> tuple[str, ...]:
    """The same four set-based charging statements in PostgreSQL: INSERT ... SELECT of the
    consume rows, INSERT ... SELECT of the ledger with the before/after chain by window
    functions, UPDATE ... FROM of the wallets (per-user sums) and of the orders. ROUND on
    NUMERIC rounds half away from zero: ROUND_HALF_UP for these positive amounts; the divisions
    are NUMERIC (exact for these scales), not integer."""
    return (
        f"""INSERT INTO hg_toogo_power_consume (user_id, robot_id, order_id, order_sn,
        profit_amount, consume_rate, consume_power, from_power, vip_level, discount_rate,
        original_power, created_at)
        SELECT o.user_id, o.robot_id, o.id, o.order_sn, o.realized_profit, 0.10,
          GREATEST(ROUND(o.realized_profit * 0.10 * (1 - LEAST(GREATEST(
            COALESCE(u.power_discount, 0), 0), 100) / 100.0), 8), 0.01),
          GREATEST(ROUND(o.realized_profit * 0.10 * (1 - LEAST(GREATEST(
            COALESCE(u.power_discount, 0), 0), 100) / 100.0), 8), 0.01),
          COALESCE(u.vip_level, 1), COALESCE(u.power_discount, 0),
          ROUND(o.realized_profit * 0.10, 8), LOCALTIMESTAMP
        FROM hg_trading_order o LEFT JOIN hg_toogo_user u ON u.member_id = o.user_id
        WHERE o.power_consumed = 0 AND o.status = 2 AND o.realized_profit > 0
          {f"AND {where}" if where else ""}""",
        """INSERT INTO hg_toogo_wallet_log (user_id, account_type, change_type,
        change_amount, before_amount, after_amount, related_id, related_type, order_sn,
        created_at)
        SELECT c.user_id, 'power', 'power_consume', -c.consume_power,
          w.power - (SUM(c.consume_power) OVER (PARTITION BY c.user_id ORDER BY c.id)
                     - c.consume_power),
          w.power - SUM(c.consume_power) OVER (PARTITION BY c.user_id ORDER BY c.id),
          c.order_id, 'trading_order', c.order_sn, LOCALTIMESTAMP
        FROM hg_toogo_power_consume c JOIN hg_toogo_wallet w ON w.user_id = c.user_id
        ORDER BY c.user_id, c.id""",
        """UPDATE hg_toogo_wallet w
        SET power = w.power - d.s, total_power_consume = w.total_power_consume + d.s
        FROM (SELECT user_id, SUM(consume_power) AS s FROM hg_toogo_power_consume
              GROUP BY user_id) d
        WHERE d.user_id = w.user_id""",
        """UPDATE hg_trading_order o SET power_consumed = 1, power_amount = c.consume_power
        FROM hg_toogo_power_consume c
        WHERE c.user_id = o.user_id AND c.order_id = o.id""",
    )


class PostgresServer:
    """The PostgreSQL side: asyncpg for the bench's own SQL, upstream's PostgreSQL DDL."""

    label = "PostgreSQL"

    def __init__(self, url: URL) -> None:
        self.url = url.set(drivername="postgresql+asyncpg", database=None)

    def dsn(self, db: str = "postgres") -> str:
        return self.url.set(drivername="postgresql", database=db).render_as_string(
            hide_password=False
        )

    def daemon_url(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    def run(self, db: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def go() -> T:
            conn = await asyncpg.connect(self.dsn(db), timeout=10)
            try:
                return await work(conn)
            finally:
                await conn.close()

        return asyncio.run(go())

    def execute(self, db: str, *statements: str) -> None:
        async def work(conn: asyncpg.Connection) -> None:
            for statement in statements:
                await conn.execute(statement)

        self.run(db, work)

    def create(self, name: str) -> None:
        self.execute("postgres", f'CREATE DATABASE "{name}"')

    def drop(self, name: str) -> None:
        self.execute("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def create_schema(self, conn: Any) -> None:
        await create_upstream_pg_schema(conn, with_unique_key=True)

    def seed(self, name: str, orders: int, users: int) -> None:
        """The same rows as the MySQL seed: generate_series for the sequence engine, NUMERIC
        divisions where MySQL's `/` gives decimals, intervals from make_interval. VACUUM
        ANALYZE afterwards (MySQL's path runs ANALYZE TABLE): fresh statistics, and no
        autovacuum of the just-loaded table landing in the middle of the measurement."""
        ids = ("exchange_order_id, ", "'1' || LPAD(g::text, 17, '0'), ")
        if not ENGINE_IDS:
            ids = ("", "")
        self.execute(
            name,
            f"""INSERT INTO hg_toogo_wallet (user_id, power, gift_power, total_power_consume,
                created_at, updated_at)
                SELECT g, 1000 + (g % 97), 5, 0, LOCALTIMESTAMP, LOCALTIMESTAMP
                FROM generate_series(1, {users}) g""",
            f"""INSERT INTO hg_toogo_user (member_id, vip_level, power_discount, invite_code)
                SELECT g, 2 + g % 4, (g * 37) % 5000 / 100.0, 'B' || g
                FROM generate_series(1, {users}) g
                WHERE g % 5 = 0""",
            f"""INSERT INTO hg_trading_order (user_id, robot_id, order_sn, symbol,
                {ids[0]}direction, open_price, close_price, quantity, leverage, margin,
                realized_profit, open_time, close_time, status, power_consumed, power_amount,
                created_at, updated_at)
                SELECT 1 + g % {users}, 1000 + g % {users}, 'TO' || g, 'BTCUSDT',
                    {ids[1]}
                    'long', 100, 101, 0.01, 10, 0.1, 1 + (g * 7919) % 500000 / 10000.0,
                    NOW() - make_interval(secs => g % 500000 + 3600),
                    NOW() - make_interval(secs => g % 500000), 2, 0, 0, NOW(), NOW()
                FROM generate_series(1::bigint, {orders}) g""",
            "VACUUM ANALYZE",
        )

    def verify(self, name: str, orders: int) -> Any:
        async def work(conn: asyncpg.Connection) -> list[Any]:
            queries = [q.format(pair="(user_id, order_id)") for q in VERIFY_QUERIES]
            return [tuple(await conn.fetchrow(query)) for query in queries]

        return check(self.run(name, work), orders)

    def reference(self, name: str) -> float:
        """Four set-based statements, one transaction, same formula and rounding."""
        statements = pg_charge_statements(
            f"o.close_time >= NOW() - INTERVAL '{LOOKBACK_DAYS} days'"
        )

        async def work(conn: asyncpg.Connection) -> float:
            started = time.perf_counter()
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement)
            return time.perf_counter() - started

        return self.run(name, work)


Server = MySQLServer | PostgresServer


def server_for(url: str) -> Server:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "mysql":
        return MySQLServer(parsed)
    if backend in ("postgresql", "postgres"):
        return PostgresServer(parsed.set(drivername="postgresql"))
    raise SystemExit(f"--db: not a MySQL or PostgreSQL URL: {url}")


# -- the checks -------------------------------------------------------------------------------

#: written once, in SQL both servers run; ``{pair}`` is the distinct (user, order) pair, which
#: MySQL writes ``a, b`` and PostgreSQL as a row ``(a, b)``
VERIFY_QUERIES = (
    "SELECT COUNT(*), COUNT(DISTINCT {pair}), SUM(consume_power) FROM hg_toogo_power_consume",
    "SELECT COUNT(*), -SUM(change_amount) FROM hg_toogo_wallet_log",
    "SELECT SUM(1000 + (user_id % 97) - power), SUM(total_power_consume) FROM hg_toogo_wallet",
    "SELECT COUNT(*) FROM hg_trading_order o JOIN hg_toogo_power_consume c"
    " ON c.user_id = o.user_id AND c.order_id = o.id"
    " WHERE o.power_consumed = 1 AND o.power_amount = c.consume_power",
    # before/after chains: each user's rows, in id order, continue one another
    "SELECT COUNT(*) FROM (SELECT before_amount, LAG(after_amount) OVER"
    " (PARTITION BY user_id ORDER BY id) AS prev FROM hg_toogo_wallet_log) t"
    " WHERE prev IS NOT NULL AND prev <> before_amount",
)


def check(results: list[Any], orders: int) -> Any:
    """One consume row per order, the ledger's sum is the consume rows', wallets debited by
    exactly that, every order flagged with its amount, every user's chain unbroken. Returns the
    total charged (the sweep's and the reference's must be equal: the seed is the same)."""
    (n, distinct, total), (ledger, logged), (debited, consumed), (flagged,), (breaks,) = results
    assert n == distinct == orders, (n, distinct, orders)
    assert ledger == orders and logged == total, (ledger, logged, total)
    assert debited == consumed == total, (debited, consumed, total)
    assert flagged == orders, (flagged, orders)
    assert breaks == 0, breaks
    return total
