"""`toogo-reconcile migrate up --refund --yes` on a 500,000-row hg_toogo_power_consume while four
tasks keep charging orders through PowerConsumer.charge.

    .venv/bin/python bench/bench_migration.py [--db URL] [--rows 500000] [--users 10000]
                                               [--chargers 4] [--no-contrast] [--keep]

``--db`` is the server, without a database name: the local MariaDB,
``mysql+aiomysql://root@127.0.0.1:3306`` (the default; env TOOGO_BENCH_MYSQL overrides it), or
PostgreSQL, ``postgresql://postgres@127.0.0.1:5432`` (``postgresql+asyncpg://`` is accepted).
Seeds a legacy-shaped database with the sequence engine (no uk_user_order; 1% of the charged
orders charged 2-4 times), charges fresh orders from 4 tasks (one connection each) for a
baseline, runs `migrate up --refund --yes` as a subprocess (the CLI an operator runs), keeps
charging until it is done, and reports: the run time of `up`, the ALTER's duration (from the
CLI's own `migrate step` events), the longest charge latency and the longest gap between charge
completions while the ALTER ran, next to the baseline. Then a second `up` (the no-op), and, for
contrast, the same key added with ALGORITHM=COPY (the locking way) under the same load.
Afterwards it verifies: every fresh order charged exactly once, refunds equal the over-charge.

On PostgreSQL the schema is upstream's PostgreSQL DDL with the hg_toogo_* tables as a transfer
gives them (kits/upstream.create_upstream_pg_schema, no key, no own tables: the legacy shape of
tests/migration_kit.legacy_database), seeded with generate_series. The runbook builds the key
with CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX; the CLI's `migrate
statement` events time the two apart. ALGORITHM=COPY is MySQL's: the contrast there is a plain
(non-CONCURRENTLY) CREATE UNIQUE INDEX under the same load, which blocks writes while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pymysql
import structlog
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kits.upstream import create_upstream_pg_schema, create_upstream_schema  # noqa: E402
from reconcile.charging.consumer import PowerConsumer  # noqa: E402
from reconcile.charging.outcomes import Source  # noqa: E402
from reconcile.charging.pricing import PowerRules  # noqa: E402
from reconcile.storage.db import Database, DatabaseSettings  # noqa: E402

SERVER = os.environ.get("TOOGO_BENCH_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")


def admin(db: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(
        host="127.0.0.1", port=3306, user="root", password="", database=db, autocommit=True
    )


async def seed(url: str, name: str, rows: int, users: int, fresh: int) -> dict[str, Any]:
    async with Database(DatabaseSettings(url=url)) as db:

        async def create(conn: Any) -> None:
            await create_upstream_schema(conn, with_unique_key=False, own=False)

        await db.transaction(create, what="create legacy schema")
    # charged orders U, 1% of them (id % 100 = 0) charged 1 + (1 + id % 3) times: U * 1.02 rows
    charged = round(rows / 1.02)
    started = time.monotonic()
    conn = admin(name)
    with conn.cursor() as cur:
        cur.execute(f"""INSERT INTO hg_toogo_wallet (user_id, power, gift_power,
            total_power_consume, created_at, updated_at)
            SELECT seq, 1000 + seq % 97, 5, 500, NOW(), NOW() FROM seq_1_to_{users}""")
        for first, count, consumed in ((1, charged, 1), (charged + 1, fresh, 0)):
            cur.execute(f"""INSERT INTO hg_trading_order (user_id, robot_id, order_sn, symbol,
                direction, open_price, close_price, quantity, leverage, margin, realized_profit,
                open_time, close_time, status, power_consumed, power_amount, created_at,
                updated_at)
                SELECT 1 + seq % {users}, 1000 + seq % {users}, CONCAT('BM-', seq), 'BTCUSDT',
                'long', 100, 101, 0.01, 10, 0.1, 1 + (seq % 997) / 100, NOW() - INTERVAL 2 DAY,
                NOW() - INTERVAL 1 DAY, 2, {consumed},
                IF({consumed}, ROUND((1 + (seq % 997) / 100) * 0.1, 8), 0), NOW(), NOW()
                FROM seq_{first}_to_{first + count - 1}""")
        cur.execute("""INSERT INTO hg_toogo_power_consume (user_id, robot_id, order_id, order_sn,
            profit_amount, consume_rate, consume_power, from_power, original_power, created_at)
            SELECT user_id, robot_id, id, order_sn, realized_profit, 0.1, power_amount,
            power_amount, power_amount, NOW() - INTERVAL 1 DAY
            FROM hg_trading_order WHERE power_consumed = 1 ORDER BY id""")
        cur.execute("""INSERT INTO hg_toogo_power_consume (user_id, robot_id, order_id, order_sn,
            profit_amount, consume_rate, consume_power, from_power, original_power, created_at)
            SELECT o.user_id, o.robot_id, o.id, o.order_sn, o.realized_profit, 0.1,
            o.power_amount, o.power_amount, o.power_amount, NOW() - INTERVAL 1 HOUR
            FROM hg_trading_order o JOIN seq_1_to_3 s ON s.seq <= 1 + o.id % 3
            WHERE o.power_consumed = 1 AND o.id % 100 = 0 ORDER BY o.id, s.seq""")
        cur.execute("SELECT COUNT(*) FROM hg_toogo_power_consume")
        total = cur.fetchone()[0]
        cur.execute("""SELECT COUNT(*), SUM(d.n - 1), SUM(d.total - k.consume_power) FROM (
            SELECT COUNT(*) n, SUM(consume_power) total, MAX(id) keep_id
            FROM hg_toogo_power_consume GROUP BY user_id, order_id HAVING COUNT(*) > 1) d
            JOIN hg_toogo_power_consume k ON k.id = d.keep_id""")
        groups, extra, over = cur.fetchone()
        cur.execute(f"SELECT id FROM hg_trading_order WHERE id > {charged} ORDER BY id")
        fresh_ids = [r[0] for r in cur.fetchall()]
    conn.close()
    return {
        "consume_rows": total,
        "groups": groups,
        "extra_rows": int(extra),
        "over_charged": Decimal(over),
        "fresh_ids": fresh_ids,
        "seed_s": time.monotonic() - started,
    }


@dataclass
class Charging:
    """Charges fresh orders from N tasks, recording (start, end) wall times of every charge."""

    db: Database
    ids: list[int]
    spans: list[tuple[float, float]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    exhausted: bool = False

    async def worker(self, consumer: PowerConsumer) -> None:
        while not self.stop.is_set():
            if not self.ids:
                self.exhausted = True
                return
            oid = self.ids.pop()
            start = time.time()
            await consumer.charge(oid, Source.REALTIME)
            self.spans.append((start, time.time()))

    def window(self, since: float, until: float) -> dict[str, float]:
        """Charges that overlapped [since, until]: count, latency p50/p99/max, longest gap."""
        inside = [(s, e) for s, e in self.spans if e >= since and s <= until]
        if not inside:
            return {"charges": 0}
        lat = sorted(e - s for s, e in inside)
        ends = sorted([since] + [e for _, e in inside if since <= e <= until] + [until])
        gap = max(b - a for a, b in itertools.pairwise(ends))
        return {
            "charges": len(inside),
            "per_s": len(inside) / max(until - since, 1e-9),
            "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "max_ms": 1000 * lat[-1],
            "longest_gap_ms": 1000 * gap,
        }


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def run_cli(config: Path, *args: str) -> tuple[int, str, list[dict[str, Any]], float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        "--config",
        str(config),
        "--log-format",
        "json",
        "migrate",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("TOOGO_")},
    )
    out, err = await proc.communicate()
    events = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
    return proc.returncode or 0, out.decode(), events, time.monotonic() - started


def step_window(events: list[dict[str, Any]], step: str) -> tuple[float, float]:
    marks = [e for e in events if e.get("event") == "migrate step" and e.get("step") == step]
    start = next(ts(e["timestamp"]) for e in marks if e["status"] == "start")
    done = next(e for e in marks if e["status"] == "done")
    return start, ts(done["timestamp"])


def dedupe_window(events: list[dict[str, Any]]) -> tuple[float, float]:
    scan = next(e for e in events if e.get("event") == "migrate dedupe scan")
    done = next(e for e in events if e.get("event") == "migrate dedupe done")
    return ts(scan["timestamp"]), ts(done["timestamp"])


def fmt(w: dict[str, float]) -> str:
    if not w.get("charges"):
        return "no charges"
    return (
        f"{w['charges']:.0f} charges ({w['per_s']:.0f}/s), latency p50 {w['p50_ms']:.1f} ms "
        f"p99 {w['p99_ms']:.1f} ms max {w['max_ms']:.1f} ms, longest gap between "
        f"completions {w['longest_gap_ms']:.1f} ms"
    )


async def with_load(
    url: str, ids: list[int], chargers: int, baseline: float, tail: float, work: Any
) -> tuple[Charging, Any, float, float]:
    async with Database(DatabaseSettings(url=url, pool_size=chargers)) as db:
        load = Charging(db, ids)
        rules = PowerRules(Decimal("0.10"), Decimal("0.01"), vip_discount=False)
        consumer = PowerConsumer(db, rules)
        tasks = [asyncio.create_task(load.worker(consumer)) for _ in range(chargers)]
        t0 = time.time()
        await asyncio.sleep(baseline)
        t1 = time.time()
        result = await work()
        await asyncio.sleep(tail)
        load.stop.set()
        await asyncio.gather(*tasks)
    return load, result, t0, t1


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default=SERVER, help="the server, without a database name")
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--chargers", type=int, default=4)
    ap.add_argument("--fresh", type=int, default=120_000, help="fresh orders to charge")
    ap.add_argument("--baseline", type=float, default=5.0)
    ap.add_argument("--no-contrast", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = ap.parse_args()
    # the chargers' audit events would cost more CPU than the charges: keep warnings only
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    name = f"trc_bench_mig_{uuid.uuid4().hex[:8]}"
    backend = make_url(args.db).get_backend_name()
    if backend in ("postgresql", "postgres"):
        await pg_main(args, Pg(args.db), name)
        return
    if backend != "mysql":
        raise SystemExit(f"--db: not a MySQL or PostgreSQL URL: {args.db}")
    url = f"{args.db.rstrip('/')}/{name}"
    server = admin()
    with server.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        cur.execute("SELECT VERSION(), @@innodb_buffer_pool_size, @@innodb_flush_log_at_trx_commit")
        version, pool, flush = cur.fetchone()
    print(
        f"MariaDB {version}, buffer pool {pool // 2**20} MiB, flush_log_at_trx_commit={flush}, "
        f"{os.cpu_count()} CPUs"
    )
    try:
        seeded = await seed(url, name, args.rows, args.users, args.fresh)
        print(
            f"seeded in {seeded['seed_s']:.1f}s: {seeded['consume_rows']} consume rows, "
            f"{seeded['groups']} duplicate groups, {seeded['extra_rows']} extra rows, "
            f"over-charge {seeded['over_charged']}"
        )
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(f"database:\n  url: {url}\n  pool_size: 2\n")
            await measure(args, url, name, config, seeded)
    finally:
        if not args.keep:
            with server.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        server.close()


async def pg_main(args: argparse.Namespace, pg: Pg, name: str) -> None:
    await pg.execute("postgres", f'CREATE DATABASE "{name}"')
    [(version, buffers, sync)] = await pg.fetch(
        "postgres",
        "SELECT current_setting('server_version'), current_setting('shared_buffers'), "
        "current_setting('synchronous_commit')",
    )
    print(
        f"PostgreSQL {version}, shared_buffers {buffers}, synchronous_commit={sync}, "
        f"{os.cpu_count()} CPUs"
    )
    url = pg.daemon_url(name)
    try:
        seeded = await pg_seed(pg, url, name, args.rows, args.users, args.fresh)
        print(
            f"seeded in {seeded['seed_s']:.1f}s: {seeded['consume_rows']} consume rows, "
            f"{seeded['groups']} duplicate groups, {seeded['extra_rows']} extra rows, "
            f"over-charge {seeded['over_charged']}"
        )
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(f"database:\n  url: {url}\n  pool_size: 2\n")
            await measure(args, url, name, config, seeded, pg)
    finally:
        if not args.keep:
            await pg.execute("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def measure(
    args: argparse.Namespace,
    url: str,
    name: str,
    config: Path,
    seeded: dict[str, Any],
    pg: Pg | None = None,
) -> None:
    ids: list[int] = list(reversed(seeded["fresh_ids"]))
    charged_before = len(ids)

    async def up() -> tuple[int, str, list[dict[str, Any]], float]:
        return await run_cli(config, "up", "--refund", "--yes")

    load, (code, out, events, up_s), t0, t1 = await with_load(
        url, ids, args.chargers, args.baseline, 2.0, up
    )
    if code != 0:
        raise SystemExit(f"migrate up failed ({code}):\n{out}")
    a0, a1 = step_window(events, "uk_user_order")
    d0, d1 = dedupe_window(events)
    print(f"\nmigrate up --refund --yes: {up_s:.2f}s wall (CLI process, incl. ~0.8s start-up)")
    for e in events:
        if e.get("event") == "migrate step" and e.get("status") == "done":
            print(f"  {e['step']}: {e['seconds']:.2f}s online={e.get('online')}")
    print(
        f"  dedupe after the scan: {d1 - d0:.2f}s; transaction phases: "
        + ", ".join(
            f"{e['phase']} at {e['elapsed_s']:.2f}s"
            for e in events
            if e.get("event") == "migrate progress" and e.get("step") == "dedupe"
        )
    )
    for e in events:
        if e.get("event") in ("migrate check", "migrate dedupe scan"):
            print(f"  {e['event']}: {e['seconds']:.2f}s")
    print(f"baseline ({args.baseline:.0f}s before up): {fmt(load.window(t0, t1))}")
    print(f"during the dedupe:          {fmt(load.window(d0, d1))}")
    if pg is None:
        print(f"during the ALTER ({a1 - a0:.2f}s):   {fmt(load.window(a0, a1))}")
    else:
        print(f"during the key step ({a1 - a0:.2f}s): {fmt(load.window(a0, a1))}")
        for sql, s0, s1 in statement_windows(events, "uk_user_order"):
            print(f"  {sql.split(' ON ')[0].split(' UNIQUE USING')[0]} ({s1 - s0:.2f}s):")
            print(f"    {fmt(load.window(s0, s1))}")
    print(f"whole up:                   {fmt(load.window(t1, t1 + up_s))}")
    if load.exhausted:
        print("WARNING: ran out of fresh orders; raise --fresh")

    code, out, _, second_s = await run_cli(config, "up", "--refund", "--yes")
    assert code == 0 and "nothing to do" in out, out
    print(f"second up (no-op): {second_s:.2f}s wall")
    if pg is not None:
        await pg_verify(pg, name, seeded, charged_before - len(ids))
        if not args.no_contrast:
            await pg_contrast(args, pg, url, name, seeded, ids, charged_before)
        return
    verify(name, seeded, charged_before - len(ids))

    if not args.no_contrast:
        conn = admin(name)
        with conn.cursor() as cur:
            cur.execute("ALTER TABLE hg_toogo_power_consume DROP INDEX uk_user_order")

        async def copy_alter() -> tuple[float, float]:
            def run() -> tuple[float, float]:
                c = admin(name)
                start = time.time()
                with c.cursor() as cur:
                    cur.execute(
                        "ALTER TABLE hg_toogo_power_consume ADD UNIQUE KEY uk_user_order "
                        "(user_id, order_id), ALGORITHM=COPY"
                    )
                c.close()
                return start, time.time()

            return await asyncio.to_thread(run)

        load2, (c0, c1), b0, b1 = await with_load(url, ids, args.chargers, 2.0, 1.0, copy_alter)
        print(f"\ncontrast, ALGORITHM=COPY ({c1 - c0:.2f}s): {fmt(load2.window(c0, c1))}")
        print(f"  its baseline:                {fmt(load2.window(b0, b1))}")
        conn.close()
        verify(name, seeded, charged_before - len(ids), quiet=True)


async def pg_contrast(
    args: argparse.Namespace,
    pg: Pg,
    url: str,
    name: str,
    seeded: dict[str, Any],
    ids: list[int],
    charged_before: int,
) -> None:
    """The key built the locking way: a plain CREATE UNIQUE INDEX (SHARE lock: inserts wait
    until it is done) under the same load, then made the constraint again."""
    await pg.execute(name, "ALTER TABLE hg_toogo_power_consume DROP CONSTRAINT uk_user_order")

    async def plain_build() -> tuple[float, float]:
        start = time.time()
        await pg.execute(
            name,
            "CREATE UNIQUE INDEX uk_user_order ON hg_toogo_power_consume (user_id, order_id)",
        )
        return start, time.time()

    load2, (c0, c1), b0, b1 = await with_load(url, ids, args.chargers, 2.0, 1.0, plain_build)
    await pg.execute(
        name,
        "ALTER TABLE hg_toogo_power_consume ADD CONSTRAINT uk_user_order "
        "UNIQUE USING INDEX uk_user_order",
    )
    print(f"\ncontrast, plain CREATE UNIQUE INDEX ({c1 - c0:.2f}s): {fmt(load2.window(c0, c1))}")
    print(f"  its baseline:                {fmt(load2.window(b0, b1))}")
    await pg_verify(pg, name, seeded, charged_before - len(ids), quiet=True)


def verify(name: str, seeded: dict[str, Any], charged: int, quiet: bool = False) -> None:
    first_fresh = min(seeded["fresh_ids"])
    conn = admin(name)
    with conn.cursor() as cur:
        cur.execute("""SELECT COUNT(*) FROM (SELECT 1 FROM hg_toogo_power_consume
            GROUP BY user_id, order_id HAVING COUNT(*) > 1) d""")
        assert cur.fetchone()[0] == 0, "duplicates remain"
        cur.execute(
            """SELECT COUNT(*), COUNT(DISTINCT order_id) FROM hg_toogo_power_consume
            WHERE order_id >= %s""",
            (first_fresh,),
        )
        rows, distinct = cur.fetchone()
        assert rows == distinct == charged, (rows, distinct, charged)
        cur.execute(
            """SELECT COUNT(*) FROM hg_toogo_wallet_log
            WHERE change_type = 'power_consume' AND related_id >= %s""",
            (first_fresh,),
        )
        assert cur.fetchone()[0] == charged
        cur.execute("""SELECT COALESCE(SUM(change_amount), 0) FROM hg_toogo_wallet_log
            WHERE change_type = 'power_consume_refund'""")
        refunded = cur.fetchone()[0]
        assert refunded == seeded["over_charged"], (refunded, seeded["over_charged"])
    conn.close()
    if not quiet:
        print(
            f"verified: {charged} fresh orders charged exactly once, refunds = over-charge "
            f"({refunded}), no duplicates left"
        )


# -- PostgreSQL ---------------------------------------------------------------------------------


class Pg:
    """The PostgreSQL server: asyncpg for the bench's own SQL (the load shares its event loop)."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url).set(drivername="postgresql", database=None)

    def dsn(self, db: str = "postgres") -> str:
        return self.url.set(database=db).render_as_string(hide_password=False)

    def daemon_url(self, name: str) -> str:
        return self.url.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False
        )

    async def execute(self, db: str, *statements: str) -> None:
        conn = await asyncpg.connect(self.dsn(db), timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def fetch(self, db: str, query: str) -> list[Any]:
        conn = await asyncpg.connect(self.dsn(db), timeout=10)
        try:
            return [tuple(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()


async def pg_seed(pg: Pg, url: str, name: str, rows: int, users: int, fresh: int) -> dict[str, Any]:
    """The MariaDB seed's rows in PostgreSQL's SQL: generate_series for the sequence engine,
    NUMERIC division where MySQL's `/` gives decimals; VACUUM ANALYZE afterwards (fresh
    statistics, and no autovacuum of the just-loaded tables in the middle of the measurement)."""
    async with Database(DatabaseSettings(url=url)) as db:

        async def create(conn: Any) -> None:
            await create_upstream_pg_schema(conn, with_unique_key=False, own=False)

        await db.transaction(create, what="create legacy schema")
    charged = round(rows / 1.02)
    started = time.monotonic()
    profit = "(1 + (g % 997) / 100.0)"
    orders = []
    for first, count, consumed in ((1, charged, 1), (charged + 1, fresh, 0)):
        amount = f"ROUND({profit} * 0.1, 8)" if consumed else "0"
        orders.append(f"""INSERT INTO hg_trading_order (user_id, robot_id, order_sn, symbol,
            direction, open_price, close_price, quantity, leverage, margin, realized_profit,
            open_time, close_time, status, power_consumed, power_amount, created_at, updated_at)
            SELECT 1 + g % {users}, 1000 + g % {users}, 'BM-' || g, 'BTCUSDT', 'long', 100,
            101, 0.01, 10, 0.1, {profit}, NOW() - INTERVAL '2 days', NOW() - INTERVAL '1 day',
            2, {consumed}, {amount}, NOW(), NOW()
            FROM generate_series({first}::bigint, {first + count - 1}) g ORDER BY g""")
    await pg.execute(
        name,
        f"""INSERT INTO hg_toogo_wallet (user_id, power, gift_power, total_power_consume,
            created_at, updated_at)
            SELECT g, 1000 + g % 97, 5, 500, NOW(), NOW() FROM generate_series(1, {users}) g""",
        *orders,
        """INSERT INTO hg_toogo_power_consume (user_id, robot_id, order_id, order_sn,
            profit_amount, consume_rate, consume_power, from_power, original_power, created_at)
            SELECT user_id, robot_id, id, order_sn, realized_profit, 0.1, power_amount,
            power_amount, power_amount, NOW() - INTERVAL '1 day'
            FROM hg_trading_order WHERE power_consumed = 1 ORDER BY id""",
        """INSERT INTO hg_toogo_power_consume (user_id, robot_id, order_id, order_sn,
            profit_amount, consume_rate, consume_power, from_power, original_power, created_at)
            SELECT o.user_id, o.robot_id, o.id, o.order_sn, o.realized_profit, 0.1,
            o.power_amount, o.power_amount, o.power_amount, NOW() - INTERVAL '1 hour'
            FROM hg_trading_order o JOIN generate_series(1, 3) s(seq) ON s.seq <= 1 + o.id % 3
            WHERE o.power_consumed = 1 AND o.id % 100 = 0 ORDER BY o.id, s.seq""",
        "VACUUM ANALYZE",
    )
    [(total,)] = await pg.fetch(name, "SELECT COUNT(*) FROM hg_toogo_power_consume")
    [(groups, extra, over)] = await pg.fetch(name, OVER_CHARGE)
    fresh_ids = [
        r[0]
        for r in await pg.fetch(
            name, f"SELECT id FROM hg_trading_order WHERE id > {charged} ORDER BY id"
        )
    ]
    return {
        "consume_rows": total,
        "groups": groups,
        "extra_rows": int(extra),
        "over_charged": Decimal(over),
        "fresh_ids": fresh_ids,
        "seed_s": time.monotonic() - started,
    }


OVER_CHARGE = """SELECT COUNT(*), SUM(d.n - 1), SUM(d.total - k.consume_power) FROM (
    SELECT COUNT(*) n, SUM(consume_power) total, MAX(id) keep_id
    FROM hg_toogo_power_consume GROUP BY user_id, order_id HAVING COUNT(*) > 1) d
    JOIN hg_toogo_power_consume k ON k.id = d.keep_id"""


async def pg_verify(
    pg: Pg, name: str, seeded: dict[str, Any], charged: int, quiet: bool = False
) -> None:
    """verify()'s checks, in SQL PostgreSQL runs too."""
    first_fresh = min(seeded["fresh_ids"])
    [(dups,)] = await pg.fetch(
        name,
        """SELECT COUNT(*) FROM (SELECT 1 FROM hg_toogo_power_consume
        GROUP BY user_id, order_id HAVING COUNT(*) > 1) d""",
    )
    assert dups == 0, "duplicates remain"
    [(rows, distinct)] = await pg.fetch(
        name,
        f"""SELECT COUNT(*), COUNT(DISTINCT order_id) FROM hg_toogo_power_consume
        WHERE order_id >= {first_fresh}""",
    )
    assert rows == distinct == charged, (rows, distinct, charged)
    [(logged,)] = await pg.fetch(
        name,
        f"""SELECT COUNT(*) FROM hg_toogo_wallet_log
        WHERE change_type = 'power_consume' AND related_id >= {first_fresh}""",
    )
    assert logged == charged, (logged, charged)
    [(refunded,)] = await pg.fetch(
        name,
        """SELECT COALESCE(SUM(change_amount), 0) FROM hg_toogo_wallet_log
        WHERE change_type = 'power_consume_refund'""",
    )
    assert refunded == seeded["over_charged"], (refunded, seeded["over_charged"])
    if not quiet:
        print(
            f"verified: {charged} fresh orders charged exactly once, refunds = over-charge "
            f"({refunded}), no duplicates left"
        )


def statement_windows(events: list[dict[str, Any]], step: str) -> list[tuple[str, float, float]]:
    """PostgreSQL: (sql, start, end) of each statement of ``step``, from the CLI's `migrate
    statement` events; a statement ends where the next begins, the last where the step is done."""
    marks = [
        (e["sql"], ts(e["timestamp"]))
        for e in events
        if e.get("event") == "migrate statement" and e.get("step") == step
    ]
    _, end = step_window(events, step)
    ends = [t for _, t in marks[1:]] + [end]
    return [(sql, start, stop) for (sql, start), stop in zip(marks, ends, strict=True)]


if __name__ == "__main__":
    asyncio.run(main())
