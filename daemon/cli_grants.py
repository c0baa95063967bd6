"""``toogo-reconcile grants``: print the GRANT statements of the runtime and migration roles
(the data is ``reconcile.storage.grants``). Prints only; connects to nothing; never shows a
password. See docs/operations.md."""

from __future__ import annotations

import click

from daemon.cli_common import EXIT_USAGE, fail, load
from reconcile.storage import grants as g
from reconcile.views.status import target


@click.command("grants")
@click.option("--user", required=True, help="The database user the statements grant to.")
@click.option("--host", default="%", show_default=True, help="MySQL/MariaDB: the user's host.")
@click.option(
    "--role",
    default="runtime",
    show_default=True,
    help="runtime (run, sync, sweep, consume, report, audit), migration (the runbook), or both.",
)
@click.option(
    "--dialect",
    default=None,
    help="mysql or postgresql (default: database.url's backend).",
)
@click.option("--database", default=None, help="Database name (default: database.url's).")
@click.option(
    "--owner",
    default=None,
    help="PostgreSQL migration role: the role that owns hotgo's tables.",
)
@click.pass_context
def grants(
    ctx: click.Context,
    user: str,
    host: str,
    role: str,
    dialect: str | None,
    database: str | None,
    owner: str | None,
) -> None:
    """Print the GRANT statements of a database role for USER.

    Create the runtime user after `migrate up` (the statements name the daemon's own tables).
    """
    if role not in g.ROLES:
        fail(f"--role: {role!r} is not one of {', '.join(g.ROLES)}", EXIT_USAGE)
    if dialect is not None and dialect not in g.DIALECTS:
        fail(f"--dialect: {dialect!r} is not one of {', '.join(g.DIALECTS)}", EXIT_USAGE)
    if not user.strip():
        fail("--user: must not be empty", EXIT_USAGE)
    if dialect is None or database is None:
        url = target(load(ctx, logs_to_stderr=True).database_settings().url)
        backend = "mysql" if url.backend in ("mysql", "mariadb") else url.backend
        if dialect is None:
            if backend not in g.DIALECTS:
                fail(f"--dialect: database.url is {backend}; give mysql or postgresql", EXIT_USAGE)
            dialect = backend
        database = database or url.database
    if not database or (dialect == "postgresql" and "/" in database):
        fail("--database: no database name (give --database or set database.url)", EXIT_USAGE)
    if dialect == "postgresql" and role != "runtime" and not owner:
        fail(
            "--owner: the PostgreSQL migration role needs the role owning hotgo's tables",
            EXIT_USAGE,
        )
    for line in g.render(dialect, role, database=database, user=user, host=host, owner=owner):
        click.echo(line)
