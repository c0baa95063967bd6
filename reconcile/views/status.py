"""Read-only views of an installation, for the daemon's gauges and ``doctor``.

The daemon writes no SQL: what it shows about the database - the backlog, the cursors' lag, the
quarantine, the server's version and clock, which tables exist, the API accounts of running
robots - is read here, each view one transaction, nothing written.
See docs/audit-log.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.orders import eligible_sql
from reconcile.charging.trades import TradeJudge
from reconcile.charging.verdicts import Verdict, settled_rows
from reconcile.errors import ConfigError
from reconcile.records import ApiAccount
from reconcile.storage.contract import inspect_live
from reconcile.storage.db import Database
from reconcile.storage.schema import quarantine as quarantine_table
from reconcile.storage.schema import (
    stream_cursor,
    table_names,
    trading_api_config,
    trading_order,
    trading_robot,
)
from reconcile.storage.streams import STATUS_NORMAL, polled
from reconcile.sync import quarantine

# -- where a database URL points ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a database URL points, for messages: never the password."""

    backend: str  # "sqlite", "mysql", "mariadb", "postgresql"
    host: str | None = None
    port: int | None = None
    database: str | None = None
    username: str | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def default_port(self) -> int:
        return 5432 if self.backend == "postgresql" else 3306

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file as an absolute path; None for a memory database or a non-file URI."""
        name = self.database
        if not self.is_sqlite or not name or name == ":memory:" or name.startswith("file:"):
            return None
        return Path(name).absolute()


def target(url: str) -> Target:
    """Parse a database URL; ``ConfigError`` when it is not one."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigError("database.url is not a valid database URL") from exc
    return Target(
        backend=parsed.get_backend_name(),
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        username=parsed.username,
    )


# -- the daemon's gauges --------------------------------------------------------------------------


@dataclass(frozen=True)
class Gauges:
    backlog: int  # eligible orders not yet charged, closed within the look-back
    quarantined: int  # unresolved unusable exchange records
    #: per platform, the oldest cursor of a stream still polled (aware, UTC)
    oldest_cursor: dict[str, datetime] = field(default_factory=dict)
    #: the close time of the oldest order in the backlog (aware), None when there is none
    oldest_eligible: datetime | None = None
    #: rows held by reconcile.charging.trades (possibly a leg, awaiting the sync): not in the
    #: backlog
    held: int = 0


#: the oldest backlog rows judged per refresh (reconcile.charging.trades): a held row further back
#: still counts in the backlog until the backlog before it shrinks
HELD_SCAN = 5000


async def read_gauges(db: Database, *, lookback: timedelta, running_status: int) -> Gauges:
    """The backlog (less legs, dismissed and held rows), its oldest order, the held rows, the
    quarantine and the cursors' lag. The lag counts only
    the cursors of streams the history sync still polls (a running robot, not deleted, on an
    enabled account: the sync's own choice): a stopped robot's cursor stays where it was and
    would otherwise read as a stream falling ever further behind."""
    o, c = trading_order.c, stream_cursor.c
    since = db.to_db_time(datetime.now(UTC) - lookback)
    waiting = (*eligible_sql(db.dialect), o.close_time >= since, ~settled_rows(o.id))
    backlog_query = select(func.count()).select_from(trading_order).where(*waiting)
    # the oldest rows of the backlog, judged: the held ones are counted apart
    oldest_query = select(o.id, o.close_time).where(*waiting).order_by(o.close_time, o.id)
    judge = TradeJudge(db)
    stream_polled = polled(running_status)
    lag_query = (
        select(c.platform, func.min(c.complete_until)).where(stream_polled).group_by(c.platform)
    )

    async def read(
        conn: AsyncConnection,
    ) -> tuple[int, int, datetime | None, dict[str, datetime]]:
        backlog = int((await conn.execute(backlog_query)).scalar_one())
        rows = list(await conn.execute(oldest_query.limit(HELD_SCAN)))
        judged = await judge.judge_all(conn, [r.id for r in rows])
        held = {i for i, j in judged.items() if j.verdict is Verdict.HELD}
        oldest = next((t for i, t in rows if i not in held), None)
        if oldest is None and backlog > len(rows):  # every row scanned is held
            oldest = rows[-1].close_time
        lags = await conn.execute(lag_query)
        cursors = {p: t.replace(tzinfo=UTC) for p, t in lags if t is not None}
        return backlog - len(held), len(held), oldest and db.from_db_time(oldest), cursors

    backlog, held, oldest, cursors = await db.transaction(read, what="refresh metrics")
    quarantined = await quarantine.unresolved_count(db)
    return Gauges(
        backlog=backlog,
        quarantined=quarantined,
        oldest_cursor=cursors,
        oldest_eligible=oldest,
        held=held,
    )


# -- doctor's reads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaStatus:
    problems: tuple[str, ...]  # as LiveSchema.problems
    has_accounts: bool  # hg_trading_api_config and hg_trading_robot exist
    has_orders: bool  # hg_trading_order exists
    has_quarantine: bool  # the daemon's quarantine table exists


async def schema_status(db: Database) -> SchemaStatus:
    async def read(conn: AsyncConnection) -> SchemaStatus:
        problems = (await inspect_live(conn)).problems
        tables = await table_names(conn)
        return SchemaStatus(
            problems=problems,
            has_accounts={trading_api_config.name, trading_robot.name} <= tables,
            has_orders=trading_order.name in tables,
            has_quarantine=quarantine_table.name in tables,
        )

    return await db.transaction(read, what="check the schema")


async def server_version(db: Database) -> str:
    async def read(conn: AsyncConnection) -> str:
        if conn.dialect.name == "sqlite":
            version = (await conn.execute(text("SELECT sqlite_version()"))).scalar_one()
            return f"SQLite {version}"
        return str((await conn.execute(text("SELECT VERSION()"))).scalar_one())

    return await db.transaction(read, what="read the server version")


@dataclass(frozen=True)
class ServerClock:
    """A MySQL server's clock and zones, read in one statement."""

    now: datetime  # NOW(6): naive, in the session's time zone
    utc_now: datetime  # UTC_TIMESTAMP(6), aware
    time_zone: str  # @@session.time_zone
    system_time_zone: str  # @@system_time_zone

    @property
    def zone(self) -> str:
        """The session's zone, with the system's where it is SYSTEM."""
        return self.time_zone + (f"/{self.system_time_zone}" if self.time_zone == "SYSTEM" else "")


async def server_clock(db: Database) -> ServerClock:
    """MySQL and PostgreSQL (whose session zone is database.timezone: see reconcile.storage.db)."""
    if db.dialect.is_postgresql:
        stmt = text(
            "SELECT LOCALTIMESTAMP, NOW() AT TIME ZONE 'UTC', current_setting('TimeZone'),"
            " current_setting('log_timezone')"
        )
    else:
        stmt = text("SELECT NOW(6), UTC_TIMESTAMP(6), @@session.time_zone, @@system_time_zone")

    async def read(conn: AsyncConnection) -> Any:
        return (await conn.execute(stmt)).one()

    row = await db.transaction(read, what="read the server clock")
    return ServerClock(
        now=row[0],
        utc_now=row[1].replace(tzinfo=UTC),
        time_zone=f"{row[2]}",
        system_time_zone=f"{row[3]}",
    )


@dataclass(frozen=True)
class StoredAccount:
    """An enabled API account as stored: credentials as written (maybe ``ENC:``), not decrypted,
    and the symbols of its running robots (robot id order, each once)."""

    account: ApiAccount  # without credentials
    stored: dict[str, str]  # api_key, secret_key, passphrase ("" when empty)
    symbols: tuple[str, ...] = ()

    @property
    def has_running_robots(self) -> bool:
        return bool(self.symbols)


async def stored_accounts(db: Database, *, running_status: int) -> list[StoredAccount]:
    """Every enabled, not deleted account (id order) with its running robots' symbols."""
    a, r = trading_api_config.c, trading_robot.c
    accounts = (
        select(a.id, a.user_id, a.platform, a.base_url, a.api_key, a.secret_key, a.passphrase)
        .where(a.status == STATUS_NORMAL, a.deleted_at.is_(None))
        .order_by(a.id)
    )
    robots = (
        select(r.api_config_id, r.symbol)
        .where(r.status == running_status, r.deleted_at.is_(None))
        .order_by(r.id)
    )

    async def read(conn: AsyncConnection) -> tuple[list[Any], list[Any]]:
        return list(await conn.execute(accounts)), list(await conn.execute(robots))

    rows, running = await db.transaction(read, what="read API accounts")
    symbols: dict[int, list[str]] = {}
    for robot in running:
        mine = symbols.setdefault(robot.api_config_id, [])
        if robot.symbol not in mine:
            mine.append(robot.symbol)
    return [
        StoredAccount(
            account=ApiAccount(
                id=int(row.id),
                user_id=int(row.user_id),
                platform=str(row.platform).strip().lower(),
                base_url=(row.base_url or "").strip() or None,
            ),
            stored={
                "api_key": row.api_key or "",
                "secret_key": row.secret_key or "",
                "passphrase": row.passphrase or "",
            },
            symbols=tuple(symbols.get(row.id, ())),
        )
        for row in rows
    ]
