"""``toogo-reconcile doctor``: is this installation able to run? One line per check.

Checks, in order: the configuration (the command's own line); the database, its schema, the
user's privileges, time zones, the quarantine and the own tables' sizes
(:mod:`daemon.doctor_database`); the API accounts' credentials (:mod:`daemon.doctor_accounts`);
the proxy, every configured exchange and the replay path (:mod:`daemon.doctor_exchanges`). Each
check yields a :class:`~daemon.doctor_report.Line`; a check that cannot run because an earlier one
failed is skipped, not failed.

Accounts examined: those of running robots (what the daemon polls), or with ``all_accounts``
every enabled account. Nothing is written anywhere. See docs/operations.md ("Checking an
installation").
"""

from __future__ import annotations

from daemon.config import Config
from daemon.doctor_accounts import CheckedAccount, accounts, credentials
from daemon.doctor_database import (
    connect,
    privileges,
    quarantined,
    schema,
    table_sizes,
    time_zone,
)
from daemon.doctor_exchanges import ExchangeChecks, egress
from daemon.doctor_report import Emit, Mark, Report
from reconcile.errors import ReconcileError


class Doctor:
    """Runs the checks in order, handing each line to ``emit`` as soon as it is known."""

    def __init__(self, config: Config, emit: Emit, *, all_accounts: bool = False) -> None:
        self.config = config
        self.report = Report(emit)
        self.all_accounts = all_accounts
        self.scope = "enabled account(s)" if all_accounts else "account(s) of running robots"

    async def run(self) -> bool:
        """All checks; True when none failed."""
        report, config = self.report, self.config
        examined: list[CheckedAccount] | None = None
        async with connect(report, config) as db:
            if db is not None:
                try:
                    tables = await schema(report, db)
                    await privileges(report, db)
                    await time_zone(report, config, db, tables)
                    await quarantined(report, db, tables)
                    await table_sizes(report, db, tables)
                    if tables.has_accounts:
                        examined = await accounts(db, config, all_accounts=self.all_accounts)
                    else:
                        report.emit(Mark.SKIP, "credentials", "not checked: no hotgo tables")
                except ReconcileError as exc:
                    report.emit(Mark.FAIL, "database", f"failed during the checks: {exc}")
            way_out = await egress(report, config.proxy, db)
        credentials(report, examined, self.scope)
        await ExchangeChecks(report, config, examined, way_out, self.scope).run()
        return not report.failed
