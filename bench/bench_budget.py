"""Benchmark: does one cold history sync of many Binance accounts get the shared IP banned?

Run from the repository root::

    .venv/bin/python -m bench.bench_budget [--accounts 400] [--limit 2400] [--window 60]
        [--engine 1200] [--ban 120] [--phase 30] [--binance '{"budget": {...}}'] [--keep]

The acceptance scenario of "never get the engine's IP banned", unscaled:

1. a fake Binance USDⓈ-M on 127.0.0.1 that is one IP under Binance's documented request weight
   (``kits/fake_exchanges/binance.py``, ``IpWeightLimit``: ``--limit`` weight per ``--window``
   seconds, fixed clock windows, ``X-MBX-USED-WEIGHT-1M`` on every answer, 429 past the limit, 418
   and a ban of ``--ban`` seconds, doubling for repeat offenders, for not backing off), with the
   trading engine's steady load of ``--engine`` weight per window on the same IP;
2. ``--accounts`` binance API accounts on it (one user, one running BTCUSDT robot each) with two
   closes each, the first profitable and the second too on even accounts, in a fresh uniquely
   named MariaDB database (local server 127.0.0.1:3306 root, no password; env
   TOOGO_BENCH_MYSQL overrides) with hotgo's schema and the daemon's tables;
3. the real ``toogo-reconcile sync`` command in a subprocess (the ``python -m daemon`` of this
   checkout) with the shipped defaults, except that binance is enabled and pointed at the fake
   (``exchanges.binance: {base_url: <fake>}``, or the accounts' ``base_url`` on code without
   that key) and whatever ``--binance`` adds to ``exchanges.binance``, started ``--phase``
   seconds into one of the fake's clock windows (how much of the engine's weight that window
   already holds changes when, and whether, code without budgets overruns it);
4. prints the 429s and 418s (the daemon's and the engine's), the streams failed, the closes
   reconciled (rows in hg_trading_order), the charges (rows in hg_toogo_power_consume), the cycle's
   seconds (the summary's ``elapsed``), the least seconds the weight the sync used can take in
   what the engine leaves (weight / (limit - engine) x window, from the fake's counters), and
   their ratio. The acceptance: no 429, no 418, every close reconciled, ratio at most 1.5.

The fake runs in this process, the daemon in its own. The database is dropped afterwards
(``--keep`` keeps it); the daemon's log is kept when the run fails, or with ``--log FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pymysql
import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from daemon.exchanges_config import ExchangeConfig
from kits.fake_exchanges.binance import THREE_DAYS, FakeBinance, IpWeightLimit
from kits.fake_exchanges.harness import HOUR_MS, closed_record
from kits.upstream import create_upstream_schema
from reconcile.storage.db import Database, DatabaseSettings
from reconcile.storage.schema import trading_api_config, trading_robot

SERVER = os.environ.get("TOOGO_BENCH_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")
ROOT = Path(__file__).resolve().parent.parent


def admin(name: str | None = None) -> pymysql.connections.Connection:
    url = make_url(SERVER)
    return pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=name,
        autocommit=True,
    )


def scalar(name: str, sql: str) -> int:
    conn = admin(name)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return int(cur.fetchone()[0])
    finally:
        conn.close()


async def seed(url: str, fake: FakeBinance, accounts: int) -> int:
    """The schema, ``accounts`` accounts on ``fake`` with a robot and two closes each; returns
    the number of profitable closes."""
    db = Database(DatabaseSettings(url=url))
    await db.open()
    try:

        async def create(conn: AsyncConnection) -> None:
            await create_upstream_schema(conn, with_unique_key=True)

        await db.transaction(create, what="create schema")
        now_ms = int(time.time() * 1000)
        configs, robots, winners = [], [], 0
        for n in range(1, accounts + 1):
            key, secret = f"bench-key-{n}", f"bench-secret-{n}-{uuid.uuid4().hex[:8]}"
            records = fake.add_account(key, secret)
            records += closed_record("binance", close_ms=now_ms - 3 * HOUR_MS, profit="10")
            win = n % 2 == 0
            records += closed_record(
                "binance", close_ms=now_ms - 2 * HOUR_MS, profit="7" if win else "-4", long=win
            )
            winners += 1 + win
            configs.append(
                {
                    "id": n,
                    "user_id": 10_000 + n,
                    "platform": "binance",
                    "api_name": f"bench binance {n}",
                    "base_url": fake.url,
                    "api_key": key,
                    "secret_key": secret,
                    "status": 1,
                }
            )
            robots.append(
                {
                    "id": n,
                    "tenant_id": 3,
                    "user_id": 10_000 + n,
                    "api_config_id": n,
                    "exchange": "binance",
                    "symbol": "BTCUSDT",
                    "leverage": 10,
                    "robot_name": f"bench robot {n}",
                    "status": 2,
                }
            )

        async def insert(conn: AsyncConnection) -> None:
            await conn.execute(trading_api_config.insert(), configs)
            await conn.execute(trading_robot.insert(), robots)

        await db.transaction(insert, what="seed accounts and robots")
        return winners
    finally:
        await db.close()


def binance_section(fake: FakeBinance, extra: dict[str, Any]) -> dict[str, Any]:
    """``exchanges.binance``: the shipped defaults, pointed at the fake, plus ``extra``."""
    section: dict[str, Any] = {}
    if "base_url" in ExchangeConfig.model_fields:
        section["base_url"] = fake.url
    # else: code that honours the accounts' base_url (seeded pointing at the fake)
    section.update(extra)
    return section


async def run_sync(config: Path, log_path: Path) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOGO_")}
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            "--config",
            str(config),
            "sync",
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        code = await proc.wait()
    return code, time.monotonic() - started


def read_log(log_path: Path) -> tuple[dict[str, Any], Counter[str]]:
    summary: dict[str, Any] = {}
    errors: Counter[str] = Counter()
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "history sync summary":
            summary = event
        elif event.get("event") == "stream failed":
            errors[str(event.get("error", "")).split(":", 1)[0]] += 1
    return summary, errors


def command(args: argparse.Namespace) -> str:
    options = {
        "--accounts": str(args.accounts),
        "--limit": str(args.limit),
        "--window": f"{args.window:g}",
        "--engine": f"{args.engine:g}",
        "--ban": f"{args.ban:g}",
        "--phase": f"{args.phase:g}",
    }
    parts = [".venv/bin/python", "-m", "bench.bench_budget"]
    for option, value in options.items():
        parts += [option, value]
    if args.binance:
        parts += ["--binance", args.binance]
    return shlex.join(parts)


async def bench(args: argparse.Namespace) -> int:
    extra = json.loads(args.binance) if args.binance else {}
    name = f"trc_bench_budget_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin().cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    limit = IpWeightLimit(
        limit=args.limit,
        window=args.window,
        ban_min=args.ban,
        ban_max=max(args.ban, THREE_DAYS),
        engine_load=args.engine,
    )
    keep_log = args.log is not None
    tmp = Path(tempfile.mkdtemp(prefix="bench_budget_"))
    log_path = args.log or tmp / "sync.log"
    code = 1
    try:
        async with FakeBinance(weight_limit=limit) as fake:
            url = f"{SERVER}/{name}"
            winners = await seed(url, fake, args.accounts)
            config = tmp / "config.yaml"
            section = binance_section(fake, extra)
            config.write_text(
                yaml.safe_dump(
                    {
                        "database": {"url": url},
                        "logging": {"format": "json"},
                        "exchanges": {"binance": section},
                    }
                ),
                encoding="utf-8",
            )
            # start the daemon --phase seconds into a window: where in Binance's clock minute a
            # sync starts decides how much of the engine's weight that minute already holds
            await asyncio.sleep((args.phase - time.time()) % args.window)
            engine_before = limit.weight["engine"]
            code, wall = await run_sync(config, log_path)
            engine_during = limit.weight["engine"] - engine_before
        summary, errors = read_log(log_path)
        expected = 2 * args.accounts
        orders = scalar(name, "SELECT COUNT(*) FROM hg_trading_order")
        charges = scalar(name, "SELECT COUNT(*) FROM hg_toogo_power_consume")
        weight = limit.weight["client"]
        minimum = limit.min_seconds(weight)
        elapsed = float(summary.get("elapsed", wall))
        peaks = [round(w.peak) for w in limit.windows if w.weight]
        print(f"command: {command(args)}")
        print(f"code: {describe_code()}; exchanges.binance = {json.dumps(section)}")
        print(
            f"scenario: {args.accounts} binance accounts x 2 closes ({winners} profitable) on "
            f"one IP: {args.limit} weight per {args.window:g} s, the engine {args.engine:g} of "
            f"it (sent {engine_during:.0f} during the sync), bans from {args.ban:g} s"
        )
        print(
            f"429 answers: {limit.rate_limited} (daemon {limit.count(429, 'client')}, engine "
            f"{limit.count(429, 'engine')}); 418 answers: {limit.banned} (daemon "
            f"{limit.count(418, 'client')}, engine {limit.count(418, 'engine')}); bans "
            f"{[round(end - start) for start, end in limit.bans]} s"
        )
        print(
            f"streams: {summary.get('streams')}, failed {summary.get('failed_streams')}"
            + (f" ({dict(errors)})" if errors else "")
        )
        print(
            f"closes reconciled: {orders}/{expected}; charges: {charges}/{winners} "
            f"(summary charged {summary.get('charged')})"
        )
        print(
            f"requests to the fake: userTrades {fake.count('closed')}, exchangeInfo "
            f"{fake.count('markets')}; weight used by the sync {weight:.0f}"
        )
        print(
            f"cycle: {elapsed:.1f} s (process {wall:.1f} s, exit {code}); minimum the budget "
            f"allows: {minimum:.1f} s = {weight:.0f} / ({args.limit} - {args.engine:g}) x "
            f"{args.window:g} s; ratio {elapsed / minimum:.2f}"
        )
        print(f"peak used weight per window: {peaks}")
        ok = (
            limit.rate_limited == limit.banned == 0
            and orders == expected
            and charges == winners
            and elapsed <= 1.5 * minimum
        )
        print("acceptance: " + ("PASS" if ok else "FAIL"))
        if not ok:
            keep_log = True
        return 0 if ok else 1
    finally:
        if keep_log:
            print(f"daemon log: {log_path}")
        else:
            log_path.unlink(missing_ok=True)
        if args.keep:
            print(f"kept database {name}")
        else:
            with admin().cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def describe_code() -> str:
    """Where the measured code is, its commit, and whether it has the budgets module (the
    working tree may hold uncommitted changes: only ``git rev-parse``, read-only, is run)."""
    git = shutil.which("git")
    head = "unknown commit"
    if git is not None:
        try:
            head = subprocess.run(
                [git, "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            head = "no git repository"
    budgets = (ROOT / "exchange_adapters" / "budgets.py").exists()
    return f"{ROOT} at {head}, {'with' if budgets else 'without'} exchange_adapters/budgets.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=400)
    parser.add_argument("--limit", type=int, default=2400, help="the IP's weight per window")
    parser.add_argument("--window", type=float, default=60.0, help="seconds (Binance: 60)")
    parser.add_argument("--engine", type=float, default=1200.0, help="engine weight per window")
    parser.add_argument("--ban", type=float, default=120.0, help="first ban, seconds")
    parser.add_argument(
        "--phase", type=float, default=30.0, help="start the sync this long into a window (s)"
    )
    parser.add_argument("--binance", help="JSON merged into exchanges.binance of the config")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--log", type=Path, help="keep the daemon's JSON log in this file")
    args = parser.parse_args()
    sys.exit(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
