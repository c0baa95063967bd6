"""Backups: timestamped tables in the same database, a registry of them, an optional dump
(``mysqldump``/``mariadb-dump`` on MySQL, ``pg_dump`` on PostgreSQL).

A backup holds exactly what the cleanup touches: the consume rows it deletes (every row of a
duplicate group except the max id) and the wallet rows of the affected users, copied in one
transaction under row locks so the two tables agree. ``migrate dedupe`` takes its backup inside
its own transaction, so that backup is byte for byte what was deleted; ``migrate rollback``
reads it back through the registry ``toogo_reconcile_backup``.
See docs/cutover.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import ledger
from reconcile.errors import DatabaseError, ReconcileError
from reconcile.migration import _pg
from reconcile.migration._common import (
    BACKUP_PREFIX,
    CONSUME,
    WALLET,
    backup_table_name,
    chunks,
    money,
    quote,
    require_server,
    schema_state,
    table_names,
)
from reconcile.migration._duplicates import Duplicates, lock_duplicates, scan_duplicates
from reconcile.storage.db import Database, DatabaseSettings
from reconcile.storage.dialect import Dialect
from reconcile.storage.schema import UNIQUE_KEY, migration_backup, refund

log = structlog.get_logger("reconcile.migration")


@dataclass(frozen=True)
class BackupInfo:
    id: int
    kind: str  # 'backup' | 'dedupe' | 'legs'
    consume_table: str
    wallet_table: str
    consume_rows: int
    wallet_rows: int
    dup_groups: int
    deleted_rows: int
    refunded_rows: int
    refunded_amount: Decimal
    created_at: datetime
    rolled_back_at: datetime | None

    def restore_statements(self, dialect: Dialect) -> list[str]:
        """The SQL an operator would run by hand on this database (``migrate rollback`` does
        the first ones); the wallet statement is commented out on purpose."""
        c, w = self.consume_table, self.wallet_table
        restore = (
            f"INSERT INTO {CONSUME} SELECT b.* FROM {c} b "  # noqa: S608 - shown, not run
            f"WHERE NOT EXISTS (SELECT 1 FROM {CONSUME} p WHERE p.id = b.id);"
        )
        only_if = "-- only if nothing has charged or refunded these users since the backup: "
        if dialect.is_postgresql:
            return [
                f"ALTER TABLE {CONSUME} DROP CONSTRAINT IF EXISTS {UNIQUE_KEY};",
                f"DROP INDEX IF EXISTS {UNIQUE_KEY};",
                restore,
                f"{only_if}DELETE FROM {WALLET} WHERE id IN (SELECT id FROM {w}) "  # noqa: S608
                f"OR user_id IN (SELECT user_id FROM {w}); INSERT INTO {WALLET} SELECT * FROM {w};",
            ]
        return [
            f"ALTER TABLE {CONSUME} DROP INDEX {UNIQUE_KEY};",
            restore,
            f"{only_if}REPLACE INTO {WALLET} SELECT * FROM {w};",  # noqa: S608
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "consume_table": self.consume_table,
            "wallet_table": self.wallet_table,
            "consume_rows": self.consume_rows,
            "wallet_rows": self.wallet_rows,
            "groups": self.dup_groups,
            "deleted_rows": self.deleted_rows,
            "refunded_rows": self.refunded_rows,
            "refunded_amount": money(self.refunded_amount),
            "created_at": self.created_at.isoformat(sep=" "),
            "rolled_back_at": (
                self.rolled_back_at.isoformat(sep=" ") if self.rolled_back_at else None
            ),
        }


@dataclass(frozen=True)
class DumpResult:
    path: Path
    tool: str
    seconds: float
    bytes: int
    #: how to load it back (it replaces both tables)
    restore: str = ""


@dataclass(frozen=True)
class BackupResult:
    backup: BackupInfo | None  # None: no duplicates, nothing to back up
    duplicates: Duplicates
    dump: DumpResult | None = None


async def ensure_registry(db: Database) -> None:
    """Create the registry and refund tables if missing (the daemon's own tables)."""

    async def create(conn: AsyncConnection) -> None:
        tables = [migration_backup, refund]
        await conn.run_sync(lambda sync: migration_backup.metadata.create_all(sync, tables=tables))

    await db.transaction(create, what="migrate create registry")


async def create_backup_tables(db: Database) -> tuple[str, str]:
    """Empty ``toogo_reconcile_bak_{consume,wallet}_YYYYmmddHHMMSS`` tables shaped like the live
    ones (DDL: committed at once, so they are filled by the caller's transaction)."""
    stamp = db.now().strftime("%Y%m%d%H%M%S")

    async def create(conn: AsyncConnection) -> tuple[str, str]:
        existing = {t for t in await table_names(conn) if t.startswith(BACKUP_PREFIX)}
        for n in range(1, 1000):
            suffix = "" if n == 1 else f"_{n}"
            names = (
                f"{BACKUP_PREFIX}consume_{stamp}{suffix}",
                f"{BACKUP_PREFIX}wallet_{stamp}{suffix}",
            )
            if not existing & set(names):
                break
        for name, source in zip(names, (CONSUME, WALLET), strict=True):
            new, old = quote(conn, name), quote(conn, source)
            ddl = [f"CREATE TABLE {new} LIKE {old}"]
            if _pg.is_pg(conn):
                ddl = _pg.backup_table_ddl(new, old)
            for statement in ddl:
                await conn.exec_driver_sql(statement)
        return names

    return await db.transaction(create, what="migrate create backup tables")


async def registered(conn: AsyncConnection, consume_table: str) -> BackupInfo | None:
    """The registry row of these backup tables, if their transaction committed."""
    row = (
        await conn.execute(
            select(migration_backup).where(migration_backup.c.consume_table == consume_table)
        )
    ).first()
    return _info(row) if row is not None else None


async def drop_unregistered(db: Database, tables: tuple[str, str]) -> BackupInfo | None:
    """After the transaction meant to fill ``tables`` failed or found nothing: drop them - unless
    the registry names them, which means it did commit (a lost connection during COMMIT whose
    outcome was unknown); then they are the backup, returned here, and stay."""

    async def drop(conn: AsyncConnection) -> BackupInfo | None:
        info = await registered(conn, tables[0])
        if info is None:
            for name in tables:
                await conn.exec_driver_sql(
                    f"DROP TABLE IF EXISTS {quote(conn, backup_table_name(name))}"
                )
        return info

    try:
        return await db.transaction(drop, what="migrate drop unused backup tables")
    except ReconcileError as exc:
        log.warning("unused backup tables left behind", tables=list(tables), error=str(exc))
        return None


async def copy_rows(
    conn: AsyncConnection, target: str, source: str, column: str, keys: Sequence[int]
) -> int:
    """Copy the rows of ``source`` whose ``column`` is in ``keys`` (already locked by the
    caller) into the backup table ``target``."""
    col = quote(conn, column)
    stmt = text(
        f"INSERT INTO {quote(conn, target)} SELECT * FROM {quote(conn, source)} "  # noqa: S608
        f"WHERE {col} IN :keys ORDER BY {col}"
    ).bindparams(bindparam("keys", expanding=True))
    copied = 0
    for chunk in chunks(sorted(keys)):
        copied += (await conn.execute(stmt, {"keys": list(chunk)})).rowcount
    return copied


async def register(conn: AsyncConnection, **values: Any) -> int:
    result = await conn.execute(migration_backup.insert().values(**values))
    return int(result.inserted_primary_key[0])  # type: ignore[index]


async def finish(
    conn: AsyncConnection, backup_id: int, consume_rows: int, wallet_rows: int
) -> BackupInfo:
    """Record how many rows the backup tables got; the registry row as it now stands."""
    await conn.execute(
        migration_backup.update()
        .where(migration_backup.c.id == backup_id)
        .values(consume_rows=consume_rows, wallet_rows=wallet_rows)
    )
    info = await get_backup(conn, backup_id=backup_id)
    if info is None:  # cannot happen: registered in this transaction
        raise RuntimeError(f"backup #{backup_id} vanished from the registry")
    return info


def _info(row: Any) -> BackupInfo:
    m = row._mapping
    return BackupInfo(
        id=m["id"],
        kind=m["kind"],
        consume_table=m["consume_table"],
        wallet_table=m["wallet_table"],
        consume_rows=m["consume_rows"],
        wallet_rows=m["wallet_rows"],
        dup_groups=m["dup_groups"],
        deleted_rows=m["deleted_rows"],
        refunded_rows=m["refunded_rows"],
        refunded_amount=m["refunded_amount"],
        created_at=m["created_at"],
        rolled_back_at=m["rolled_back_at"],
    )


async def get_backup(
    conn: AsyncConnection,
    *,
    kind: str | tuple[str, ...] | None = None,
    backup_id: int | None = None,
    lock: bool = False,
) -> BackupInfo | None:
    """The registry row with this id, or the newest one (of ``kind``, or of any of them)."""
    b = migration_backup.c
    stmt = select(migration_backup).order_by(b.id.desc()).limit(1)
    if kind is not None:
        stmt = stmt.where(b.kind.in_([kind] if isinstance(kind, str) else list(kind)))
    if backup_id is not None:
        stmt = stmt.where(b.id == backup_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    return _info(row) if row is not None else None


async def backup(db: Database, *, dump: Path | None = None) -> BackupResult:
    """Copy the rows a dedupe would touch into new backup tables, in one transaction."""
    require_server(db)

    async def scan(conn: AsyncConnection) -> Duplicates:
        await schema_state(conn)  # the hotgo tables must exist
        return await scan_duplicates(conn)

    found = await db.transaction(scan, what="migrate scan duplicates")
    dumped = await dump_tables(db, dump) if dump is not None else None
    if not found.groups:
        log.info("migrate backup", status="nothing to back up", duplicate_groups=0)
        return BackupResult(None, found, dumped)
    await ensure_registry(db)
    tables = await create_backup_tables(db)

    async def fill(conn: AsyncConnection) -> tuple[BackupInfo | None, Duplicates]:
        # shared locks, in the dedupe's order: the two tables agree as of one moment
        await ledger.lock(db, conn, found.user_ids, exclusive=False, require=False)
        locked = await lock_duplicates(conn, found, exclusive=False)
        if not locked.groups:
            return None, locked
        n_consume = await copy_rows(conn, tables[0], CONSUME, "id", locked.extra_ids)
        n_wallet = await copy_rows(conn, tables[1], WALLET, "user_id", locked.user_ids)
        backup_id = await register(
            conn,
            kind="backup",
            consume_table=tables[0],
            wallet_table=tables[1],
            consume_rows=n_consume,
            wallet_rows=n_wallet,
            dup_groups=len(locked.groups),
            created_at=db.now(),
        )
        return await get_backup(conn, backup_id=backup_id), locked

    try:
        info, locked = await db.transaction(fill, what="migrate backup")
    except BaseException:
        await drop_unregistered(db, tables)
        raise
    if info is None:
        info = await drop_unregistered(db, tables)
    if info is not None:
        log.info(
            "migrate backup",
            status="done",
            backup_id=info.id,
            consume_table=tables[0],
            wallet_table=tables[1],
            consume_rows=info.consume_rows,
            wallet_rows=info.wallet_rows,
        )
    return BackupResult(info, locked, dumped)


# -- mysqldump / pg_dump -------------------------------------------------------------------------


def dump_tool(dialect: Dialect) -> str | None:
    if dialect.is_postgresql:
        return shutil.which("pg_dump")
    return shutil.which("mysqldump") or shutil.which("mariadb-dump")


def dump_command(settings: DatabaseSettings, tool: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment for a consistent dump of the two tables the cleanup changes.

    The password travels in the child's environment (``MYSQL_PWD``, ``PGPASSWORD``: readable
    only by the same user), never on the command line where ``ps`` would show it.
    """
    url = settings.sqlalchemy_url()
    if not url.database:
        raise DatabaseError("database.url names no database to dump")
    if url.get_backend_name() == "postgresql":
        return _pg.dump_command(url, tool, (CONSUME, WALLET), settings.lock_wait_timeout)
    argv = [
        tool,
        "--single-transaction",
        "--skip-lock-tables",
        "--no-tablespaces",
        "--hex-blob",
        "--default-character-set=utf8mb4",
    ]
    if url.host:
        argv.append(f"--host={url.host}")
    if url.port:
        argv.append(f"--port={url.port}")
    if url.username:
        argv.append(f"--user={url.username}")
    socket = url.query.get("unix_socket")
    if isinstance(socket, str):
        argv.append(f"--socket={socket}")
    argv += [url.database, CONSUME, WALLET]
    env = {k: v for k, v in os.environ.items() if k != "MYSQL_PWD"}
    if url.password:
        env["MYSQL_PWD"] = str(url.password)
    return argv, env


async def dump_tables(db: Database, path: Path) -> DumpResult:
    """A consistent dump of the consume and wallet tables into ``path`` (0600):
    ``mysqldump --single-transaction`` or ``pg_dump`` (one snapshot)."""
    tool = dump_tool(db.dialect)
    if tool is None:
        needs = "pg_dump" if db.dialect.is_postgresql else "mysqldump (or mariadb-dump)"
        raise DatabaseError(f"--dump needs {needs} on PATH")
    argv, env = dump_command(db.settings, tool)
    loop = asyncio.get_running_loop()
    started = loop.time()
    log.info("migrate dump", status="start", tool=Path(tool).name, path=str(path))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=asyncio.subprocess.PIPE, env=env
        )
        _, err = await proc.communicate()
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        raise DatabaseError(
            f"{Path(tool).name} failed (exit {proc.returncode}): {message[-1] if message else ''}"
        )
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    seconds = loop.time() - started
    log.info("migrate dump", status="done", path=str(path), bytes=size, seconds=round(seconds, 3))
    name = db.settings.sqlalchemy_url().database
    restore = (
        f"psql --dbname={name} --single-transaction --file={path}"
        if db.dialect.is_postgresql
        else f"mysql {name} < {path}"
    )
    return DumpResult(path=path, tool=Path(tool).name, seconds=seconds, bytes=size, restore=restore)
