"""Capacity benchmark: N OKX accounts, one quiet history cycle, the real daemon as subprocesses.

Run from the repository root::

    .venv/bin/python -m bench.bench_capacity [--accounts 10000] [--daemons 1,2] [--mode sync,run]
        [--latency 0.15] [--concurrency auto|N] [--profile quiet.prof] [--old --code DIR]

The figures of the issue ("10,000 OKX accounts, quiet cycle, fakes at 150 ms latency: one cycle
within the 60 s interval with at most 2 daemons, total RSS at most 1 GB"), measured like this, on
a fresh uniquely named MariaDB database (created, then dropped; needs the local server
127.0.0.1:3306 root, no password; env TOOGO_BENCH_MYSQL overrides):

1. a fake OKX runs in a **separate process** (``python -m bench.bench_capacity fake``, an aiohttp
   server on 127.0.0.1, so the daemons' CPU is measured alone): ``GET /api/v5/public/instruments``
   (kits/fake_exchanges/okx.py's instruments) and ``GET /api/v5/account/positions-history`` for
   ANY account ``k-<id>``: the signature is checked like OKX's (HMAC-SHA256) against the secret
   ``s-k-<id>`` and passphrase ``p-k-<id>`` the seeding writes, and every request is answered with
   an empty list (a quiet cycle) after ``--latency`` seconds (``asyncio.sleep``). It counts the
   positions-history requests per API key with their times (``/bench/stats``): the counts show
   whether every account was polled exactly once;
2. creates hotgo's schema and the daemon's own tables with the project's ``create_hotgo_schema``
   and ``create_own_schema`` (the working tree's: a superset of the before-code's), and seeds N
   accounts on okx (each its own user and wallet; plain credentials, not ``ENC:``), one running
   robot each (status 2, ``BTC_USDT``);
3. writes a config.yaml (database URL, ``power`` rules, ``sync.concurrency``, JSON logs at info to
   a file, ``exchanges: {okx: {base_url: <fake>}}``; with ``--old`` ``exchanges: {okx: {}}``, the
   accounts' ``hg_trading_api_config.base_url`` pointing at the fake as the old code reads it),
   runs one cold ``python -m daemon --config c.yaml sync`` (creates the cursors; fake latency 0;
   not measured), then the measured quiet cycles:

   - ``sync``: D one-shot ``sync`` processes started at once. Per daemon: wall time, CPU
     seconds (user+sys, ``os.wait4``'s rusage), CPU spent before the fake saw the first request
     (start-up: imports, config, schema check; sampled from /proc every 50 ms), max RSS, its
     ``history sync summary``. The cycle's wall time runs until the last daemon exits.
   - ``run``: D ``run`` daemons started at once (the fleet: they share the accounts through
     ``toogo_reconcile_poll``). Cycle 1 ends when every account's lease is released with a
     ``polled_at`` after the start; then the bench makes every account due again (``UPDATE
     toogo_reconcile_poll SET due_at = now``: "the interval has passed") and measures cycle 2,
     the warm steady state (CPU from /proc deltas; the daemons' background jobs - realtime
     sweep every 5 s - included). Then SIGTERM; max RSS from rusage. The old code has no poll
     table: its cycles end with its ``history sync summary`` lines (the second one a scheduled
     interval, 60 s, after the first);

   and prints per-cycle totals: CPU per stream (total CPU / N), RSS per account (sum of the
   daemons' max RSS / N), wall time, positions-history requests per account as the fake counted
   them (min/max over all N accounts), the fake's own CPU, and the machine's load average (the
   2 cores are shared: other engineers' tests run beside this).

``--old --code DIR`` runs the daemon from DIR (``PYTHONPATH=DIR``, cwd DIR, the same venv), e.g.
a ``git worktree`` of the last commit. ``--profile FILE`` adds one more ``sync`` cycle of one
daemon under ``python -m cProfile -o FILE`` and prints its top functions by cumulative and by self
time, and the self time by kind (database, exchange/HTTP, logging, event loop, ...).

Shares are one machine's: run before and after in one sitting and compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import os
import pstats
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pymysql
from sqlalchemy.engine import make_url

SERVER = os.environ.get("TOOGO_BENCH_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")
ROOT = Path(__file__).resolve().parent.parent
SYMBOL = "BTC_USDT"
USER_BASE = 100_000
EMPTY = b'{"code":"0","msg":"","data":[]}'
WAIT_LIMIT = 900.0  # seconds: a cycle still running after this is reported as unfinished


def api_key(account_id: int) -> str:
    return f"k-{account_id}"


def secret_for(key: str) -> str:
    return "s-" + key


def passphrase_for(key: str) -> str:
    return "p-" + key


# -- the fake OKX (its own process) ----------------------------------------------------------------


def serve_fake(port: int, latency: float) -> None:
    """``python -m bench.bench_capacity fake``: serve until SIGTERM; prints ``PORT <n>``."""
    from aiohttp import web

    from kits.fake_exchanges.okx import _instrument
    from kits.fake_exchanges.server import DEFAULT_MARKETS

    state: dict[str, Any] = {"latency": latency, "bad": 0, "markets": 0}
    closed: defaultdict[str, list[float]] = defaultdict(list)
    other: Counter[str] = Counter()
    instruments = orjson.dumps(
        {"code": "0", "msg": "", "data": [_instrument(m) for m in DEFAULT_MARKETS]}
    )

    def cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def answer(body: bytes, status: int = 200) -> web.Response:
        return web.Response(body=body, status=status, content_type="application/json")

    async def markets(request: web.Request) -> web.Response:
        state["markets"] += 1
        if request.query.get("instType") != "SWAP":
            return answer(EMPTY)
        return answer(instruments)

    async def history(request: web.Request) -> web.Response:
        headers = request.headers
        key = headers.get("OK-ACCESS-KEY", "")
        stamp = headers.get("OK-ACCESS-TIMESTAMP", "")
        prehash = (stamp + request.method + request.path_qs).encode()
        sign = base64.b64encode(
            hmac.new(secret_for(key).encode(), prehash, hashlib.sha256).digest()
        ).decode()
        if (
            not key.startswith("k-")
            or headers.get("OK-ACCESS-PASSPHRASE") != passphrase_for(key)
            or not hmac.compare_digest(headers.get("OK-ACCESS-SIGN", ""), sign)
        ):
            state["bad"] += 1
            return answer(b'{"code":"50113","msg":"Invalid Sign.","data":[]}', 401)
        closed[key].append(time.time())
        if state["latency"] > 0:
            await asyncio.sleep(state["latency"])
        return answer(EMPTY)

    async def unknown(request: web.Request) -> web.Response:
        other[f"{request.method} {request.path}"] += 1
        return answer(b'{"code":"50000","msg":"no such route","data":[]}', 404)

    async def stats(request: web.Request) -> web.Response:
        if request.query.get("brief"):
            total = sum(len(v) for v in closed.values())
            return answer(orjson.dumps({"closed": total, "cpu": cpu()}))
        return answer(
            orjson.dumps(
                {
                    "closed": closed,
                    "markets": state["markets"],
                    "bad_auth": state["bad"],
                    "other": other,
                    "cpu": cpu(),
                    "latency": state["latency"],
                }
            )
        )

    async def reset(request: web.Request) -> web.Response:
        closed.clear()
        other.clear()
        state["bad"] = state["markets"] = 0
        if "latency" in request.query:
            state["latency"] = float(request.query["latency"])
        return answer(orjson.dumps({"cpu": cpu()}))

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/api/v5/public/instruments", markets)
        app.router.add_get("/api/v5/account/positions-history", history)
        app.router.add_get("/bench/stats", stats)
        app.router.add_post("/bench/reset", reset)
        app.router.add_route("*", "/{tail:.*}", unknown)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
        await site.start()
        server = site._server
        assert server is not None
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)  # type: ignore[attr-defined]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


class Fake:
    """The fake OKX process, seen from the bench."""

    def __init__(self, latency: float) -> None:
        raise_fd_limit()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_capacity", "fake", "--latency", str(latency)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"the fake did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def _get(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(self.url + path, method=method)  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return orjson.loads(response.read())

    def reset(self, latency: float) -> float:
        return float(self._get(f"/bench/reset?latency={latency}", "POST")["cpu"])

    def brief(self) -> dict[str, Any]:
        return dict(self._get("/bench/stats?brief=1"))

    def stats(self) -> dict[str, Any]:
        return dict(self._get("/bench/stats"))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def raise_fd_limit() -> None:
    """10,000 accounts may hold 10,000 sockets (the old code: one session per account)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- database --------------------------------------------------------------------------------------


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


async def seed(name: str, accounts: int, fake_url: str) -> None:
    """hotgo's schema and the daemon's tables (the project's own DDL), N okx accounts, each
    its own user and wallet, one running robot each."""
    from sqlalchemy.ext.asyncio import AsyncConnection

    from reconcile.storage.db import Database, DatabaseSettings
    from reconcile.storage.schema import (
        create_hotgo_schema,
        create_own_schema,
        trading_api_config,
        trading_robot,
        wallet,
    )

    db = Database(DatabaseSettings(url=f"{SERVER}/{name}"))
    await db.open()
    try:

        async def create(conn: AsyncConnection) -> None:
            await create_hotgo_schema(conn, with_unique_key=True)
            await create_own_schema(conn)

        await db.transaction(create, what="create schema")
        now = db.now()
        ids = range(1, accounts + 1)
        rows = {
            trading_api_config: [
                {
                    "id": a,
                    "tenant_id": 3,
                    "user_id": USER_BASE + a,
                    "api_name": f"bench okx {a}",
                    "platform": "okx",
                    "base_url": fake_url,
                    "api_key": api_key(a),
                    "secret_key": secret_for(api_key(a)),
                    "passphrase": passphrase_for(api_key(a)),
                    "status": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for a in ids
            ],
            trading_robot: [
                {
                    "id": a,
                    "tenant_id": 3,
                    "user_id": USER_BASE + a,
                    "api_config_id": a,
                    "robot_name": f"bench robot {a}",
                    "exchange": "okx",
                    "symbol": SYMBOL,
                    "leverage": 10,
                    "status": 2,
                    "created_at": now,
                    "updated_at": now,
                }
                for a in ids
            ],
            wallet: [
                {
                    "user_id": USER_BASE + a,
                    "power": Decimal(1000),
                    "gift_power": Decimal(0),
                    "total_power_consume": Decimal(0),
                    "created_at": now,
                    "updated_at": now,
                }
                for a in ids
            ],
        }

        async def insert(conn: AsyncConnection) -> None:
            for table, values in rows.items():
                for start in range(0, len(values), 2000):
                    await conn.execute(table.insert(), values[start : start + 2000])

        await db.transaction(insert, what="seed accounts")
    finally:
        await db.close()


def make_all_due(name: str, fleet: bool) -> str | None:
    """ "The interval has passed": with the poll schedule (``fleet``) every account due now, no
    lease held, and the server's UTC time just before; without it (the old code, whose ``run``
    skips a stream whose cursor moved within the interval) every cursor an hour older, None."""
    conn = admin(name)
    try:
        with conn.cursor() as cur:
            if not fleet:
                cur.execute(
                    "UPDATE toogo_reconcile_cursor SET updated_at = updated_at - INTERVAL 1 HOUR"
                )
                return None
            cur.execute("SELECT UTC_TIMESTAMP(6)")
            now = str(cur.fetchone()[0])
            cur.execute(
                "UPDATE toogo_reconcile_poll SET due_at = UTC_TIMESTAMP(6), owner = NULL,"
                " lease_until = NULL WHERE due_at < '9999-01-01'"
            )
            return now
    finally:
        conn.close()


def released_since(conn: pymysql.connections.Connection, since: str) -> int:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM toogo_reconcile_poll WHERE polled_at >= %s AND owner IS NULL",
            (since,),
        )
        return int(cur.fetchone()[0])


# -- the daemons -----------------------------------------------------------------------------------


def write_config(path: Path, name: str, args: argparse.Namespace, fake_url: str) -> None:
    okx = "{}" if args.old else f"{{base_url: '{fake_url}'}}"
    path.write_text(f"""\
database:
  url: {SERVER}/{name}
  timezone: UTC
power:
  consume_rate: "0.10"
  min_consume: "0.01"
sync:
  concurrency: {args.concurrency}
schedule:
  history_sync: 60s
exchanges:
  okx: {okx}
logging:
  format: json
  level: info
""")


def proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Daemon:
    index: int
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    ended: float | None = None
    status: int | None = None
    cpu: float = 0.0  # user + sys at exit (rusage)
    max_rss_mb: float = 0.0
    cpu_seen: float = 0.0  # last CPU sampled from /proc while running
    cpu_at_first_request: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def reap(self, block: bool = False) -> bool:
        if self.ended is not None:
            return True
        pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        self.ended = time.perf_counter()
        self.proc.returncode = self.status = os.waitstatus_to_exitcode(status)
        self.cpu = usage.ru_utime + usage.ru_stime
        self.max_rss_mb = usage.ru_maxrss / 1024
        return True

    def sample(self) -> None:
        cpu = proc_cpu(self.pid)
        if cpu is not None and self.ended is None:
            self.cpu_seen = cpu

    def summaries(self) -> list[dict[str, Any]]:
        found = []
        with contextlib.suppress(OSError), self.log.open("rb") as lines:
            for line in lines:
                if b"history sync summary" in line:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        found.append(orjson.loads(line))
        return found

    def log_figures(self) -> tuple[int, Counter[str], str | None]:
        """Lines, lines by level, the first error or warning."""
        levels: Counter[str] = Counter()
        first: str | None = None
        count = 0
        with contextlib.suppress(OSError), self.log.open("rb") as lines:
            for line in lines:
                count += 1
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    levels["not json"] += 1
                    first = first or line.decode(errors="replace")[:300]
                    continue
                level = str(entry.get("level", "?")) if isinstance(entry, dict) else "?"
                levels[level] += 1
                if first is None and level in ("warning", "error", "critical"):
                    first = line.decode(errors="replace")[:300]
        return count, levels, first


def start_daemons(
    count: int,
    command: list[str],
    config: Path,
    code: Path,
    tmp: Path,
    tag: str,
    profile: Path | None = None,
) -> list[Daemon]:
    env = dict(os.environ)
    if code != ROOT:
        env["PYTHONPATH"] = str(code)
    env.pop("TOOGO_DATABASE_URL", None)
    daemons = []
    for i in range(count):
        log = tmp / f"{tag}-daemon{i + 1}.log"
        head = [sys.executable]
        if profile is not None and i == 0:
            head += ["-m", "cProfile", "-o", str(profile)]
        argv = [*head, "-m", "daemon", "--config", str(config), *command]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT)
        daemons.append(Daemon(i + 1, proc, log, time.perf_counter()))
    return daemons


def stop_daemons(daemons: list[Daemon], timeout: float = 60.0) -> None:
    for d in daemons:
        if d.ended is None:
            d.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not all([d.reap() for d in daemons]):  # a list: reap each, not up to a running one
        if time.monotonic() > deadline:
            for d in daemons:
                if d.ended is None:
                    d.proc.kill()
                    d.reap(block=True)
        time.sleep(0.05)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


# -- the figures -----------------------------------------------------------------------------------


@dataclass
class Figures:
    label: str
    accounts: int
    daemons: int
    code: str
    wall: float
    cpu: float
    rss_mb: float
    per_account: tuple[int, int]
    polled: int
    fake_cpu: float
    load_before: str
    load_after: str
    finished: bool = True
    startup_cpu: float | None = None
    lines: list[str] = field(default_factory=list)

    def row(self) -> str:
        n = self.accounts
        start = "-" if self.startup_cpu is None else f"{self.startup_cpu:.1f}"
        lo, hi = self.per_account
        return (
            f"| {n:,} | {self.daemons} | {self.code} | {self.label} | {self.wall:.1f}"
            f"{'' if self.finished else ' (unfinished)'} | {self.cpu:.1f} | {start} | "
            f"{1000 * self.cpu / n:.2f} | {self.rss_mb:.0f} | {self.rss_mb / n:.3f} | "
            f"{lo}/{hi} ({self.polled:,} polled) | {self.fake_cpu:.1f} | "
            f"{self.load_before} -> {self.load_after} |"
        )


HEADER = (
    "| N | daemons | code | cycle | wall s | CPU s | of it start-up s | CPU ms/stream | "
    "max RSS MB | RSS MB/account | requests per account min/max | fake CPU s | "
    "load 1/5/15 before -> after |\n|" + "---|" * 13
)


def requests_per_account(stats: dict[str, Any], accounts: int) -> tuple[tuple[int, int], int]:
    closed = stats["closed"]
    counts = [len(closed.get(api_key(a), ())) for a in range(1, accounts + 1)]
    return (min(counts), max(counts)), sum(1 for c in counts if c)


def describe_fake(stats: dict[str, Any], accounts: int) -> str:
    (lo, hi), polled = requests_per_account(stats, accounts)
    times = sorted(t for v in stats["closed"].values() for t in v)
    spread = f", first to last request {times[-1] - times[0]:.1f} s" if times else ""
    other = dict(stats["other"])
    return (
        f"  fake: {sum(len(v) for v in stats['closed'].values())} positions-history "
        f"requests, {polled}/{accounts} accounts polled, per account min {lo} max {hi}"
        f"{spread}; markets {stats['markets']}, bad signatures {stats['bad_auth']}"
        + (f", other routes {other}" if other else "")
    )


def describe_daemon(d: Daemon, until: float | None = None) -> str:
    end = d.ended if until is None else until
    wall = (end or time.perf_counter()) - d.started
    start = (
        ""
        if d.cpu_at_first_request is None
        else (f" (of it {d.cpu_at_first_request:.2f} s before the first exchange request)")
    )
    count, levels, first = d.log_figures()
    summaries = d.summaries()
    summary = ""
    if summaries:
        s = summaries[-1]
        summary = (
            f"; summary: streams {s.get('streams')}, requests {s.get('requests')}, "
            f"skipped_streams {s.get('skipped_streams')}, failed_streams "
            f"{s.get('failed_streams')}, elapsed {s.get('elapsed')} s"
        )
    text = (
        f"  daemon {d.index} (pid {d.pid}): exit {d.status}, wall {wall:.1f} s, CPU "
        f"{d.cpu:.2f} s{start}, max RSS {d.max_rss_mb:.0f} MB{summary}; log {count} lines "
        f"{dict(levels)}"
    )
    if first:
        text += f"\n    first warning/error: {first.strip()}"
    return text


def startup_cpu(daemons: list[Daemon]) -> float | None:
    seen = [d.cpu_at_first_request for d in daemons]
    return None if None in seen else sum(c or 0.0 for c in seen)


def sample_until_first_request(daemons: list[Daemon], fake: Fake) -> None:
    """Sample the daemons' CPU until the fake has seen a request: the start-up CPU."""
    brief = fake.brief()
    for d in daemons:
        d.sample()
    if brief["closed"] > 0:
        for d in daemons:
            if d.cpu_at_first_request is None:
                d.cpu_at_first_request = d.cpu_seen


# -- the cycles ------------------------------------------------------------------------------------


def cycle_sync(ctx: Context, count: int, profile: Path | None = None) -> Figures:
    """D one-shot ``sync`` processes at once."""
    fake_cpu0 = ctx.fake.reset(ctx.args.latency)
    if ctx.fleet:
        make_all_due(ctx.name, True)  # no lease left over
    before = load()
    daemons = start_daemons(
        count,
        ["sync"],
        ctx.config,
        ctx.code,
        ctx.tmp,
        f"sync{count}{'-prof' if profile else ''}",
        profile,
    )
    started = time.perf_counter()
    first = False
    while not all([d.reap() for d in daemons]):  # a list: reap each, not up to a running one
        if not first:
            sample_until_first_request(daemons, ctx.fake)
            first = all(d.cpu_at_first_request is not None for d in daemons)
        if time.perf_counter() - started > WAIT_LIMIT:
            stop_daemons(daemons)
            break
        time.sleep(0.05)
    wall = max(d.ended or time.perf_counter() for d in daemons) - started
    after = load()
    stats = ctx.fake.stats()
    per_account, polled = requests_per_account(stats, ctx.args.accounts)
    startup = startup_cpu(daemons)
    label = "sync one-shot" + (" under cProfile" if profile else "")
    figures = Figures(
        label,
        ctx.args.accounts,
        count,
        ctx.code_label,
        wall,
        sum(d.cpu for d in daemons),
        sum(d.max_rss_mb for d in daemons),
        per_account,
        polled,
        stats["cpu"] - fake_cpu0,
        before,
        after,
        finished=all(d.status is not None for d in daemons),
        startup_cpu=startup,
    )
    figures.lines = [describe_daemon(d) for d in daemons] + [
        describe_fake(stats, ctx.args.accounts)
    ]
    return figures


def wait_cycle(
    ctx: Context, daemons: list[Daemon], since: str | None, summaries: int, started: float
) -> bool:
    """Until every account was polled and released after ``since`` (the poll table), or,
    without one, until each daemon logged ``summaries`` history sync summaries."""
    conn = admin(ctx.name) if since is not None else None
    first = False
    try:
        while time.perf_counter() - started < WAIT_LIMIT:
            if any([d.reap() for d in daemons]):
                return False  # a daemon died
            if not first:
                sample_until_first_request(daemons, ctx.fake)
                first = all(d.cpu_at_first_request is not None for d in daemons)
            if conn is not None and since is not None:
                if released_since(conn, since) >= ctx.args.accounts:
                    return True
                time.sleep(0.1)
            else:
                if all(len(d.summaries()) >= summaries for d in daemons):
                    return True
                time.sleep(0.2)
        return False
    finally:
        if conn is not None:
            conn.close()


def cycle_run(ctx: Context, count: int) -> list[Figures]:
    """D ``run`` daemons: the first cycle after start, then a warm one; SIGTERM."""
    results = []
    fake_cpu0 = ctx.fake.reset(ctx.args.latency)
    since = make_all_due(ctx.name, ctx.fleet)
    before = load()
    daemons = start_daemons(count, ["run"], ctx.config, ctx.code, ctx.tmp, f"run{count}")
    started = time.perf_counter()
    try:
        done = wait_cycle(ctx, daemons, since, 1, started)
        wall1 = time.perf_counter() - started
        for d in daemons:
            d.sample()
        cpu1 = [d.cpu_seen for d in daemons]
        rss1 = sum(proc_rss_mb(d.pid) or 0.0 for d in daemons)
        after = load()
        stats = ctx.fake.stats()
        per_account, polled = requests_per_account(stats, ctx.args.accounts)
        first = Figures(
            "run: 1st cycle (from start)",
            ctx.args.accounts,
            count,
            ctx.code_label,
            wall1,
            sum(cpu1),
            rss1,
            per_account,
            polled,
            stats["cpu"] - fake_cpu0,
            before,
            after,
            finished=done,
            startup_cpu=startup_cpu(daemons),
        )
        first.lines = [
            f"  daemon {d.index}: CPU {c:.2f} s, RSS now {proc_rss_mb(d.pid) or 0:.0f} MB"
            for d, c in zip(daemons, cpu1, strict=True)
        ]
        first.lines.append("  (RSS column in run cycles: the daemons' VmRSS at the cycle's end)")
        first.lines.append(describe_fake(stats, ctx.args.accounts))
        results.append(first)
        if not done:
            return results
        # the warm cycle: the fleet's accounts made due at once; the old code's next scheduled
        # cycle comes one interval after the start (its CPU counted from just before it)
        idle = ""
        if not ctx.fleet:
            time.sleep(max(0.0, started + 57.0 - time.perf_counter()))
            for d in daemons:
                d.sample()
            idle_cpu = sum(d.cpu_seen for d in daemons) - sum(cpu1)
            idle = f", idle background between the cycles {idle_cpu:.2f} s CPU"
            cpu1 = [d.cpu_seen for d in daemons]
        fake_cpu0 = ctx.fake.reset(ctx.args.latency)
        before = load()
        since = make_all_due(ctx.name, True) if ctx.fleet else None
        started2 = time.perf_counter()
        done = wait_cycle(ctx, daemons, since, 2, started2 if since else started)
        wall2 = time.perf_counter() - started2
        for d in daemons:
            d.sample()
        if since is None:  # the old code: the cycle's own summary
            wall2 = max(float(d.summaries()[-1]["elapsed"]) for d in daemons)
        cpu2 = [d.cpu_seen - c for d, c in zip(daemons, cpu1, strict=True)]
        rss2 = sum(proc_rss_mb(d.pid) or 0.0 for d in daemons)
        after = load()
        stats = ctx.fake.stats()
        per_account, polled = requests_per_account(stats, ctx.args.accounts)
        second = Figures(
            "run: 2nd cycle (warm)",
            ctx.args.accounts,
            count,
            ctx.code_label,
            wall2,
            sum(cpu2),
            rss2,
            per_account,
            polled,
            stats["cpu"] - fake_cpu0,
            before,
            after,
            finished=done,
        )
        second.lines = [
            f"  daemon {d.index}: CPU {c:.2f} s, RSS now {proc_rss_mb(d.pid) or 0:.0f} MB"
            for d, c in zip(daemons, cpu2, strict=True)
        ]
        second.lines.append(describe_fake(stats, ctx.args.accounts) + idle)
        results.append(second)
    finally:
        stop_daemons(daemons)
        for figures in results:
            figures.lines.append(
                "  at exit: "
                + ", ".join(
                    f"daemon {d.index} exit {d.status}, CPU {d.cpu:.1f} s, max RSS "
                    f"{d.max_rss_mb:.0f} MB"
                    for d in daemons
                )
            )
        if results:
            results[-1].lines += [describe_daemon(d, until=d.ended) for d in daemons]
    return results


# -- the profile -----------------------------------------------------------------------------------

KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("database", ("sqlalchemy", "aiomysql", "pymysql", "asyncmy", "reconcile/storage/db.py",
                  "reconcile/sync/fleet.py")),
    ("exchange/HTTP", ("ccxt", "aiohttp", "yarl", "multidict", "exchange_adapters", "hmac.py",
                       "base64.py", "urllib/parse", "http/cookies", "ssl.py", "json/")),
    ("logging", ("structlog", "daemon/logs.py", "logging/")),
    ("event loop", ("asyncio", "selectors.py")),
    ("imports", ("<frozen importlib", "importlib")),
    ("config", ("pydantic", "yaml", "daemon/config.py", "daemon/exchanges_config.py")),
    ("sync/core", ("reconcile/",)),
)  # fmt: skip
BUILTIN_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("orjson", "write")),
    ("exchange/HTTP", ("_hashlib", "hmac", "b64", "_ssl", "loads", "dumps")),
    ("event loop", ("poll", "recv", "send", "select", "socket")),
    ("imports", ("marshal", "exec", "compile", "_imp", "posix.stat", "io.open_code")),
)  # fmt: skip


def kind_of(key: tuple[str, int, str]) -> str:
    path, _, name = key
    if path == "~":
        for kind, marks in BUILTIN_KINDS:
            if any(m in name for m in marks):
                return kind + " (C)"
        return "other builtins (C)"
    for kind, marks in KINDS:
        if any(m in path for m in marks):
            return kind
    return "other Python"


def profile_report(path: Path, top: int) -> list[str]:
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    by_kind: Counter[str] = Counter()
    for key, (_, _, tottime, _, _) in raw.items():
        by_kind[kind_of(key)] += tottime
    lines = [f"cProfile of one quiet sync cycle ({path}): {total:.2f} s self time in all"]
    lines.append(
        "  self time by kind: "
        + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f} %)" for k, v in by_kind.most_common())
    )
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        s = pstats.Stats(str(path), stream=out)
        s.sort_stats(order).print_stats(top)
        text = out.getvalue()
        body = text[text.find("   ncalls") :] if "   ncalls" in text else text
        lines.append(f"  top {top} by {order}:")
        lines += ["    " + line for line in body.rstrip().splitlines()]
    return lines


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    name: str
    fake: Fake
    config: Path
    code: Path
    code_label: str
    tmp: Path

    @property
    def fleet(self) -> bool:
        """Whether the code under test shares accounts through the poll schedule."""
        return (self.code / "reconcile" / "fleet.py").exists()


def code_version(code: Path) -> str:
    git = shutil.which("git")
    if git is None:
        return str(code)
    try:
        head = subprocess.run(
            [git, "rev-parse", "--short", "HEAD"],
            cwd=code,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--", "reconcile", "exchange_adapters", "daemon"],
            cwd=code,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(code)
    return f"{code} at {head}" + (" + uncommitted changes" if dirty else "")


def bench(args: argparse.Namespace) -> None:
    code = args.code.resolve()
    print(
        "command: "
        + " ".join([Path(sys.executable).name, "-m", "bench.bench_capacity", *sys.argv[1:]])
    )
    print(
        f"code: {code_version(code)}{' (old: accounts base_url)' if args.old else ''}; "
        f"load {load()}; {os.cpu_count()} cores"
    )
    name = f"trc_bench_cap_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin().cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    fake = Fake(0.0)
    results: list[Figures] = []
    try:
        started = time.perf_counter()
        asyncio.run(seed(name, args.accounts, fake.url))
        print(
            f"database {name}: {args.accounts} okx accounts, one running robot each, seeded "
            f"in {time.perf_counter() - started:.1f} s; fake OKX at {fake.url} (pid "
            f"{fake.proc.pid})"
        )
        with tempfile.TemporaryDirectory(prefix="bench_capacity_") as tmp_name:
            tmp = Path(args.keep_logs) if args.keep_logs else Path(tmp_name)
            tmp.mkdir(parents=True, exist_ok=True)
            config = tmp / "config.yaml"
            write_config(config, name, args, fake.url)
            label = "before" if args.old else "after"
            ctx = Context(args, name, fake, config, code, label, tmp)
            # the cold cycle: cursors created; not measured, the fake answering at once
            fake.reset(0.0)
            started = time.perf_counter()
            [cold] = start_daemons(1, ["sync"], config, code, tmp, "cold")
            cold.reap(block=True)
            print(
                f"cold sync: exit {cold.status}, {time.perf_counter() - started:.1f} s wall, "
                f"CPU {cold.cpu:.1f} s, max RSS {cold.max_rss_mb:.0f} MB; load {load()}"
            )
            print(describe_fake(fake.stats(), args.accounts))
            if cold.status != 0:
                print(describe_daemon(cold))
            for mode in args.mode:
                for count in args.daemons:
                    got = [cycle_sync(ctx, count)] if mode == "sync" else cycle_run(ctx, count)
                    for figures in got:
                        print(f"{figures.label}, {count} daemon(s), {label}:")
                        print(HEADER.split("\n")[0])
                        print(figures.row())
                        for line in figures.lines:
                            print(line)
                    results += got
            if args.profile:
                prof = Path(args.profile).resolve()
                figures = cycle_sync(ctx, 1, prof)
                print(f"{figures.label}, 1 daemon, {label}:")
                print(figures.row())
                for line in figures.lines:
                    print(line)
                results.append(figures)
                for line in profile_report(prof, args.profile_top):
                    print(line)
        print()
        print(
            f"summary (latency {args.latency * 1000:.0f} ms, sync.concurrency {args.concurrency}):"
        )
        print(HEADER)
        for figures in results:
            print(figures.row())
    finally:
        fake.stop()
        if args.keep_db:
            print(f"kept database {name}")
        else:
            with admin().cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def main() -> None:
    if sys.argv[1:2] == ["fake"]:
        fake = argparse.ArgumentParser(prog="bench_capacity fake")
        fake.add_argument("fake")
        fake.add_argument("--port", type=int, default=0)
        fake.add_argument("--latency", type=float, default=0.15)
        fa = fake.parse_args()
        serve_fake(fa.port, fa.latency)
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--daemons", default="1", help="comma list, e.g. 1,2")
    parser.add_argument("--mode", default="sync", help="comma list of sync, run")
    parser.add_argument("--latency", type=float, default=0.15, help="the fake's answer delay, s")
    parser.add_argument(
        "--concurrency", default="auto", help="sync.concurrency: auto (the shipped default) or N"
    )
    parser.add_argument(
        "--old", action="store_true", help="the code before: base_url from the accounts' rows"
    )
    parser.add_argument("--code", type=Path, default=ROOT, help="run the daemon from this tree")
    parser.add_argument("--profile", metavar="FILE", help="also one sync cycle under cProfile")
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep the daemons' logs there")
    args = parser.parse_args()
    args.daemons = [int(d) for d in args.daemons.split(",")]
    args.mode = [m.strip() for m in args.mode.split(",")]
    if not set(args.mode) <= {"sync", "run"}:
        parser.error("--mode: sync and/or run")
    if args.concurrency != "auto" and not args.concurrency.isdigit():
        parser.error("--concurrency: auto or a number")
    if args.old and args.concurrency == "auto":
        parser.error("--old: the old code has no auto concurrency: give --concurrency N")
    bench(args)


if __name__ == "__main__":
    main()
