"""Prune 1,000,000 exchange records while charges keep running (reconcile/storage/retention.py).

    .venv/bin/python bench/bench_retention.py [--db URL] [--records 1000000] [--orders 30000]
                                              [--raw-bytes 1000] [--batch 1000] [--pause-ms 50]
                                              [--chargers 4] [--baseline-s 20]

MariaDB/MySQL only (``--db`` without a database name; default ``mysql+aiomysql://root@
127.0.0.1:3306``). Creates a fresh database with upstream's DDL, seeds ``--records`` rows of
``toogo_reconcile_record`` (and one ``_record_order`` row each) 800 days old - past every default -
with a raw payload of ``--raw-bytes``, on the server (INSERT … SELECT from the sequence engine),
and a backlog of profitable closed orders. Then:

1. baseline: ``--chargers`` tasks charge orders one by one (``PowerConsumer.charge``, the realtime
   path: one transaction each) for ``--baseline-s`` seconds, no pruning;
2. the pruner (the shipped defaults but ``--batch``/``--pause-ms``) runs to the end while the same
   chargers keep charging.

Prints rows/s pruned and each phase's charge latency (p50/p99/max, ms), then verifies the ledger
(one consume row per charged order, balances exact) and drops the database.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pymysql
import structlog
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kits.seed import assert_ledger_consistent, seed_backlog  # noqa: E402
from kits.upstream import create_upstream_schema  # noqa: E402
from reconcile.charging.consumer import PowerConsumer  # noqa: E402
from reconcile.charging.outcomes import Outcome, Source  # noqa: E402
from reconcile.charging.pricing import PowerRules  # noqa: E402
from reconcile.storage.db import Database, DatabaseSettings  # noqa: E402
from reconcile.storage.retention import Pruner, RetentionSettings  # noqa: E402

SERVER = os.environ.get("TOOGO_BENCH_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")
RULES = PowerRules(Decimal("0.10"), Decimal("0.01"))


def seed_records(admin: pymysql.connections.Connection, records: int, raw_bytes: int) -> float:
    started = time.monotonic()
    with admin.cursor() as cur:
        step = 100_000
        for lo in range(1, records + 1, step):
            hi = min(records, lo + step - 1)
            cur.execute(
                "INSERT INTO toogo_reconcile_record (platform, account_id, record_key, symbol, "
                "close_time, profit, profit_basis, normalized_json, raw_json, created_at) "
                "SELECT 'binance', seq % 10000, CONCAT('k', seq), 'BTCUSDT', "
                "NOW() - INTERVAL 800 DAY, 1.5, 'net', CONCAT('{\"key\": \"k', seq, '\"}'), "
                f"CONCAT('{{\"id\": ', seq, ', \"p\": \"', REPEAT('x', {raw_bytes}), '\"}}'), "
                f"NOW() - INTERVAL 800 DAY FROM seq_{lo}_to_{hi}"
            )
            cur.execute(
                "INSERT INTO toogo_reconcile_record_order (platform, account_id, record_key, "
                "exchange_order_id) SELECT 'binance', seq % 10000, CONCAT('k', seq), "
                f"CONCAT('E', seq) FROM seq_{lo}_to_{hi}"
            )
            admin.commit()
    return time.monotonic() - started


async def charge_for(
    consumer: PowerConsumer, queue: list[int], until: asyncio.Event, tasks: int
) -> tuple[list[float], int]:
    """``tasks`` chargers take orders from ``queue`` until ``until`` is set; latencies in s."""
    latencies: list[float] = []
    charged = 0

    async def one() -> None:
        nonlocal charged
        while not until.is_set() and queue:
            order_id = queue.pop()
            t0 = time.monotonic()
            result = await consumer.charge(order_id, Source.REALTIME)
            latencies.append(time.monotonic() - t0)
            charged += result.outcome is Outcome.CHARGED

    await asyncio.gather(*(one() for _ in range(tasks)))
    return latencies, charged


def figures(name: str, lat: list[float], seconds: float) -> str:
    ms = sorted(x * 1000 for x in lat)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{name}: {len(ms)} charges in {seconds:.1f} s ({len(ms) / seconds:.0f}/s), "
        f"p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    url = make_url(args.db).set(drivername="mysql+aiomysql", database=None)
    name = f"trc_bench_retention_{uuid.uuid4().hex[:8]}"
    kw = {
        "host": url.host or "127.0.0.1",
        "port": url.port or 3306,
        "user": url.username or "root",
        "password": url.password or "",
    }
    with pymysql.connect(**kw) as admin, admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    db = Database(DatabaseSettings(url=url.set(database=name).render_as_string(False)))
    try:
        await db.open()
        await db.transaction(
            lambda conn: create_upstream_schema(conn, with_unique_key=True), what="schema"
        )
        with pymysql.connect(database=name, **kw) as admin:
            took = seed_records(admin, args.records, args.raw_bytes)
        print(f"seeded {args.records} records ({args.raw_bytes} B raw) in {took:.1f} s")
        seeded = await seed_backlog(db, orders=args.orders, users=2000, seed=3, losing_ratio=0)
        queue = list(reversed(seeded.order_ids))
        consumer = PowerConsumer(db, RULES)

        stop = asyncio.Event()
        t0 = time.monotonic()
        timer = asyncio.get_running_loop().call_later(args.baseline_s, stop.set)
        base, base_charged = await charge_for(consumer, queue, stop, args.chargers)
        base_s = time.monotonic() - t0
        timer.cancel()

        settings = RetentionSettings(
            batch_size=args.batch, pause=timedelta(milliseconds=args.pause_ms)
        )
        pruner = Pruner(db, settings)
        done = asyncio.Event()

        async def prune() -> tuple[int, float]:
            t = time.monotonic()
            summary = await pruner.run()
            done.set()
            return summary.counts["records"], time.monotonic() - t

        t1 = time.monotonic()
        (pruned, prune_s), (during, during_charged) = await asyncio.gather(
            prune(), charge_for(consumer, queue, done, args.chargers)
        )
        during_s = time.monotonic() - t1
        if not queue:
            print("warning: the order backlog ran out before the pruning ended")
        print(
            f"pruned {pruned} records (+ their record_order rows) in {prune_s:.1f} s: "
            f"{pruned / prune_s:.0f} rows/s (batch {args.batch}, pause {args.pause_ms} ms)"
        )
        print(figures("charges without pruning", base, base_s))
        print(figures("charges while pruning", during, during_s))
        counts = await assert_ledger_consistent(db, seeded.initial_power)
        assert counts["consumes"] == base_charged + during_charged, counts
        print(f"ledger consistent: {counts['consumes']} consume rows, each order once")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        await db.close()
        with pymysql.connect(**kw) as admin, admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default=SERVER)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=30_000)
    parser.add_argument("--raw-bytes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--pause-ms", type=int, default=50)
    parser.add_argument("--chargers", type=int, default=4)
    parser.add_argument("--baseline-s", type=float, default=20.0)
    asyncio.run(main(parser.parse_args()))
