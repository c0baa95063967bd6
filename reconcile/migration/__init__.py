"""The operators' migration runbook as safe functions on a ``Database`` (MySQL/MariaDB and
PostgreSQL; what differs on PostgreSQL is in ``_pg``).

    check           read-only: duplicate groups, over-charge per user, what the schema lacks
    backup          copy the rows the cleanup touches into timestamped tables (+ a dump)
    dedupe          keep the max-id consume row per (user_id, order_id); refund the over-charge
    add_unique_key  online DDL (ALGORITHM=INPLACE / CONCURRENTLY): order columns and indexes,
                    uk_user_order, the daemon's own tables
    verify          no duplicates and the key exists
    refund_legs     refund the charges on closing legs (reconcile.charging.trades) an earlier
    release made up              check -> backup + dedupe -> add_unique_key -> legs -> verify;
    idempotent rollback        drop uk_user_order, restore the last dedupe's rows (same ids); or put
    back
                    the last legs refund's consume rows

Every destructive function is a dry run unless told otherwise; each returns a typed result.
Each step is one transaction (DML) or one atomic statement (DDL), ordered so that a failure
leaves the database as before that step and re-running picks up where it stopped.
See docs/cutover.md.
"""

from reconcile.charging.ledger import REFUND, REFUND_REVERSAL
from reconcile.migration._alter import DdlOptions, DdlStep
from reconcile.migration._backup import (
    BackupInfo,
    BackupResult,
    DumpResult,
    backup,
    dump_command,
    dump_tables,
    dump_tool,
)
from reconcile.migration._common import SchemaState, money
from reconcile.migration._ddl import AddKeyResult, VerifyResult, add_unique_key, verify
from reconcile.migration._dedupe import DedupeResult, dedupe
from reconcile.migration._duplicates import (
    DuplicateGroup,
    Duplicates,
    DuplicatesRemain,
    UserOvercharge,
)
from reconcile.migration._legs import LegsResult, refund_legs
from reconcile.migration._rollback import RollbackResult, rollback
from reconcile.migration._runbook import CheckReport, RefundTotals, UpResult, check, up

__all__ = [
    "REFUND",
    "REFUND_REVERSAL",
    "AddKeyResult",
    "BackupInfo",
    "BackupResult",
    "CheckReport",
    "DdlOptions",
    "DdlStep",
    "DedupeResult",
    "DumpResult",
    "DuplicateGroup",
    "Duplicates",
    "DuplicatesRemain",
    "LegsResult",
    "RefundTotals",
    "RollbackResult",
    "SchemaState",
    "UpResult",
    "UserOvercharge",
    "VerifyResult",
    "add_unique_key",
    "backup",
    "check",
    "dedupe",
    "dump_command",
    "dump_tables",
    "dump_tool",
    "money",
    "refund_legs",
    "rollback",
    "up",
    "verify",
]
