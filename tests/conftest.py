"""Shared fixtures: a uniquely named database per test on the real MariaDB or PostgreSQL; SQLite.

On both servers, hotgo's tables come from upstream's own DDL (tests/upstream.py). MariaDB is the
shared server on 127.0.0.1:3306 (user root, empty password) unless
TOOGO_TEST_MYSQL (a mysql+aiomysql:// URL without database) says otherwise; PostgreSQL the one on
127.0.0.1:5432 (trust auth, user postgres) unless TOOGO_TEST_POSTGRES says otherwise. Without a
server its tests are skipped - unless TOOGO_REQUIRE_MYSQL=1 / TOOGO_REQUIRE_POSTGRES=1 (CI), which
makes it a failure.

``server_db`` / ``server_url`` run a test on each server (the exactly-once, crash, concurrency
and migration tests); ``any_db`` on each server and on SQLite.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pymysql
import pytest
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.storage.db import Database, DatabaseSettings, RetryPolicy
from reconcile.storage.schema import create_hotgo_schema, create_own_schema
from tests.upstream import create_upstream_pg_schema, create_upstream_schema

MYSQL_BASE = os.environ.get("TOOGO_TEST_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")
REQUIRE_MYSQL = os.environ.get("TOOGO_REQUIRE_MYSQL") == "1"
PG_BASE = os.environ.get("TOOGO_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432")
REQUIRE_POSTGRES = os.environ.get("TOOGO_REQUIRE_POSTGRES") == "1"
SERVERS = ("mysql", "postgresql")

#: TOOGO_REQUIRE_*=1 (CI) -> what the reason of a skip names when that requirement is missing
REQUIREMENTS = {
    "TOOGO_REQUIRE_MYSQL": re.compile(r"mariadb|mysql", re.IGNORECASE),
    "TOOGO_REQUIRE_POSTGRES": re.compile(r"postgres|initdb", re.IGNORECASE),
    "TOOGO_REQUIRE_SYSTEMD": re.compile(r"systemd", re.IGNORECASE),
    "TOOGO_REQUIRE_PROMETHEUS": re.compile(r"prometheus|promtool", re.IGNORECASE),
    "TOOGO_REQUIRE_PROXIES": re.compile(r"microsocks|tinyproxy", re.IGNORECASE),
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under TOOGO_REQUIRE_X=1 a skip whose reason names X is a failure, wherever it was raised:
    CI must not pass because a server or a tool went missing."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.skipped or call.excinfo is None or hasattr(report, "wasxfail"):
        return
    reason = str(call.excinfo.value)
    required = [env for env, names in REQUIREMENTS.items()
                if os.environ.get(env) == "1" and names.search(reason)]  # fmt: skip
    if required:
        report.outcome = "failed"
        report.longrepr = f"skipped although {', '.join(required)}=1: {reason}"


FAST_RETRY = RetryPolicy(attempts=8, initial=0.01, maximum=0.2)


def mysql_server() -> tuple[str, int, str]:
    from sqlalchemy.engine import make_url

    url = make_url(MYSQL_BASE)
    return url.host or "127.0.0.1", url.port or 3306, url.username or "root"


def mysql_admin() -> pymysql.connections.Connection:
    host, port, user = mysql_server()
    return pymysql.connect(host=host, port=port, user=user, password="", autocommit=True)


@pytest.fixture(scope="session")
def mysql_available() -> bool:
    try:
        mysql_admin().close()
    except pymysql.err.OperationalError as exc:
        if REQUIRE_MYSQL:
            pytest.fail(f"MariaDB is required (TOOGO_REQUIRE_MYSQL=1) but not reachable: {exc}")
        pytest.skip(f"MariaDB not reachable: {exc}")
    return True


@pytest.fixture
def mysql_url(mysql_available: bool) -> Iterator[str]:
    """A fresh, uniquely named, empty database; dropped afterwards."""
    name = f"trc_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = mysql_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        try:
            yield f"{MYSQL_BASE}/{name}"
        finally:
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        admin.close()


def pg_dsn(database: str = "postgres") -> str:
    """``PG_BASE`` as a plain libpq DSN (for asyncpg itself, psql and pg_dump)."""
    from sqlalchemy.engine import make_url

    url = make_url(PG_BASE)
    user = url.username or "postgres"
    return f"postgresql://{user}@{url.host or '127.0.0.1'}:{url.port or 5432}/{database}"


def pg_admin(*statements: str, dsn: str | None = None, timeout: float = 5) -> None:
    """Run statements on a PostgreSQL server's maintenance database (default: the shared
    server's), from sync code (in a thread of its own: a fixture may be set up while an event
    loop runs)."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn or pg_dsn(), timeout=timeout)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture(scope="session")
def pg_available() -> bool:
    try:
        pg_admin("SELECT 1")
    except (OSError, asyncpg.PostgresError) as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required (TOOGO_REQUIRE_POSTGRES=1), not reachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    return True


@pytest.fixture
def pg_url(pg_available: bool) -> Iterator[str]:
    """A fresh, uniquely named, empty PostgreSQL database; dropped afterwards."""
    name = f"trc_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_BASE}/{name}"
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> str:
    """A fresh database on MariaDB, then on PostgreSQL: the same test on both servers."""
    return str(request.getfixturevalue("mysql_url" if request.param == "mysql" else "pg_url"))


@pytest.fixture
async def server_db(server_url: str) -> AsyncIterator[Database]:
    db = await open_database(server_url)
    yield db
    await db.close()


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/toogo.db"


async def open_database(url: str, *, unique_key: bool = True, **kw: object) -> Database:
    settings = DatabaseSettings(url=url, retry=FAST_RETRY, **kw)  # type: ignore[arg-type]
    db = Database(settings)
    await db.open()

    async def create(conn: AsyncConnection) -> None:
        if db.is_mysql:  # upstream's own DDL: the schema a real install has
            await create_upstream_schema(conn, with_unique_key=unique_key)
        elif db.dialect.is_postgresql:
            await create_upstream_pg_schema(conn, with_unique_key=unique_key)
        else:  # the embedded default's own definitions
            await create_hotgo_schema(conn, with_unique_key=unique_key)
            await create_own_schema(conn)

    try:
        await db.transaction(create, what="create test schema")
    except BaseException:  # a set-up that fails or skips leaves no connection behind
        await db.close()
        raise
    return db


@pytest.fixture
async def mysql_db(mysql_url: str) -> AsyncIterator[Database]:
    db = await open_database(mysql_url)
    yield db
    await db.close()


@pytest.fixture(params=[*SERVERS, "sqlite"])
async def any_db(request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    """The same test on MariaDB, PostgreSQL and on the embedded SQLite default."""
    fixture = {"mysql": "mysql_url", "postgresql": "pg_url", "sqlite": "sqlite_url"}
    url = request.getfixturevalue(fixture[request.param])
    db = await open_database(url)
    yield db
    await db.close()


@pytest.fixture
def logs() -> Iterator[list[dict[str, object]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured
