"""The two database roles, as data: what the daemon's day-to-day commands need, table by table,
and what the migration runbook needs on top; their GRANT statements; the configured user's
actual privileges compared with them.

The **runtime** role (``run``, ``sync``, ``sweep``, ``consume``, ``report``, ``audit``,
``held``, ``exchange``, ``doctor``, ``prune``) gets table-level DML only: no DDL, and DELETE only
on the daemon's own tables that the retention prunes (reconcile/storage/retention.py; never on
hotgo's). Derived from the statements in ``consumer.py``,
``ledger.py``, ``bulk.py`` (charging), ``upsert.py``, ``history.py``, ``fleet.py``,
``trades.py``, ``quarantine.py``, ``corrections.py``, ``shadow.py``, ``held.py`` (writes) and
the read-only views. An ``INSERT … ON DUPLICATE KEY UPDATE`` / ``ON CONFLICT DO UPDATE`` needs
UPDATE as well as INSERT; PostgreSQL's ``FOR UPDATE``/``FOR SHARE`` needs UPDATE; a BIGSERIAL
id needs USAGE on its sequence.

The **migration** role (``migrate up/dedupe/add-unique-key/rollback/backup``) changes the
schema: on MySQL/MariaDB the database-wide SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER,
INDEX (backup tables get timestamped names, so table-level grants cannot name them; DROP only
removes unused backup tables); on PostgreSQL, where only a table's owner may ALTER it or index
it, membership in the role owning hotgo's tables plus CREATE on the schema.
See docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.errors import PermanentError
from reconcile.storage.db import Database

SEL, INS, UPD, DEL = "SELECT", "INSERT", "UPDATE", "DELETE"

#: table -> the privileges the runtime role needs on it (the one place this is written down)
RUNTIME: Mapping[str, tuple[str, ...]] = {
    # hotgo's tables
    "hg_trading_robot": (SEL,),
    "hg_trading_api_config": (SEL,),
    "hg_trading_proxy_config": (SEL,),
    "hg_trading_order": (SEL, INS, UPD),  # the sync inserts/closes orders; charges set power_*
    "hg_toogo_power_consume": (SEL, INS),
    "hg_toogo_wallet": (SEL, INS, UPD),  # a missing wallet row is created (upsert), then debited
    "hg_toogo_wallet_log": (SEL, INS),
    "hg_toogo_user": (SEL,),
    "hg_toogo_config": (SEL,),
    # the daemon's own tables
    "toogo_reconcile_cursor": (SEL, INS, UPD, DEL),  # DELETE: cursors no longer polled
    "toogo_reconcile_poll": (SEL, INS, UPD),
    "toogo_reconcile_binding": (SEL, INS),
    # the retention (reconcile/storage/retention.py) empties old raw payloads and deletes old rows
    "toogo_reconcile_record": (SEL, INS, UPD, DEL),
    "toogo_reconcile_record_order": (SEL, INS, DEL),
    "toogo_reconcile_verdict": (SEL, INS, UPD),
    "toogo_reconcile_quarantine": (SEL, INS, UPD, DEL),  # DELETE: old resolved rows
    "toogo_reconcile_skip": (SEL, INS, DEL),
    "toogo_reconcile_correction": (SEL, INS),
    "toogo_reconcile_shadow": (SEL, INS, DEL),
    "toogo_reconcile_refund": (SEL,),  # report and audit read the runbook's refunds
}
#: tables without a serial id (PostgreSQL: no sequence to grant)
_NO_SEQUENCE = frozenset({"toogo_reconcile_poll"})
#: what the migration changes the definition of (PostgreSQL: their owner's rights)
ALTERED = ("hg_trading_order", "hg_toogo_power_consume")
MIGRATION_DATABASE = (SEL, INS, UPD, DEL, "CREATE", "DROP", "ALTER", "INDEX")
ROLES = ("runtime", "migration", "both")
DIALECTS = ("mysql", "postgresql")
GRANTS_HINT = "see `toogo-reconcile grants --role migration`"


class InsufficientPrivileges(PermanentError):
    """The configured user lacks what a command needs (the migration role)."""


def sequences() -> list[str]:
    """The PostgreSQL sequences the runtime inserts through (BIGSERIAL ``<table>_id_seq``)."""
    return [f"{t}_id_seq" for t, privs in RUNTIME.items() if INS in privs and t not in _NO_SEQUENCE]


def _mysql_account(user: str, host: str) -> str:
    return "'{}'@'{}'".format(user.replace("'", "''"), host.replace("'", "''"))


def _pg_ident(name: str) -> str:
    return '"{}"'.format(name.replace('"', '""'))


def render(
    dialect: str,
    role: str,
    *,
    database: str,
    user: str,
    host: str = "%",
    owner: str | None = None,
) -> list[str]:
    """The GRANT statements of ``role`` (runtime, migration or both) for ``user``."""
    out: list[str] = []
    if dialect == "mysql":
        account, db = _mysql_account(user, host), f"`{database.replace('`', '``')}`"
        if role in ("runtime", "both"):
            out.append("-- runtime role: the daemon's day-to-day commands (no DDL; own DELETE)")
            out += [
                f"GRANT {', '.join(privs)} ON {db}.`{table}` TO {account};"
                for table, privs in RUNTIME.items()
            ]
        if role in ("migration", "both"):
            out.append("-- migration role: `migrate up/dedupe/add-unique-key/rollback/backup`")
            out.append(f"GRANT {', '.join(MIGRATION_DATABASE)} ON {db}.* TO {account};")
        return out
    grantee, db = _pg_ident(user), _pg_ident(database)
    if role in ("runtime", "both"):
        out.append("-- runtime role: the daemon's day-to-day commands (no DDL; own DELETE)")
        out.append(f"GRANT CONNECT ON DATABASE {db} TO {grantee};")
        out.append(f"GRANT USAGE ON SCHEMA public TO {grantee};")
        out += [
            f"GRANT {', '.join(privs)} ON TABLE {table} TO {grantee};"
            for table, privs in RUNTIME.items()
        ]
        out.append(f"GRANT USAGE ON SEQUENCE {', '.join(sequences())} TO {grantee};")
    if role in ("migration", "both"):
        if owner is None:
            raise ValueError("--owner is required for the PostgreSQL migration role")
        out.append("-- migration role: ALTER TABLE and CREATE INDEX need the tables' owner")
        if role == "migration":
            out.append(f"GRANT CONNECT ON DATABASE {db} TO {grantee};")
        out.append(f"GRANT USAGE, CREATE ON SCHEMA public TO {grantee};")
        out.append(f"GRANT {_pg_ident(owner)} TO {grantee};")
    return out


# -- the configured user's actual privileges ---------------------------------------------------


@dataclass
class Privileges:
    """What the connected user may do in the configured database."""

    user: str
    superuser: bool = False
    #: table -> privileges the user has on it (table-level, or via database/global grants)
    tables: dict[str, set[str]] = field(default_factory=dict)
    #: excess grants wider than a table: "DROP on database hotgo", "CREATE on schema public"
    wide: list[str] = field(default_factory=list)
    #: MySQL: database-wide (or global) privileges; PostgreSQL: CREATE on the schema
    database_level: set[str] = field(default_factory=set)
    owns: set[str] = field(default_factory=set)  # PostgreSQL: tables it may act as owner of
    missing_sequences: list[str] = field(default_factory=list)

    def runtime_missing(self) -> list[str]:
        out = [
            f"{p} on {t}"
            for t, privs in RUNTIME.items()
            for p in privs
            if p not in self.tables.get(t, set())
        ]
        return out + [f"USAGE on sequence {s}" for s in self.missing_sequences]

    def runtime_excess(self) -> list[str]:
        out = list(self.wide)
        for table in sorted(self.tables):
            extra = sorted(self.tables[table] - set(RUNTIME.get(table, ())))
            out += [f"{p} on {table}" for p in extra]
            if table in self.owns:
                out.append(f"owner of {table} (ALTER, DROP)")
        return out

    def migration_missing(self, database: str, *, postgresql: bool) -> list[str]:
        if self.superuser:
            return []
        if postgresql:
            out = [f"owner of {t} (ALTER, CREATE INDEX)" for t in ALTERED if t not in self.owns]
            if "CREATE" not in self.database_level:
                out.append("CREATE on schema public")
            return out + self.runtime_missing()
        return [f"{p} on {database}" for p in MIGRATION_DATABASE if p not in self.database_level]


_MYSQL_ALL = ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "INDEX")


async def _mysql(conn: AsyncConnection) -> Privileges:
    who = str((await conn.execute(text("SELECT CURRENT_USER()"))).scalar_one())
    name, _, host = who.rpartition("@")
    grantee = _mysql_account(name, host)
    database = str((await conn.execute(text("SELECT DATABASE()"))).scalar_one())
    p = Privileges(user=who)
    glob = {
        str(r[0])
        for r in await conn.execute(
            text(
                "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = :g"
            ),
            {"g": grantee},
        )
    } - {"USAGE"}
    p.superuser = "SUPER" in glob or "CREATE USER" in glob
    schema = {
        str(r[0])
        for r in await conn.execute(
            text(
                "SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES "
                "WHERE GRANTEE = :g AND TABLE_SCHEMA = :d"
            ),
            {"g": grantee, "d": database},
        )
    }
    p.wide += [f"{x} on *.* (global)" for x in sorted(glob)]
    p.wide += [f"{x} on database {database}" for x in sorted(schema)]
    p.database_level = (glob | schema) & set(_MYSQL_ALL)
    tables = [
        str(r[0])
        for r in await conn.execute(
            text("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = :d"),
            {"d": database},
        )
    ]
    wide = (glob | schema) & {SEL, INS, UPD, DEL}
    for table in {*tables, *RUNTIME}:
        p.tables[table] = set(wide)
    rows = await conn.execute(
        text(
            "SELECT TABLE_NAME, PRIVILEGE_TYPE FROM information_schema.TABLE_PRIVILEGES "
            "WHERE GRANTEE = :g AND TABLE_SCHEMA = :d"
        ),
        {"g": grantee, "d": database},
    )
    for table, priv in rows:
        p.tables.setdefault(str(table), set()).add(str(priv))
    p.tables = {t: privs for t, privs in p.tables.items() if privs or t in RUNTIME}
    return p


_PG_TABLES = text(
    "SELECT c.relname, p.priv, pg_has_role(c.relowner, 'USAGE') AS owns "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "CROSS JOIN unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE','REFERENCES',"
    "'TRIGGER']) AS p(priv) "
    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
    "AND has_table_privilege(c.oid, p.priv)"
)


async def _postgresql(conn: AsyncConnection) -> Privileges:
    row = (
        await conn.execute(
            text(
                "SELECT current_user, r.rolsuper, current_database(), "
                "has_schema_privilege(current_schema(), 'CREATE'), "
                "has_database_privilege(current_database(), 'CREATE') "
                "FROM pg_roles r WHERE r.rolname = current_user"
            )
        )
    ).one()
    p = Privileges(user=str(row[0]), superuser=bool(row[1]))
    if row[3]:
        p.database_level.add("CREATE")
        p.wide.append("CREATE on schema public")
    if row[4]:
        p.wide.append(f"CREATE on database {row[2]}")
    for table, priv, owns in await conn.execute(_PG_TABLES):
        p.tables.setdefault(str(table), set()).add(str(priv))
        if owns:
            p.owns.add(str(table))
    for table in RUNTIME:
        p.tables.setdefault(table, set())
    for seq in sequences():
        ok = (
            await conn.execute(
                text(
                    "SELECT to_regclass(:s) IS NULL "
                    "OR has_sequence_privilege(to_regclass(:s), 'USAGE')"
                ),
                {"s": seq},
            )
        ).scalar_one()
        if not ok:
            p.missing_sequences.append(seq)
    return p


async def privileges(db: Database) -> Privileges | None:
    """The connected user's privileges; None on the embedded SQLite (no users)."""
    if not db.dialect.concurrent:
        return None

    async def read(conn: AsyncConnection) -> Privileges:
        if db.dialect.is_postgresql:
            return await _postgresql(conn)
        return await _mysql(conn)

    return await db.transaction(read, what="read the user's privileges")


@dataclass(frozen=True)
class Verdict:
    """doctor's reading: which role the user matches, what is missing, what is too much."""

    role: str | None  # "runtime", "migration", or None
    missing: list[str]
    excess: list[str]
    superuser: bool


def judge(p: Privileges, database: str, *, postgresql: bool) -> Verdict:
    missing, excess = p.runtime_missing(), p.runtime_excess()
    if p.superuser:
        return Verdict(None, [], excess, True)
    if not missing and not excess:
        return Verdict("runtime", [], [], False)
    if not p.migration_missing(database, postgresql=postgresql):
        return Verdict("migration", [], excess, False)
    return Verdict(None, missing, excess, False)


async def require_migration_role(db: Database, command: str) -> None:
    """Refuse (before anything is written) when the user lacks the migration role."""
    p = await privileges(db)
    if p is None:
        return  # SQLite: the migration refuses it by itself
    lacking = p.migration_missing(database_name(db), postgresql=db.dialect.is_postgresql)
    if lacking:
        shown = ", ".join(lacking[:6]) + (f" (+{len(lacking) - 6})" if len(lacking) > 6 else "")
        raise InsufficientPrivileges(
            f"{command} needs the migration role: {p.user} lacks {shown}; nothing was changed; "
            f"{GRANTS_HINT}"
        )


def database_name(db: Database) -> str:
    return db.settings.sqlalchemy_url().database or ""
