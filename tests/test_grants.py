"""The two database roles on real servers: a user created from `grants`'s printed runtime
statements runs the daemon's cycle; `migrate up` refuses it and writes nothing; doctor tells
exactly the runtime role from one grant too few or too many."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.databases import mysql_admin, pg_admin, pg_dsn
from kits.seed import insert_order, set_wallet
from reconcile.storage import grants
from reconcile.storage.db import Database
from reconcile.storage.schema import trading_order
from tests.history_kit import add_account, add_robot, position, write_replay
from tests.procs import run_cli, write_config

MakeUser = Callable[[list[str]], Awaitable[Path]]
PASSWORD = "runtime-pw-" + uuid.uuid4().hex[:8]


def _statements(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if line and not line.startswith("--")]


async def printed_grants(cfg: Path, user: str, *extra: str) -> list[str]:
    code, out, err = await run_cli(cfg, "grants", "--user", user, *extra)
    assert code == 0, err
    return _statements(out)


@pytest.fixture
async def make_user(server_db: Database, server_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    """Create restricted users from GRANT statements; each one's config; all dropped after."""
    made: list[str] = []
    url = make_url(server_url)
    pg = server_db.dialect.is_postgresql
    replay = write_replay(tmp_path / "replay.jsonl", [])

    async def make(statements: list[str]) -> Path:
        user = f"trc_u_{uuid.uuid4().hex[:10]}"
        made.append(user)
        stmts = [s.replace("{user}", user) for s in statements]
        if pg:
            pg_admin(f"CREATE ROLE {user} LOGIN PASSWORD '{PASSWORD}'")
            pg_admin(*stmts, dsn=pg_dsn(url.database or ""))
        else:
            admin = mysql_admin()
            try:
                with admin.cursor() as cur:
                    cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'")
                    for s in stmts:
                        cur.execute(s)
            finally:
                admin.close()
        as_user = url.set(username=user, password=None).render_as_string(hide_password=False)
        return write_config(
            tmp_path / f"{user}.yaml",
            as_user,
            exchanges={"replay": {"path": str(replay)}},
            power={"consume_rate": "0.10", "min_consume": "0.01"},
        )

    yield make
    for user in made:
        if pg:
            pg_admin(f"DROP OWNED BY {user}", dsn=pg_dsn(url.database or ""))
            pg_admin(f"DROP ROLE IF EXISTS {user}")
        else:
            admin = mysql_admin()
            try:
                with admin.cursor() as cur:
                    cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            finally:
                admin.close()


async def schema_snapshot(db: Database) -> dict[str, Any]:
    def read(sync_conn: Any) -> dict[str, Any]:
        insp = inspect(sync_conn)
        return {
            t: (
                sorted(c["name"] for c in insp.get_columns(t)),
                sorted(str(ix["name"]) for ix in insp.get_indexes(t)),
            )
            for t in sorted(insp.get_table_names())
        }

    async def run(conn: AsyncConnection) -> dict[str, Any]:
        return dict(await conn.run_sync(read))

    return await db.transaction(run, what="schema snapshot")


def env() -> dict[str, str]:
    return {"TOOGO_DATABASE_PASSWORD": PASSWORD}


async def test_the_runtime_role_runs_the_cycle_and_migrate_refuses(
    server_db: Database, server_url: str, make_user: MakeUser, tmp_path: Path
) -> None:
    root_cfg = write_config(tmp_path / "root.yaml", server_url)
    statements = await printed_grants(root_cfg, "{user}")
    joined = "\n".join(statements).upper()
    # DELETE only where the retention prunes: the daemon's own tables, never hotgo's
    deleting = [s for s in statements if "DELETE" in s.upper()]
    assert deleting and all("toogo_reconcile_" in s and "hg_" not in s for s in deleting)
    for ddl in ("CREATE", "DROP", "ALTER", "INDEX", " ALL "):
        assert ddl not in joined.replace("CREATE ROLE", ""), ddl
    # the cycle's data: a backlog order, one for `consume`, a close the sync brings in
    await set_wallet(server_db, 1, Decimal("100"))
    await set_wallet(server_db, 7, Decimal("100"))
    backlog = await insert_order(server_db, user_id=1, realized_profit=Decimal("5"))
    realtime = await insert_order(server_db, user_id=1, realized_profit=Decimal("3"))
    await add_account(server_db, 10, 7)
    await add_robot(server_db, 100, 7, 10)
    cfg = await make_user(statements)
    closed = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    write_replay(tmp_path / "replay.jsonl", [position(10, "k-1", closed=closed)])

    code, out, err = await run_cli(cfg, "consume", "--order-id", str(realtime), **env())
    assert code == 0, err + out
    for args in (["run", "--once"], ["sweep"], ["report"], ["audit"]):
        code, out, err = await run_cli(cfg, *args, **env())
        assert code == 0, f"{args}: {err}{out}"

    async def flags(conn: AsyncConnection) -> dict[int, int]:
        o = trading_order.c
        return {int(r[0]): int(r[1]) for r in await conn.execute(select(o.id, o.power_consumed))}

    charged = await server_db.transaction(flags, what="read flags")
    assert charged[backlog] == charged[realtime] == 1
    assert len(charged) == 3, "the sync inserted the exchange's close"

    code, out, err = await run_cli(cfg, "doctor", **env())
    assert "✓ privileges" in out, out + err
    assert "✗ privileges" not in out and "! privileges" not in out

    before = await schema_snapshot(server_db)
    for args in (["migrate", "up", "--yes"], ["migrate", "up"]):
        code, out, err = await run_cli(cfg, *args, **env())
        assert code == 1, err + out
        assert "migrate up needs the migration role" in err and "CREATE" in err, err
        assert "grants --role migration" in err and PASSWORD not in err + out
    assert await schema_snapshot(server_db) == before


async def test_doctor_names_a_grant_too_few_and_one_too_many(
    server_db: Database, server_url: str, make_user: MakeUser, tmp_path: Path
) -> None:
    root_cfg = write_config(tmp_path / "root.yaml", server_url)
    statements = await printed_grants(root_cfg, "{user}")
    log_grant = next(s for s in statements if "hg_toogo_wallet_log" in s)
    fewer = [
        log_grant.replace("SELECT, INSERT", "SELECT") if s == log_grant else s for s in statements
    ]
    cfg = await make_user(fewer)
    code, out, err = await run_cli(cfg, "doctor", **env())
    assert code == 1, out + err
    [line] = [x for x in out.splitlines() if "privileges" in x]
    assert line.startswith("✗ privileges") and "INSERT on hg_toogo_wallet_log" in line, line

    pg = server_db.dialect.is_postgresql
    wallet_delete = (
        "GRANT DELETE ON TABLE hg_toogo_wallet TO {user}"
        if pg
        else f"GRANT DELETE ON `{make_url(server_url).database}`.`hg_toogo_wallet` "
        "TO '{user}'@'%'"
    )
    cfg = await make_user([*statements, wallet_delete])
    code, out, err = await run_cli(cfg, "doctor", **env())
    [line] = [x for x in out.splitlines() if "privileges" in x]
    assert line.startswith("! privileges") and "DELETE on hg_toogo_wallet" in line, line
    assert "hg_toogo_wallet_log" not in line


async def test_root_is_a_superuser_and_the_migration_role_is_recognised(
    server_db: Database, server_url: str, tmp_path: Path
) -> None:
    root_cfg = write_config(tmp_path / "root.yaml", server_url)
    _, out, _ = await run_cli(root_cfg, "doctor")
    [line] = [x for x in out.splitlines() if "privileges" in x]
    assert line.startswith("! privileges") and "superuser" in line, line
    p = await grants.privileges(server_db)
    assert p is not None and p.superuser
    assert not p.migration_missing("x", postgresql=server_db.dialect.is_postgresql)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "u", "--role", "owner"], "--role"),
        (["--user", "u", "--dialect", "oracle"], "--dialect"),
        (
            ["--user", "u", "--dialect", "postgresql", "--database", "h", "--role", "both"],
            "--owner",
        ),
    ],
)
async def test_grants_rejects_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("database:\n  url: sqlite+aiosqlite:///x.db\n")
    code, out, err = await run_cli(cfg, "grants", *args)
    assert code == 2 and message in err and out == "", err
