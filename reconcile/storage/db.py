"""The database boundary: engine lifecycle, error translation and whole-transaction retries.

Every statement the core runs goes through ``Database.transaction``: one function, one
transaction, re-run as a whole (bounded, jittered, logged) when the database says the outcome
can be resolved by trying again - deadlock, lock-wait timeout, lost connection (including during
COMMIT, whose outcome is unknown: the unique keys make re-running safe). Two more resolutions
are the caller's to ask for and run here too, in the same bounded, logged loop: rows a unit needs
that must be created first (``RowsMissing.prepare``, e.g. a wallet row), and, with
``retry_duplicate``, a unique key refusing a row that a writer which does not lock inserted
between our check and our INSERT (the next attempt finds the row). Nothing else retries a
transaction.

What the process around the core adds is handed to the constructor (the daemon wires it in
``daemon.runtime.open_core``), never set afterwards: before each attempt the transaction awaits
its ``Pause`` (log back-pressure) and, while a monitor watches it, the database's
``Availability`` (``reconcile.storage.pacing``) - waiting happens between transactions, never
inside one; and ``attempt_timeout`` bounds how long one attempt may hold its connection on a
server that stops answering. Every attempt, bounded or not, commits on one path (``_attempt``).

See docs/architecture.md (errors and retries) and docs/operations.md (the database goes away).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from tenacity import AsyncRetrying

from reconcile.errors import ConfigError, ConnectionLost, RowsMissing
from reconcile.records import Secret
from reconcile.storage.db_errors import map_db_errors as map_db_errors  # re-exported
from reconcile.storage.dialect import Dialect
from reconcile.storage.engines import (
    close_now,
    server_connect_args,
    server_engine,
    sqlite_engine,
    zone,
)
from reconcile.storage.pacing import Availability, Pause, no_pause
from reconcile.storage.retries import RetryPolicy, retrying

log = structlog.get_logger("reconcile.db")

T = TypeVar("T")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str
    password: Secret | None = None
    timezone: str = "UTC"
    lock_wait_timeout: int = 10
    pool_size: int = 10
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    drain_timeout: float = 30.0  # how long close() waits for transactions in flight

    def sqlalchemy_url(self) -> URL:
        try:
            url = make_url(self.url)
        except sa_exc.ArgumentError as exc:
            raise ConfigError("database.url is not a valid database URL") from exc
        if self.password is not None:
            url = url.set(password=self.password.get())
        return url

    def display_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return self.sqlalchemy_url().render_as_string(hide_password=True)


class Database:
    """An async engine plus what the core needs to know about the server.

    Use as ``async with Database(settings) as db``; closing twice is safe. ``pause``: awaited
    before every transaction attempt. ``availability``: the database's state as a monitor sees
    it (transactions then wait out an outage). ``attempt_timeout``: seconds one attempt may
    take on a server before its connection is closed (None: no bound).
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        pause: Pause = no_pause,
        availability: Availability | None = None,
        attempt_timeout: float | None = None,
    ) -> None:
        self.settings = settings
        self._pause = pause
        self.availability = availability
        self.attempt_timeout = attempt_timeout
        self.tz: tzinfo = zone(settings.timezone)
        url = settings.sqlalchemy_url()
        self.dialect_name = url.get_backend_name()
        try:
            self.dialect = Dialect.for_backend(self.dialect_name)
        except ValueError:
            raise ConfigError(
                f"database.url: unsupported backend {self.dialect_name!r} (use mysql+aiomysql, "
                "postgresql+asyncpg or sqlite+aiosqlite)"
            ) from None
        self.is_mysql = self.dialect.is_mysql
        self.skip_locked = False
        # INSERT ... SELECT ... RETURNING (MariaDB >= 10.5, PostgreSQL): the consumer then
        # charges a page with set-based statements (see reconcile.charging.consumer)
        self.returning = False
        self._engine: AsyncEngine | None = None
        self._url = url
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._session_engine: AsyncEngine | None = None
        self._connect_args: dict[str, Any] = {}
        self._drivers: set[Any] = set()  # driver connections of bounded attempts in flight
        self._ping_task: asyncio.Future[None] | None = None
        # every driver connection opened, to close them at once when the server hangs
        self._sockets: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Database is not open")
        return self._engine

    async def open(self) -> None:
        if self._engine is not None:
            return
        settings = self.settings
        if self.dialect.concurrent:  # a server: MySQL/MariaDB or PostgreSQL
            self._connect_args = server_connect_args(
                is_mysql=self.is_mysql,
                lock_wait_timeout=settings.lock_wait_timeout,
                timezone=settings.timezone,
            )
            self._engine = server_engine(
                self._url,
                pool_size=settings.pool_size,
                connect_args=self._connect_args,
                local_time=self.tz if self.dialect.is_postgresql else None,
            )
            self._track(self._engine)
        else:
            self._engine = sqlite_engine(self._url, lock_wait_timeout=settings.lock_wait_timeout)
        await self._probe()

    async def _probe(self) -> None:
        async def probe(conn: AsyncConnection) -> None:
            info = conn.dialect.server_version_info or ()
            if self.is_mysql:
                is_mariadb = bool(getattr(conn.dialect, "is_mariadb", False))
                self.skip_locked = tuple(info) >= ((10, 6) if is_mariadb else (8, 0, 1))
                self.returning = is_mariadb and tuple(info) >= (10, 5)
            elif self.dialect.is_postgresql:
                self.skip_locked = True  # since 9.5
                self.returning = True

        await self.transaction(probe, what="connect to the database")

    async def close(self) -> None:
        """Wait (up to ``settings.drain_timeout``) for transactions in flight, then close."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self.settings.drain_timeout)
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()
        session_engine, self._session_engine = self._session_engine, None
        if session_engine is not None:
            await session_engine.dispose()

    def _track(self, engine: AsyncEngine) -> None:
        @event.listens_for(engine.sync_engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            driver = getattr(dbapi_connection, "driver_connection", None)
            if driver is not None:
                self._sockets.add(driver)

    def abandon_in_flight(self) -> int:
        """At shutdown while the server hangs: close every connection's socket at once and
        cancel the transactions in flight, instead of waiting out ``drain_timeout`` for answers
        that will not come (and a driver's graceful close, which waits for the server too).
        Nothing commits half: the server rolls back what it never saw committed, and the
        unique keys make the next run's retry safe either way."""
        for driver in [*self._drivers, *self._sockets]:
            with contextlib.suppress(Exception):
                close_now(driver)
        for task in list(self._in_flight):
            task.cancel()
        return len(self._in_flight)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def session_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection of its own, outside the pool, for session state held a while (the
        runbook's autocommit DDL on PostgreSQL): holding a pooled one while also running
        transactions could starve the pool."""
        await self._ready()
        if self._session_engine is None:
            self._session_engine = create_async_engine(
                self._url, poolclass=NullPool, connect_args=self._connect_args
            )
            self._track(self._session_engine)
        with map_db_errors("open a session connection"):
            async with self._session_engine.connect() as conn:
                yield conn

    async def ping(self, give_up_after: float | None = None) -> None:
        """One round trip, no retries: is the database answering right now?

        Past ``give_up_after`` seconds the ping is given up at once - not cancelled and waited
        for: a driver may wait for a hung server to acknowledge a cancellation (asyncpg does).
        It stays in flight, alone: until it ends, later pings report the database down without
        adding connections stuck on the same server."""
        task = self._ping_task
        if task is None or task.done():
            task = self._ping_task = asyncio.ensure_future(self._ping_once())
            task.add_done_callback(_settled)
        done, _ = await asyncio.wait({task}, timeout=give_up_after)
        if not done:
            raise ConnectionLost(f"ping the database: no answer within {give_up_after} s")
        task.result()

    async def _ping_once(self) -> None:
        with map_db_errors("ping the database"):
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")

    def now(self) -> datetime:
        """Now, as the naive local time hotgo's DATETIME columns hold."""
        return datetime.now(self.tz).replace(tzinfo=None)

    def to_db_time(self, moment: datetime) -> datetime:
        """An aware datetime as a naive DATETIME value in the database's time zone."""
        if moment.tzinfo is None:
            raise ValueError("to_db_time needs an aware datetime")
        return moment.astimezone(self.tz).replace(tzinfo=None)

    def from_db_time(self, value: datetime) -> datetime:
        """A naive DATETIME value read from the database as an aware datetime."""
        return value.replace(tzinfo=self.tz)

    async def transaction(
        self,
        fn: Callable[[AsyncConnection], Awaitable[T]],
        *,
        what: str,
        retry_duplicate: str | None = None,
        snapshot: bool = False,
        **log_fields: Any,
    ) -> T:
        """Run ``fn`` in one transaction; re-run it whole on a temporary database failure
        (after ``RowsMissing.prepare`` when that was the failure) and, given
        ``retry_duplicate``, when a unique key refused a row - an expected race, logged at info
        level under that event name instead of as a ``db retry`` warning. ``snapshot``: a
        read-only unit whose statements must all see one moment (REPEATABLE READ on a server;
        the sessions' READ COMMITTED lets each statement see the commits made since the last)."""
        retrying = self.retrying(what, retry_duplicate=retry_duplicate, **log_fields)
        isolation = "REPEATABLE READ" if snapshot and self.dialect.concurrent else None
        async for attempt in retrying:
            with attempt:
                try:
                    return await self._gated(fn, what, isolation)
                except RowsMissing as missing:
                    await missing.prepare()  # a transaction of its own; the unit runs again
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def retrying(
        self, what: str, *, retry_duplicate: str | None = None, **log_fields: Any
    ) -> AsyncRetrying:
        """The one retry policy for database work (``reconcile.storage.retries``), bounded by
        ``settings.retry``. ``transaction`` uses it; so does the runbook's autocommit DDL on
        PostgreSQL, which runs outside a transaction."""
        return retrying(self.settings.retry, what, retry_duplicate=retry_duplicate, **log_fields)

    async def _ready(self) -> None:
        await self._pause()
        if self.availability is not None:
            await self.availability.wait_up()

    async def _gated(
        self, fn: Callable[[AsyncConnection], Awaitable[T]], what: str, isolation: str | None
    ) -> T:
        """One attempt, after the pause and the database's availability; an attempt that met
        a database outage (the monitor confirms it) is run again once it is back, uncounted."""
        while True:
            await self._ready()
            try:
                return await self._once(fn, what, isolation)
            except ConnectionLost:
                if self.availability is None or not await self.availability.outage():
                    raise

    async def _once(
        self, fn: Callable[[AsyncConnection], Awaitable[T]], what: str, isolation: str | None
    ) -> T:
        # Shielded: cancelling the caller (shutdown) lets a transaction in flight finish - commit
        # or roll back - instead of cutting it at an unknown point; close() waits for it.
        task = asyncio.ensure_future(self._attempt(fn, what, isolation))
        self._in_flight.add(task)
        task.add_done_callback(_settled)
        task.add_done_callback(self._in_flight.discard)
        return await asyncio.shield(task)

    async def _attempt(
        self, fn: Callable[[AsyncConnection], Awaitable[T]], what: str, isolation: str | None
    ) -> T:
        """Connect, BEGIN, ``fn``, COMMIT: the one path every transaction commits on. On a
        server, ``attempt_timeout`` bounds it (see ``_deadline``); without one, or on SQLite,
        it is the same path with no bound."""
        limit = self.attempt_timeout if self.dialect.concurrent else None
        with map_db_errors(what):
            conn = self.engine.connect()
            try:
                async with asyncio.timeout(limit):  # the checkout: a ping or a handshake
                    await conn.start()
                async with self._deadline(conn, what, limit):
                    if isolation is not None:
                        await conn.execution_options(isolation_level=isolation)
                    async with conn.begin():
                        return await fn(conn)
            finally:
                if conn.sync_connection is not None:
                    await conn.close()

    @contextlib.asynccontextmanager
    async def _deadline(
        self, conn: AsyncConnection, what: str, limit: float | None
    ) -> AsyncIterator[None]:
        """A server that stops answering (hung, not dead) must not hold a transaction forever:
        past ``limit`` seconds the connection's socket is closed, the read in flight fails as a
        lost connection (2013) and the attempt is resolved like any other lost connection."""
        if limit is None:
            yield
            return
        driver = (await conn.get_raw_connection()).driver_connection
        cut = asyncio.get_running_loop().call_later(limit, _cut, driver, what, limit)
        self._drivers.add(driver)
        try:
            yield
        finally:
            cut.cancel()
            self._drivers.discard(driver)


def _cut(driver: Any, what: str, limit: float) -> None:
    log.warning("db transaction timed out", what=what, limit=limit, action="connection closed")
    close_now(driver)


def _settled(task: asyncio.Future[Any]) -> None:
    """Retrieve a shielded transaction's outcome when nobody awaits it any more."""
    if not task.cancelled():
        task.exception()
