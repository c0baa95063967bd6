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

Before each attempt the transaction awaits ``reconcile.pacing`` (log back-pressure; the database's
availability when a monitor watches it): waiting happens between transactions, never inside one.
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
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from reconcile.errors import (
    ConfigError,
    ConnectionLost,
    DatabaseTemporaryError,
    DuplicateKey,
    RowsMissing,
)
from reconcile.records import Secret
from reconcile.storage import pacing
from reconcile.storage.db_errors import map_db_errors as map_db_errors  # re-exported
from reconcile.storage.dialect import Dialect

log = structlog.get_logger("reconcile.db")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How a whole transaction is retried: bounded, exponential, jittered."""

    attempts: int = 6
    initial: float = 0.05
    maximum: float = 2.0


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

    Use as ``async with Database(settings) as db``; closing twice is safe.
    """

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.tz: tzinfo = _zone(settings.timezone)
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
        # charges a page with set-based statements (see reconcile.consumer)
        self.returning = False
        self._engine: AsyncEngine | None = None
        self._url = url
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._session_engine: AsyncEngine | None = None
        self._connect_args: dict[str, Any] = {}
        # set by a monitor (the daemon's health loop): transactions then wait out an outage
        self.availability: pacing.Availability | None = None
        # seconds an attempt may take before its connection is closed (MySQL; None: no bound)
        self.attempt_timeout: float | None = None
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
        if self.dialect.concurrent:  # a server: MySQL/MariaDB or PostgreSQL
            self._connect_args = self._server_connect_args()
            self._engine = create_async_engine(
                self._url,
                isolation_level="READ COMMITTED",
                pool_size=self.settings.pool_size,
                max_overflow=self.settings.pool_size,
                pool_pre_ping=True,
                pool_recycle=3600,
                connect_args=self._connect_args,
            )
            if self.dialect.is_postgresql:
                _timestamptz_as_local_time(self._engine, self.tz)
            self._track(self._engine)
        else:
            self._engine = create_async_engine(
                self._url, connect_args={"timeout": self.settings.lock_wait_timeout}
            )
            _serialize_sqlite_writers(self._engine)
        await self._probe()

    def _server_connect_args(self) -> dict[str, Any]:
        wait = int(self.settings.lock_wait_timeout)
        if self.is_mysql:
            init = f"SET SESSION innodb_lock_wait_timeout = {wait}"
            return {"init_command": init, "connect_timeout": 10, "charset": "utf8mb4"}
        return {
            "timeout": 10,
            "server_settings": {
                "lock_timeout": f"{wait}s",
                # naive timestamps are hotgo's local time; TIMESTAMPTZ is read and written as
                # text in this zone (see _timestamptz_as_local_time)
                "TimeZone": self.settings.timezone,
                "application_name": "toogo-reconcile",
            },
        }

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
                _close_now(driver)
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
        """The one retry policy for database work: re-run on a temporary failure (and, given
        ``retry_duplicate``, on a duplicate key), bounded by ``settings.retry``, full-jitter
        exponential back-off, each re-run logged. ``transaction`` uses it; so does the
        runbook's autocommit DDL on PostgreSQL, which runs outside a transaction."""
        policy = self.settings.retry
        retryable: tuple[type[Exception], ...] = (DatabaseTemporaryError,)
        if retry_duplicate:
            retryable += (DuplicateKey,)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if retry_duplicate and isinstance(exc, DuplicateKey):
                log.info(
                    retry_duplicate,
                    what=what,
                    attempt=state.attempt_number,
                    retry=True,
                    **log_fields,
                )
                return
            if isinstance(exc, RowsMissing):  # a user's first charge: routine, not a warning
                log.debug("db rows created", what=what, detail=str(exc), retry=True, **log_fields)
                return
            log.warning(
                "db retry",
                what=what,
                attempt=state.attempt_number,
                max_attempts=policy.attempts,
                error=type(exc).__name__ if exc else None,
                detail=str(exc) if exc else None,
                retry=True,
                **log_fields,
            )

        return AsyncRetrying(
            retry=retry_if_exception_type(retryable),
            stop=stop_after_attempt(policy.attempts),
            wait=wait_random_exponential(multiplier=policy.initial, max=policy.maximum),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def _ready(self) -> None:
        await pacing.between_transactions()
        if self.availability is not None:
            await self.availability.wait_up()

    async def _gated(
        self, fn: Callable[[AsyncConnection], Awaitable[T]], what: str, isolation: str | None
    ) -> T:
        """One attempt, after waiting for what ``pacing`` says; an attempt that met a database
        outage (the monitor confirms it) is run again once the database is back, uncounted."""
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
        with map_db_errors(what):
            if self.attempt_timeout is None or not self.dialect.concurrent:
                async with self.engine.connect() as conn:
                    if isolation is not None:
                        await conn.execution_options(isolation_level=isolation)
                    async with conn.begin():
                        return await fn(conn)
            return await self._bounded_attempt(fn, what, self.attempt_timeout, isolation)

    async def _bounded_attempt(
        self,
        fn: Callable[[AsyncConnection], Awaitable[T]],
        what: str,
        limit: float,
        isolation: str | None,
    ) -> T:
        """A server that stops answering (hung, not dead) must not hold a transaction forever:
        past ``limit`` its socket is closed, the read in flight fails as a lost connection
        (2013) and the attempt is resolved like any other lost connection."""
        conn = self.engine.connect()
        try:
            async with asyncio.timeout(limit):  # the checkout: a ping or a handshake
                await conn.start()
            driver = (await conn.get_raw_connection()).driver_connection
            cut = asyncio.get_running_loop().call_later(limit, _cut, driver, what, limit)
            self._drivers.add(driver)
            if isolation is not None:
                await conn.execution_options(isolation_level=isolation)
            try:
                async with conn.begin():
                    return await fn(conn)
            finally:
                cut.cancel()
                self._drivers.discard(driver)
        finally:
            if conn.sync_connection is not None:
                await conn.close()


def _cut(driver: Any, what: str, limit: float) -> None:
    log.warning("db transaction timed out", what=what, limit=limit, action="connection closed")
    _close_now(driver)


def _close_now(driver: Any) -> None:
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


def _settled(task: asyncio.Future[Any]) -> None:
    """Retrieve a shielded transaction's outcome when nobody awaits it any more."""
    if not task.cancelled():
        task.exception()


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"database.timezone: unknown time zone {name!r}") from exc


def _serialize_sqlite_writers(engine: AsyncEngine) -> None:
    """SQLite: take the write lock at BEGIN so read-then-write transactions cannot interleave."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
