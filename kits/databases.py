"""The database servers the tests and benchmarks share, and a database with the schema a real
install has.

MariaDB is the shared server on 127.0.0.1:3306 (user root, empty password) unless
TOOGO_TEST_MYSQL (a mysql+aiomysql:// URL without database) says otherwise; PostgreSQL the one on
127.0.0.1:5432 (trust auth, user postgres) unless TOOGO_TEST_POSTGRES says otherwise.
TOOGO_REQUIRE_MYSQL=1 / TOOGO_REQUIRE_POSTGRES=1 (CI) turn a missing server into a failure.
``open_database`` creates hotgo's tables from upstream's own DDL on both servers
(``kits.upstream``), from the project's own definitions on SQLite. The fixtures built on these
are in tests/conftest.py; how the tests run: docs/development.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os

import asyncpg
import pymysql
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.upstream import create_upstream_pg_schema, create_upstream_schema
from reconcile.storage.db import Database, DatabaseSettings
from reconcile.storage.retries import RetryPolicy
from reconcile.storage.schema import create_hotgo_schema, create_own_schema

MYSQL_BASE = os.environ.get("TOOGO_TEST_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")
REQUIRE_MYSQL = os.environ.get("TOOGO_REQUIRE_MYSQL") == "1"
PG_BASE = os.environ.get("TOOGO_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432")
REQUIRE_POSTGRES = os.environ.get("TOOGO_REQUIRE_POSTGRES") == "1"
SERVERS = ("mysql", "postgresql")

FAST_RETRY = RetryPolicy(attempts=8, initial=0.01, maximum=0.2)


def mysql_server() -> tuple[str, int, str]:
    from sqlalchemy.engine import make_url

    url = make_url(MYSQL_BASE)
    return url.host or "127.0.0.1", url.port or 3306, url.username or "root"


def mysql_admin() -> pymysql.connections.Connection:
    host, port, user = mysql_server()
    return pymysql.connect(host=host, port=port, user=user, password="", autocommit=True)


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
