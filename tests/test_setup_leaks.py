"""A set-up that skips or fails leaks nothing; under TOOGO_REQUIRE_* a missing thing fails.

A fixture that opened a connection and then skipped (the DDL missing, a server gone) used to leave
the connection to the garbage collector; its ResourceWarning then surfaced as an error in some
later, unrelated test (filterwarnings = error). Here:

- whole test modules run in a child pytest with both servers unreachable and no TOOGO_REQUIRE_*:
  they pass or skip, and the child prints no ResourceWarning, not even at exit;
- a database whose schema creation fails after the connection was opened (a view stands where
  upstream's hg_toogo_power_consume belongs) keeps no connection on the server afterwards;
- tests/conftest.py turns a skip whose reason names MariaDB, PostgreSQL, systemd or promtool into
  a failure when the matching TOOGO_REQUIRE_* is 1, as CI sets them.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from kits.databases import mysql_admin, open_database, pg_admin, pg_dsn
from reconcile.errors import DatabaseError

ROOT = Path(__file__).resolve().parents[1]
#: modules whose fixtures open MariaDB, PostgreSQL and SQLite databases, legacy ones included
MODULES = ("tests/test_consumer.py", "tests/test_migration.py", "tests/test_postgresql.py")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(600)
def test_modules_whose_servers_are_unreachable_skip_without_resource_warnings() -> None:
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOGO_REQUIRE_")}
    env["TOOGO_TEST_MYSQL"] = f"mysql+aiomysql://root@127.0.0.1:{port}"
    env["TOOGO_TEST_POSTGRES"] = f"postgresql+asyncpg://postgres@127.0.0.1:{port}"
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "always::ResourceWarning",
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
            *MODULES,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "ResourceWarning" not in out and "unclosed" not in out, out[-6000:]
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|skipped|failed|error)", out))
    assert counts.get("skipped", 0) > 50 and counts.get("passed", 0) > 0, out[-2000:]
    assert "MariaDB not reachable" in out and "PostgreSQL not reachable" in out


async def connections_to(server: str, database: str) -> int:
    if server == "mysql":
        admin = mysql_admin()
        try:
            with admin.cursor() as cur:
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s", (database,)
                )
                row = cur.fetchone()
                return int(row[0]) if row else 0
        finally:
            admin.close()
    import asyncpg

    conn = await asyncpg.connect(pg_dsn())
    try:
        count = await conn.fetchval(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1", database
        )
        return int(count)
    finally:
        await conn.close()


def plant_view(server: str, url: str) -> None:
    """A view where hg_toogo_power_consume belongs: creating the schema fails on it."""
    name = make_url(url).database
    statement = "CREATE VIEW hg_toogo_power_consume AS SELECT 1 AS id"
    if server == "mysql":
        admin = mysql_admin()
        try:
            with admin.cursor() as cur:
                cur.execute(f"USE `{name}`")
                cur.execute(statement)
        finally:
            admin.close()
    else:
        pg_admin(statement, dsn=pg_dsn(str(name)))


async def test_a_failing_schema_set_up_leaves_no_connection_open(server_url: str) -> None:
    server = "mysql" if server_url.startswith("mysql") else "postgresql"
    plant_view(server, server_url)
    database = str(make_url(server_url).database)
    with pytest.raises(DatabaseError, match="hg_toogo_power_consume"):
        await open_database(server_url)
    assert await connections_to(server, database) == 0


SKIPS = """
import pytest

def test_server():
    pytest.skip("MariaDB not reachable: refused")

def test_other():
    pytest.skip("not on this platform")

@pytest.mark.skipif(True, reason="promtool not installed")
def test_tool():
    pass
"""


@pytest.mark.parametrize("required", [False, True])
def test_a_required_resource_that_is_missing_fails_instead_of_skipping(
    tmp_path: Path, required: bool
) -> None:
    (tmp_path / "test_skips.py").write_text(SKIPS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOGO_REQUIRE_")}
    env["PYTHONPATH"] = str(ROOT)
    if required:
        env |= {"TOOGO_REQUIRE_MYSQL": "1", "TOOGO_REQUIRE_PROMETHEUS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "-c",
            os.devnull,
            "--rootdir",
            str(tmp_path),
            "-q",
            "-rA",
            "test_skips.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    if not required:
        assert proc.returncode == 0 and "3 skipped" in out, out
        return
    assert proc.returncode == 1, out
    assert "1 failed, 1 skipped, 1 error" in out, out
    assert "FAILED test_skips.py::test_server" in out and "ERROR test_skips.py::test_tool" in out
    assert "skipped although TOOGO_REQUIRE_MYSQL=1: MariaDB not reachable" in out, out
    assert "skipped although TOOGO_REQUIRE_PROMETHEUS=1: promtool not installed" in out, out
