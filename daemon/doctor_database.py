"""``doctor``'s checks of the database: reachable (never showing a password), its schema, the
user's privileges, the time zone (``database.timezone`` against the server's clock), the
quarantine and the own tables' sizes. Nothing is written: a SQLite file that does not exist yet
is not created, and the connection makes one attempt (no retries). See docs/operations.md
("Checking an installation").
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from daemon.config import Config
from daemon.doctor_report import Mark, Report
from reconcile.errors import ReconcileError
from reconcile.storage import grants, retention
from reconcile.storage.contract import future_order_times
from reconcile.storage.db import Database
from reconcile.storage.retries import RetryPolicy
from reconcile.sync import quarantine
from reconcile.views.status import SchemaStatus, schema_status, server_clock, server_version, target

#: the most the database's clock (read in database.timezone) may differ from ours
MAX_CLOCK_OFFSET = timedelta(seconds=5)


@asynccontextmanager
async def connect(report: Report, config: Config) -> AsyncIterator[Database | None]:
    """The database, with its line; None (and the lines of what cannot be checked) when there
    is none to check: unreachable, or an embedded SQLite file not created yet."""
    settings = dataclasses.replace(config.database_settings(), retry=RetryPolicy(attempts=1))
    url = target(settings.url)
    if url.is_sqlite:
        where = url.sqlite_path
        if where is not None and not where.exists():
            _fresh_sqlite(report, config, where)
            yield None
            return
        name = f"sqlite {where if where is not None else ':memory:'}"
    else:
        name = (
            f"{url.backend} {url.host or 'localhost'}:{url.port or 3306}"
            f"/{url.database or ''} as {url.username or '(no user)'}"
        )
    db = Database(settings)
    try:
        await db.open()
        version = await server_version(db)
    except ReconcileError as exc:
        await db.close()
        report.emit(Mark.FAIL, "database", f"{name}: cannot connect: {exc}")
        for check in ("schema", "time zone", "credentials"):
            report.emit(Mark.SKIP, check, "not checked: the database is unreachable")
        yield None
        return
    try:
        report.emit(Mark.OK, "database", f"{name}: connected ({version})")
        yield db
    finally:
        await db.close()


def _fresh_sqlite(report: Report, config: Config, path: Path) -> None:
    directory = path.parent
    if directory.is_dir() and os.access(directory, os.W_OK | os.X_OK):
        report.emit(
            Mark.OK,
            "database",
            f"sqlite {path}: does not exist yet; created with its schema on first use",
        )
        report.emit(Mark.SKIP, "schema", "embedded SQLite: created on first use")
    else:
        report.emit(Mark.FAIL, "database", f"sqlite {path}: {directory} is not a writable folder")
        report.emit(Mark.SKIP, "schema", "not checked: no database")
    zone_only(report, config, "embedded SQLite, no server clock")
    report.emit(Mark.SKIP, "credentials", "no database yet, so no API accounts")


async def schema(report: Report, db: Database) -> SchemaStatus:
    """The schema line; which tables exist."""
    status = await schema_status(db)
    problems = status.problems
    if not problems:
        report.emit(
            Mark.OK,
            "schema",
            "ready: every column the daemon uses, uk_user_order, sweep index, own tables",
        )
    elif not db.dialect.concurrent:
        report.emit(Mark.OK, "schema", "embedded SQLite: the missing parts are created on use")
    else:
        report.emit(Mark.FAIL, "schema", "; ".join(problems))
    return status


async def privileges(report: Report, db: Database) -> None:
    """The user's grants against the roles of ``reconcile.storage.grants``."""
    found = await grants.privileges(db)
    if found is None:
        return  # the embedded SQLite has no users
    pg = db.dialect.is_postgresql
    v = grants.judge(found, grants.database_name(db), postgresql=pg)
    if v.missing:
        report.emit(Mark.FAIL, "privileges", f"{found.user} lacks {', '.join(v.missing)}")
    if v.superuser:
        report.emit(
            Mark.WARN, "privileges", "runs as a superuser: more than the runtime role needs"
        )
    elif v.role == "migration":
        report.emit(
            Mark.OK,
            "privileges",
            f"{found.user} matches the migration role (the "
            "runbook's); the daemon needs only `toogo-reconcile grants --role runtime`",
        )
    elif v.excess:
        report.emit(
            Mark.WARN,
            "privileges",
            f"{found.user} has more than the runtime role needs: {', '.join(v.excess)}",
        )
    elif v.role == "runtime":
        report.emit(Mark.OK, "privileges", f"{found.user}: exactly the runtime role")


async def quarantined(report: Report, db: Database, tables: SchemaStatus) -> None:
    if not tables.has_quarantine:
        return  # before `migrate up`: the schema line says so
    waiting = await quarantine.unresolved_count(db)
    if waiting:
        report.emit(
            Mark.WARN,
            "quarantine",
            f"{waiting} unusable exchange record(s) wait: `toogo-reconcile exchange "
            "quarantine` lists them, `--retry` re-processes them",
        )
    else:
        report.emit(Mark.OK, "quarantine", "no unusable exchange record waits")


async def table_sizes(report: Report, db: Database, tables: SchemaStatus) -> None:
    if not tables.has_quarantine:
        return  # the own tables do not exist yet (the schema line says so)
    sizes = retention.describe(await retention.table_sizes(db))
    report.emit(Mark.OK, "table sizes", f"own tables, rows (oldest): {sizes}")


# -- time ----------------------------------------------------------------------------------------


def zone_only(report: Report, config: Config, why: str) -> None:
    zone = config.database.timezone
    report.emit(Mark.OK, "time zone", f"database.timezone {zone} ({why})")


async def time_zone(report: Report, config: Config, db: Database, tables: SchemaStatus) -> None:
    zone = config.database.timezone
    if not db.dialect.concurrent:
        zone_only(report, config, "embedded SQLite, no server clock")
        return
    wrong = await future_order_times(db) if tables.has_orders else None
    if wrong is not None:
        report.emit(Mark.FAIL, "time zone", wrong)
        return
    before = time.time()
    server = await server_clock(db)
    ours = datetime.fromtimestamp((before + time.time()) / 2, UTC)
    server_now = db.from_db_time(server.now)  # NOW() read the way the daemon reads DATETIMEs
    clock = server.utc_now - ours  # UTC_TIMESTAMP(): clock skew alone
    offset = server_now - ours
    server_zone = server.zone
    if abs(offset) <= MAX_CLOCK_OFFSET:
        report.emit(
            Mark.OK,
            "time zone",
            f"database.timezone {zone}; server NOW() read in it is {_seconds(offset)} "
            f"from this host's clock (server time_zone {server_zone})",
        )
    elif abs(clock) <= MAX_CLOCK_OFFSET:
        report.emit(
            Mark.FAIL,
            "time zone",
            f"server NOW() read in database.timezone {zone} is {_seconds(offset)} from this "
            f"host's clock, though the clocks agree ({_seconds(clock)}): the server's "
            f"time_zone is {server_zone} - set database.timezone to the zone hotgo writes in",
        )
    else:
        report.emit(
            Mark.FAIL,
            "time zone",
            f"the database server's clock is {_seconds(clock)} from this host's "
            f"(NOW() read in {zone}: {_seconds(offset)}) - check NTP on both",
        )


def _seconds(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if abs(seconds) < 120:
        return f"{round(seconds, 1) or 0.0:+.1f}s"  # never "-0.0s"
    sign = "+" if seconds >= 0 else "-"
    minutes = round(abs(seconds) / 60)
    return f"{sign}{minutes // 60}h{minutes % 60:02d}m"
