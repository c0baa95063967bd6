"""``toogo-reconcile demo``: the whole cycle on a fresh demo database, explained as it runs.

The story (times relative to now): the engine's realtime path charges two orders at close and
loses the ``power_consumed`` update of one (the old double-charge bug); the history sync reads
what the "exchanges" (a replay file written for this run) say closed - it matches the engine's
orders, closes an order still open locally, inserts a position closed by hand on the exchange,
charging both, and ignores a stopped robot; the compensation sweep charges an order that was
never charged and logs ``skip duplicate`` for the one whose flag was lost, repairing it.

The demo database is the configured ``database.url`` or ``--db``: a SQLite file is deleted and
recreated; a MySQL database only with ``force`` (hotgo's and the daemon's tables are dropped and
recreated). The bundled ``demo/closed_positions.jsonl`` is ``replay_records(BUNDLED_AT)``.
The cast and their trades, and every read and write of the demo database, are in
``reconcile.demo.seed``; this module tells the story and runs the cycle.
See docs/demo.md.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from daemon.config import Config
from daemon.exchanges_config import ExchangesConfig
from daemon.render import render_table
from daemon.runtime import Core, database, open_core, open_history_sync
from reconcile.charging.orders import STATUS_CLOSED, STATUS_OPEN
from reconcile.charging.outcomes import Source
from reconcile.charging.sweep import sweep as run_sweep
from reconcile.demo.seed import (
    ACCOUNTS,
    FEE,
    ROBOTS,
    TRADES,
    USERS,
    OrderRow,
    account,
    lose_flags,
    prices,
    read_state,
    recreate_schema,
    robot,
    seed,
)
from reconcile.errors import ConfigError
from reconcile.sync.record_rows import CLOSE_REASON
from reconcile.views.audit import audit as run_audit
from reconcile.views.findings import AuditReport
from reconcile.views.status import target

BUNDLED_AT = datetime(2026, 5, 17, 6, 40, tzinfo=UTC)  # "now" of demo/closed_positions.jsonl
SQLITE_HEADER = b"SQLite format 3\x00"
_STATUS_NAMES: dict[int, str] = {STATUS_OPEN: "open", STATUS_CLOSED: "closed"}

Out = Callable[[str], None]


def replay_records(now: datetime) -> list[dict[str, Any]]:
    """The exchanges' side of the story as replay records, close times relative to ``now``."""
    records: list[dict[str, Any]] = []
    for trade in TRADES:
        if trade.record_key is None:
            continue
        bot = robot(trade.robot_id)
        size, open_price, close_price = prices(trade)
        closed = now - trade.closed_ago + trade.skew
        records.append(
            {
                "platform": account(bot.account_id).platform,
                "account_id": bot.account_id,
                "symbol": bot.symbol,
                "direction": trade.direction,
                "size": str(size),
                "open_price": str(open_price),
                "close_price": str(close_price),
                "gross_pnl": str(trade.net - FEE),
                "fee": str(FEE),
                "funding": "0",
                "net_profit": str(trade.net),
                "open_time": _iso(now - trade.opened_ago),
                "close_time": _iso(closed),
                "record_key": trade.record_key,
            }
        )
    return records


def write_replay(path: Path, now: datetime) -> Path:
    lines = (json.dumps(r, separators=(",", ":")) + "\n" for r in replay_records(now))
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- the target database ------------------------------------------------------------------------


def demo_url(target: str | None, configured: str) -> str:
    """``--db``: a database URL, or a path meaning a SQLite file; default the configured URL."""
    if target is None:
        return configured
    if "://" in target:
        schemes = ("sqlite+aiosqlite://", "mysql+aiomysql://", "mariadb+aiomysql://")
        if not target.startswith((*schemes, "postgresql+asyncpg://")):
            raise ConfigError(
                "--db: use a file path, sqlite+aiosqlite://, mysql+aiomysql:// or "
                "postgresql+asyncpg://"
            )
        return target
    return f"sqlite+aiosqlite:///{Path(target).expanduser().absolute()}"


def describe(url: str) -> str:
    where = target(url)
    if where.is_sqlite:
        return f"sqlite {where.sqlite_path or ':memory:'}"
    return f"{where.backend} {where.host}:{where.port or where.default_port}/{where.database}"


def is_server(url: str) -> bool:
    """MySQL/MariaDB or PostgreSQL: a database the demo must not reset without --force."""
    return not target(url).is_sqlite


def reset_sqlite(url: str) -> None:
    """Delete the SQLite file (and its journals) the URL points at; refuse a non-SQLite file."""
    path = target(url).sqlite_path
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"--db: {path} is a folder")
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as fh:
            if fh.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise ConfigError(f"--db: {path} is not a SQLite database; refusing to delete it")
    for stale in (path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))):
        stale.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)


# -- telling it ----------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[object]], out: Out) -> None:
    """``rows[0]`` the headers; columns of numbers right-aligned (daemon.render)."""
    for line in render_table([str(h) for h in rows[0]], rows[1:]).splitlines():
        out(("  " + line).rstrip())


def print_audit(report: AuditReport, out: Out) -> None:
    for c in report.checks:
        mark = "✓" if c.ok else "✗"
        tail = "" if c.ok else f" - {c.violations} violation(s)"
        out(f"{mark} {c.name}: {c.description}{tail}")
        for example in c.examples:
            out("    " + ", ".join(f"{k}={v}" for k, v in example.items()))


def _ago(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m ago" if minutes >= 60 else f"{minutes}m ago"


def _story(ids: dict[int, int], out: Out) -> None:
    out("The story (times relative to now):")
    rows: list[list[object]] = [["", "robot", "symbol", "side", "profit", "closed", "what"]]
    for t in TRADES:
        bot = robot(t.robot_id)
        where = f"order {ids[t.order]}" if t.order is not None else "exchange only"
        closed = "open" if t.local_status == STATUS_OPEN else _ago(t.closed_ago)
        rows.append([where, bot.id, bot.symbol, t.direction, t.net, closed, t.note])
    table(rows, out)


# -- the demo -------------------------------------------------------------------------------------


async def run_demo(config: Config, url: str, out: Out) -> bool:
    """Seed a fresh demo database at ``url`` and run the cycle; True when all went well.

    The caller has made sure ``url`` may be reset (SQLite: deleted; a server: allowed).
    """
    if not is_server(url):
        reset_sqlite(url)
    now = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="toogo-demo-") as tmp:
        replay = write_replay(Path(tmp) / "closed_positions.jsonl", now)
        demo = config.model_copy(
            update={
                "database": config.database.model_copy(update={"url": url}),
                "exchanges": ExchangesConfig.model_validate({"replay": {"path": replay}}),
            }
        )
        async with database(demo) as db:
            await recreate_schema(db)
            ids = await seed(db, running_status=demo.robots.running_status, now=now)
        records = len(replay_records(now))
        out(
            f"Demo database: {describe(url)}, fresh: {len(USERS)} users, {len(ACCOUNTS)} API"
            f" accounts (plaintext keys), {len(ROBOTS)} robots, {len(ids)} local orders; the"
            f" exchanges: a replay file of {records} closed positions."
        )
        _story(ids, out)
        async with open_core(demo) as core:
            ok = await _cycle(demo, core, ids, out)
    out("")
    out("Demo complete." if ok else "Demo finished with failures (see above).")
    return ok


async def _cycle(config: Config, core: Core, ids: dict[int, int], out: Out) -> bool:
    start = (await read_state(core.db)).balances
    realtime = [ids[t.order] for t in TRADES if t.realtime and t.order is not None]
    lost = [ids[t.order] for t in TRADES if t.lost_flag and t.order is not None]
    out(f"\n== 1. The engine's realtime path charges order(s) {_nums(realtime)} at close")
    for order_id in realtime:
        await core.consumer.charge(order_id, Source.REALTIME)
    await lose_flags(core.db, lost)
    out(f"   ...and the power_consumed update of order(s) {_nums(lost)} is lost.")
    before = (await read_state(core.db)).balances
    out("\n== 2. History sync: what do the exchanges say closed?")
    async with open_history_sync(config, core) as history:
        synced = await history.run_cycle()
    out("\n== 3. Compensation sweep: charge what is still unconsumed")
    swept = await run_sweep(core.consumer, config.sweep.settings(), source=Source.SWEEP)
    after = await read_state(core.db)
    out("\n== 4. Result")
    _summary(start, before, after.balances, after.orders, set(ids.values()), out)
    out("\n== 5. Audit of the ledger invariants")
    report = await run_audit(core.db, backlog_after=timedelta(hours=1))
    print_audit(report, out)
    return synced.ok and swept.ok and report.ok


def _nums(order_ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in order_ids)


def _summary(
    start: dict[int, Decimal],
    before: dict[int, Decimal],
    after: dict[int, Decimal],
    orders: Sequence[OrderRow],
    seeded: set[int],
    out: Out,
) -> None:
    rows: list[list[object]] = [
        ["user", "power at start", "before reconcile", "after reconcile", "orders charged"]
    ]
    for user in USERS:
        charged = [o for o in orders if o.user_id == user.id and o.power_consumed == 1]
        rows.append([user.id, start[user.id], before[user.id], after[user.id], len(charged)])
    table(rows, out)
    out("")
    rows = [
        [
            "order",
            "user",
            "robot",
            "symbol",
            "side",
            "status",
            "profit",
            "power_consumed",
            "power_amount",
            "origin",
        ]
    ]
    for o in orders:
        status = _STATUS_NAMES.get(o.status, str(o.status))
        origin = "inserted by the history sync"
        if o.id in seeded:
            origin = "closed by the history sync" if o.close_reason == CLOSE_REASON else "seeded"
        rows.append(
            [
                o.id,
                o.user_id,
                o.robot_id,
                o.symbol,
                o.direction,
                status,
                o.realized_profit,
                o.power_consumed,
                o.power_amount,
                origin,
            ]
        )
    table(rows, out)
