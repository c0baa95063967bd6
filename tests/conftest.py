"""Shared fixtures: a uniquely named database per test on the real MariaDB or PostgreSQL; SQLite.

Which servers, and the schema each database gets, come from kits/databases.py: hotgo's tables
from upstream's own DDL on both servers (kits/upstream.py). Without a server its tests are skipped -
unless TOOGO_REQUIRE_MYSQL=1 / TOOGO_REQUIRE_POSTGRES=1 (CI), which makes it a failure.

``server_db`` / ``server_url`` run a test on each server (the exactly-once, crash, concurrency
and migration tests); ``any_db`` on each server and on SQLite.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pymysql
import pytest
import structlog

from kits.databases import (
    MYSQL_BASE,
    PG_BASE,
    REQUIRE_MYSQL,
    REQUIRE_POSTGRES,
    SERVERS,
    mysql_admin,
    open_database,
    pg_admin,
)
from reconcile.storage.db import Database

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
    required = [
        env
        for env, names in REQUIREMENTS.items()
        if os.environ.get(env) == "1" and names.search(reason)
    ]
    if required:
        report.outcome = "failed"
        report.longrepr = f"skipped although {', '.join(required)}=1: {reason}"


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
