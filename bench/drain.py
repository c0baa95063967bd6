"""Drain a backlog of profitable closed orders with `toogo-reconcile sweep`, next to a reference
drain done with four set-based SQL statements (the database's practical limit for this work).

    .venv/bin/python bench/drain.py [--orders 100000] [--users 10000] [--small 10000] [--runs 1]

Needs the local MariaDB (127.0.0.1:3306, root, no password; env TOOGO_BENCH_MYSQL overrides).
Each run seeds a fresh database with the sequence engine, drains it, verifies the ledger
(one consume row per eligible order, per-user sums and wallets exact) and drops it.
Prints orders/s for both and the sweep process's peak RSS at the small and the full size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pymysql

ROOT = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("TOOGO_BENCH_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")

# hotgo's tables from upstream's own DDL (../shared/upstream-schema), plus what `migrate up` adds
SCHEMA_SNIPPET = """
import asyncio, sys
from reconcile.db import Database, DatabaseSettings
from tests.upstream import create_upstream_schema
async def main(url):
    async with Database(DatabaseSettings(url=url)) as db:
        async def create(conn):
            await create_upstream_schema(conn, with_unique_key=True)
        await db.transaction(create, what="create schema")
asyncio.run(main(sys.argv[1]))
"""


def admin(db: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(
        host="127.0.0.1", port=3306, user="root", password="", database=db, autocommit=True
    )


def seed(name: str, orders: int, users: int) -> None:
    url = f"{SERVER}/{name}"
    subprocess.run([sys.executable, "-c", SCHEMA_SNIPPET, url], check=True, cwd=ROOT)
    conn = admin(name)
    with conn.cursor() as cur:
        cur.execute(f"""INSERT INTO hg_toogo_wallet (user_id, power, gift_power,
            total_power_consume, created_at, updated_at)
            SELECT seq, 1000 + (seq % 97), 5, 0, NOW(), NOW() FROM seq_1_to_{users}""")
        cur.execute(f"""INSERT INTO hg_toogo_user (member_id, vip_level, power_discount,
            invite_code)
            SELECT seq, 2 + seq % 4, (seq * 37) % 5000 / 100, CONCAT('B', seq)
            FROM seq_1_to_{users}
            WHERE seq % 5 = 0""")
        cur.execute(f"""INSERT INTO hg_trading_order (user_id, robot_id, order_sn, symbol,
            direction, open_price, close_price, quantity, leverage, margin, realized_profit,
            open_time, close_time, status, power_consumed, power_amount, created_at, updated_at)
            SELECT 1 + seq % {users}, 1000 + seq % {users}, CONCAT('TO', seq), 'BTCUSDT',
                'long', 100, 101, 0.01, 10, 0.1, 1 + (seq * 7919) % 500000 / 10000,
                NOW() - INTERVAL (seq % 500000 + 3600) SECOND,
                NOW() - INTERVAL (seq % 500000) SECOND, 2, 0, 0, NOW(), NOW()
            FROM seq_1_to_{orders}""")
        cur.execute("ANALYZE TABLE hg_trading_order")
    conn.close()


def verify(name: str, orders: int) -> None:
    conn = admin(name)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*), COUNT(DISTINCT user_id, order_id), SUM(consume_power)"
            " FROM hg_toogo_power_consume"
        )
        n, distinct, total = cur.fetchone()
        assert n == distinct == orders, (n, distinct, orders)
        cur.execute("SELECT COUNT(*), -SUM(change_amount) FROM hg_toogo_wallet_log")
        ledger, logged = cur.fetchone()
        assert ledger == orders and logged == total, (ledger, logged, total)
        cur.execute(
            "SELECT SUM(1000 + (user_id % 97) - power), SUM(total_power_consume)"
            " FROM hg_toogo_wallet"
        )
        debited, consumed = cur.fetchone()
        assert debited == consumed == total, (debited, consumed, total)
        cur.execute(
            "SELECT COUNT(*) FROM hg_trading_order o JOIN hg_toogo_power_consume c"
            " ON c.user_id = o.user_id AND c.order_id = o.id"
            " WHERE o.power_consumed = 1 AND o.power_amount = c.consume_power"
        )
        assert cur.fetchone()[0] == orders
        # before/after chains: each user's rows, in id order, continue one another
        cur.execute("""SELECT COUNT(*) FROM (SELECT before_amount, LAG(after_amount) OVER
            (PARTITION BY user_id ORDER BY id) AS prev FROM hg_toogo_wallet_log) t
            WHERE prev IS NOT NULL AND prev <> before_amount""")
        assert cur.fetchone()[0] == 0
    conn.close()


def run_sweep(name: str, page_size: int) -> tuple[float, int, dict[str, object]]:
    """Drain with the real command in a child process; return (seconds, peak RSS KiB, summary)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "database": {"url": f"{SERVER}/{name}"},
                    "power": {"consume_rate": "0.10", "min_consume": "0.01"},
                    "sweep": {
                        "page_size": page_size,
                        "workers": int(os.environ.get("BENCH_WORKERS", "2")),
                        "processes": int(os.environ.get("BENCH_PROCESSES", "1")),
                    },
                    "logging": {"format": "json"},
                }
            )
        )
        log_path = Path(tmp) / "sweep.log"
        with log_path.open("wb") as log:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TOOGO_")}
            proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--config", str(cfg), "sweep"],
                stdout=log,
                stderr=subprocess.PIPE,
                cwd=ROOT,
                env=env,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"sweep failed: {proc.stderr.read().decode() if proc.stderr else ''}")
        summary = next(
            json.loads(line)
            for line in log_path.read_text().splitlines()
            if '"sweep summary"' in line
        )
        return float(summary["elapsed"]), usage.ru_maxrss, summary


def charge_set_based(cur: Any, where: str = "") -> None:
    """The four set-based charging statements (same formula and rounding as the consumer):
    consume rows, ledger rows with their before/after by window functions, wallets, order
    flags. ``where`` narrows the orders (an SQL condition on ``o``, e.g. the look-back)."""
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


def run_reference(name: str) -> float:
    """Four set-based statements, one transaction, same formula and rounding."""
    conn = admin(name)
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        charge_set_based(cur, "o.close_time >= NOW() - INTERVAL 7 DAY")
        cur.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def fresh(orders: int, users: int) -> str:
    name = f"trc_bench_{uuid.uuid4().hex[:8]}"
    with admin().cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    seed(name, orders, users)
    return name


def drop(name: str) -> None:
    with admin().cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--orders", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=10_000, help="backlog size for the RSS check")
    ap.add_argument("--page-size", type=int, default=500)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()

    print(f"backlog {args.orders} orders over {args.users} users, page {args.page_size}")
    for run in range(1, args.runs + 1):
        name = fresh(args.small, args.users)
        try:
            secs, rss_small, _ = run_sweep(name, args.page_size)
            verify(name, args.small)
        finally:
            drop(name)
        print(
            f"run {run} sweep   {args.small:>7} orders {secs:7.2f} s "
            f"{args.small / secs:8.0f} orders/s  peak RSS {rss_small / 1024:6.1f} MiB"
        )
        name = fresh(args.orders, args.users)
        try:
            secs, rss, summary = run_sweep(name, args.page_size)
            verify(name, args.orders)
        finally:
            drop(name)
        sweep_rate = args.orders / secs
        print(
            f"run {run} sweep   {args.orders:>7} orders {secs:7.2f} s "
            f"{sweep_rate:8.0f} orders/s  peak RSS {rss / 1024:6.1f} MiB  "
            f"pages {summary['pages']}"
        )
        name = fresh(args.orders, args.users)
        try:
            ref = run_reference(name)
            verify(name, args.orders)
        finally:
            drop(name)
        ref_rate = args.orders / ref
        print(
            f"run {run} set-based {args.orders:>5} orders {ref:7.2f} s {ref_rate:8.0f} orders/s"
            f"  sweep/reference = {sweep_rate / ref_rate:.2f}"
        )


if __name__ == "__main__":
    main()
