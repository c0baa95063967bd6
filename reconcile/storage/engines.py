"""How each backend's engine is made, and what every connection it opens is set up with.

A server (MySQL/MariaDB, PostgreSQL): READ COMMITTED, a pool of ``database.pool_size`` (as much
again in overflow), the lock-wait bound ``database.lock_wait_timeout`` on every session, and on
PostgreSQL TIMESTAMPTZ read and written as naive local times in ``database.timezone`` - the one
notion of time hotgo's DATETIME columns have on MySQL. SQLite: the write lock taken at BEGIN, so
read-then-write transactions cannot interleave. ``reconcile.storage.db.Database`` opens them.

See docs/configuration.md.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from reconcile.errors import ConfigError


def server_connect_args(*, is_mysql: bool, lock_wait_timeout: int, timezone: str) -> dict[str, Any]:
    """What each connection of a server's engine is opened with."""
    wait = int(lock_wait_timeout)
    if is_mysql:
        init = f"SET SESSION innodb_lock_wait_timeout = {wait}"
        return {"init_command": init, "connect_timeout": 10, "charset": "utf8mb4"}
    return {
        "timeout": 10,
        "server_settings": {
            "lock_timeout": f"{wait}s",
            # naive timestamps are hotgo's local time; TIMESTAMPTZ is read and written as
            # text in this zone (see _timestamptz_as_local_time)
            "TimeZone": timezone,
            "application_name": "toogo-reconcile",
        },
    }


def server_engine(
    url: URL,
    *,
    pool_size: int,
    connect_args: dict[str, Any],
    local_time: tzinfo | None = None,
) -> AsyncEngine:
    """A MySQL/MariaDB or PostgreSQL engine; ``local_time`` (PostgreSQL): the zone TIMESTAMPTZ
    values cross in."""
    engine = create_async_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=3600,
        connect_args=connect_args,
    )
    if local_time is not None:
        _timestamptz_as_local_time(engine, local_time)
    return engine


def sqlite_engine(url: URL, *, lock_wait_timeout: int) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": lock_wait_timeout})
    _serialize_sqlite_writers(engine)
    return engine


def zone(name: str) -> tzinfo:
    """``database.timezone`` as a time zone."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"database.timezone: unknown time zone {name!r}") from exc


def close_now(driver: Any) -> None:
    """Close a driver connection's socket at once (asyncpg: ``terminate``; its ``close`` is a
    coroutine that waits for the server)."""
    terminate = getattr(driver, "terminate", None)
    (terminate or driver.close)()


def _timestamptz_as_local_time(engine: AsyncEngine, tz: tzinfo) -> None:
    """PostgreSQL: TIMESTAMPTZ values cross as naive local times in ``database.timezone``, like
    MySQL's DATETIME, so the core has one notion of time. asyncpg would take a naive value as
    UTC; as text, the server reads it in the session's TimeZone (set to the same zone)."""

    def encode(value: datetime) -> str:
        return value.isoformat(sep=" ")

    def decode(value: str) -> datetime:
        return datetime.fromisoformat(value).astimezone(tz).replace(tzinfo=None)

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.run_async(
            lambda conn: conn.set_type_codec(
                "timestamptz", encoder=encode, decoder=decode, schema="pg_catalog", format="text"
            )
        )


def _serialize_sqlite_writers(engine: AsyncEngine) -> None:
    """SQLite: take the write lock at BEGIN so read-then-write transactions cannot interleave."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
