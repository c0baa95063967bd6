"""Shared fixtures: a uniquely named database on the real MariaDB per test, and SQLite.

On MariaDB, hotgo's tables come from upstream's own DDL (tests/upstream.py). MariaDB is the
shared server on 127.0.0.1:3306 (user root, empty password) unless
TOOGO_TEST_MYSQL (a mysql+aiomysql:// URL without database) says otherwise. Without a server the
MySQL tests are skipped - unless TOOGO_REQUIRE_MYSQL=1 (CI), which makes it a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pymysql
import pytest
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.db import Database, DatabaseSettings, RetryPolicy
from reconcile.schema import create_hotgo_schema, create_own_schema
from tests.upstream import create_upstream_schema

MYSQL_BASE = os.environ.get("TOOGO_TEST_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")
REQUIRE_MYSQL = os.environ.get("TOOGO_REQUIRE_MYSQL") == "1"
FAST_RETRY = RetryPolicy(attempts=8, initial=0.01, maximum=0.2)


def _server() -> tuple[str, int, str]:
    from sqlalchemy.engine import make_url

    url = make_url(MYSQL_BASE)
    return url.host or "127.0.0.1", url.port or 3306, url.username or "root"


def mysql_admin() -> pymysql.connections.Connection:
    host, port, user = _server()
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
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield f"{MYSQL_BASE}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


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
        else:  # the embedded default's own definitions
            await create_hotgo_schema(conn, with_unique_key=unique_key)
            await create_own_schema(conn)

    await db.transaction(create, what="create test schema")
    return db


@pytest.fixture
async def mysql_db(mysql_url: str) -> AsyncIterator[Database]:
    db = await open_database(mysql_url)
    yield db
    await db.close()


@pytest.fixture(params=["mysql", "sqlite"])
async def any_db(request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    """The same test on MariaDB and on the embedded SQLite default."""
    if request.param == "mysql":
        url = request.getfixturevalue("mysql_url")
    else:
        url = request.getfixturevalue("sqlite_url")
    db = await open_database(url)
    yield db
    await db.close()


@pytest.fixture
def logs() -> Iterator[list[dict[str, object]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured
