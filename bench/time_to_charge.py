"""Time to charge: how long a closed profitable order waits for its charge under `run`.

    .venv/bin/python bench/time_to_charge.py [--rate 50] [--seconds 120] [--users 200] [--synced]

An "engine" commits closed profitable orders at a steady rate into a fresh database (upstream's
DDL, tests/fixtures/upstream) while `toogo-reconcile run` runs with the shipped schedule
(config.yaml's `schedule:` section, unchanged; only database.url differs and no exchange is
polled). For every order: engine COMMIT (taken when the COMMIT returns) to the daemon's charge
COMMIT (the `power consumed` audit line is written after its COMMIT, so its timestamp is an upper
bound). Prints p50 / p99 / max, missed orders and the machine's load; verifies exactly-once.

``--synced``: every robot is a running robot of an API account the daemon syncs (the replay
exchange), and the engine also writes each close, as the exchange reports it, to the replay
file: the daemon then charges a close once its history sync has bound it (reconcile.charging.trades,
rule awaiting_sync). Without it no exchange is configured: the charge path alone.
Needs the local MariaDB (127.0.0.1:3306, root, no password; env TOOGO_BENCH_MYSQL overrides).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymysql
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kits.upstream import create_upstream_schema  # noqa: E402
from reconcile.storage.db import Database, DatabaseSettings  # noqa: E402

HOUR = timedelta(hours=1)
SERVER = os.environ.get("TOOGO_BENCH_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")


def admin(db: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=db)


async def create(url: str) -> None:
    async with Database(DatabaseSettings(url=url)) as db:

        async def ddl(conn: object) -> None:
            await create_upstream_schema(conn, with_unique_key=True)  # type: ignore[arg-type]

        await db.transaction(ddl, what="create schema")


def config_for(url: str, path: Path, replay: Path | None = None) -> Path:
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    shipped["database"]["url"] = url
    # no exchange polled (the charge path alone), or the replay file the engine writes
    shipped["exchanges"] = {"replay": {"path": str(replay)}} if replay is not None else {}
    shipped["logging"] = {"format": "json", "level": "info"}
    path.write_text(yaml.safe_dump(shipped), encoding="utf-8")
    return path


def engine(
    name: str,
    rate: float,
    seconds: float,
    users: int,
    committed: dict[str, float],
    replay: Path | None = None,
) -> None:
    """Commit one closed profitable order every 1/rate s, as hotgo's engine would; with
    ``replay``, append the same close to the replay file as the exchange reports it."""
    conn = admin(name)
    interval = 1 / rate
    started = time.monotonic()
    n = 0
    exchange = replay.open("a", encoding="utf-8") if replay is not None else None
    with conn.cursor() as cur:
        while time.monotonic() - started < seconds:
            n += 1
            closed = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
            sn = f"TO{closed:%Y%m%d%H%M%S}{n:06d}"
            profit = f"{1 + n % 97}.5"
            cur.execute(
                "INSERT INTO hg_trading_order (user_id, robot_id, order_sn, exchange_order_id,"
                " symbol, direction, open_price, close_price, quantity, leverage, margin,"
                " realized_profit, open_time, close_time, status, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, 'BTCUSDT', 'long', 60000, 61000, 0.01, 10, 60, %s,"
                " %s - INTERVAL 1 HOUR, %s, 2, %s, %s)",
                (
                    1 + n % users,
                    100 + n % users,
                    sn,
                    str(10**17 + n),
                    profit,
                    closed,
                    closed,
                    closed,
                    closed,
                ),
            )
            conn.commit()
            committed[sn] = time.time()
            if exchange is not None:
                record = {
                    "platform": "replay",
                    "account_id": 1 + n % users,
                    "symbol": "BTCUSDT",
                    "direction": "long",
                    "record_key": f"close-{n}",
                    "size": "0.01",
                    "open_price": "60000",
                    "close_price": "61000",
                    "gross_pnl": profit,
                    "open_time": f"{(closed - HOUR).isoformat()}Z",
                    "close_time": f"{closed.isoformat()}Z",
                }
                exchange.write(json.dumps(record) + "\n")
                exchange.flush()
            time.sleep(max(0.0, started + n * interval - time.monotonic()))
    conn.close()
    if exchange is not None:
        exchange.close()


def reader(stream: object, charged: dict[str, float], lines: list[int]) -> None:
    for raw in stream:  # type: ignore[attr-defined]
        lines[0] += 1
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if event.get("event") == "power consumed":
            at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
            charged.setdefault(event["order_sn"], at)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="orders per second")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument(
        "--synced", action="store_true", help="the accounts are synced (the replay exchange)"
    )
    args = parser.parse_args()
    name = f"trc_ttc_{uuid.uuid4().hex[:8]}"
    conn = admin()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    conn.close()
    url = f"{SERVER}/{name}"
    try:
        asyncio.run(create(url))
        conn = admin(name)
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO hg_toogo_wallet (user_id, power) SELECT seq, 1000 FROM "
                f"seq_1_to_{args.users}"
            )
            if args.synced:  # user u's robot 99 + u runs on API account u (the replay exchange)
                cur.execute(
                    "INSERT INTO hg_trading_api_config (id, user_id, api_name, platform,"
                    " base_url, api_key, secret_key, status) SELECT seq, seq,"
                    " CONCAT('replay ', seq), 'replay', '', 'k', 's', 1 FROM"
                    f" seq_1_to_{args.users}"
                )
                cur.execute(
                    "INSERT INTO hg_trading_robot (id, user_id, robot_name, api_config_id,"
                    " exchange, symbol, status) SELECT 99 + seq, seq, CONCAT('robot ', seq),"
                    f" seq, 'replay', 'BTCUSDT', 2 FROM seq_1_to_{args.users}"
                )
        conn.commit()
        conn.close()
        workdir = Path(tempfile.mkdtemp())
        replay = workdir / "exchange.jsonl" if args.synced else None
        if replay is not None:
            replay.write_text("", encoding="utf-8")
        cfg = config_for(url, workdir / "config.yaml", replay)
        run = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(cfg), "run"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "TZ": "UTC"},
        )
        charged: dict[str, float] = {}
        lines = [0]
        threading.Thread(target=reader, args=(run.stdout, charged, lines), daemon=True).start()
        time.sleep(3)  # let it start
        committed: dict[str, float] = {}
        load_before = os.getloadavg()[0]
        engine(name, args.rate, args.seconds, args.users, committed, replay)
        deadline = time.monotonic() + (150 if args.synced else 60)
        while time.monotonic() < deadline and not set(committed) <= set(charged):
            time.sleep(0.5)
        load_after = os.getloadavg()[0]
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        waits = [charged[sn] - t for sn, t in committed.items() if sn in charged]
        missed = len(committed) - len(waits)
        conn = admin(name)
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*), COUNT(DISTINCT order_id) FROM hg_toogo_power_consume")
            rows, distinct = cur.fetchone()
        conn.close()
        synced = "synced accounts (replay exchange)" if args.synced else "no exchange"
        print(
            f"engine: {len(committed)} closed profitable orders at {args.rate:g}/s for "
            f"{args.seconds:g} s; schedule as shipped (config.yaml); {synced}"
        )
        p50, p99 = percentile(waits, 0.5), percentile(waits, 0.99)
        print(
            f"time to charge: p50 {p50:.2f} s  p99 {p99:.2f} s  max {max(waits):.2f} s  "
            f"missed {missed}"
        )
        print(f"consume rows {rows} for {distinct} orders (exactly once: {rows == distinct})")
        print(
            f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after; "
            f"{lines[0]} log lines"
        )
        print(
            "reproduce: .venv/bin/python bench/time_to_charge.py "
            f"--rate {args.rate:g} --seconds {args.seconds:g} --users {args.users}"
            + (" --synced" if args.synced else "")
        )
        if missed or rows != distinct:
            sys.exit(1)
    finally:
        conn = admin()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


if __name__ == "__main__":
    main()
