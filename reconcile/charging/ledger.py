"""The power ledger: the only code that changes ``hg_toogo_wallet`` or writes its log.

The log is ``hg_toogo_wallet_log``. Charges, refunds, their reversals and the corrections of a
charge (reconcile.charging.corrections) all move power the same way, inside the caller's transaction
and after the rows that justify the change are locked:

1. :func:`lock` locks the users' wallet rows in user-id order - the one order everybody locks
   them in, so two writers never deadlock on wallets. A user without a wallet row raises
   :class:`MissingWallets`: ``Database.transaction`` then creates the rows (all zero) in a
   short transaction of their own (:func:`open_wallets`) and runs the unit again. Creating
   them inside the unit, between locks taken in order, let two writers deadlock on the new
   rows' gap locks.
2. :func:`post` writes one ledger row per :class:`Entry`, whose before/after continue from the
   locked balance in the order given, and moves each wallet once with atomic arithmetic:
   ``power += Σ amount``, ``total_power_consume -= Σ amount`` (a charge raises the consumed
   total, a refund lowers it). ``gift_power`` is never touched. Money is Decimal.
   :func:`post_consumes` is the same step for charges whose consume rows the caller has just
   inserted, done by the server: one ``INSERT ... SELECT`` computes the rows' before/after with
   a running sum per user and returns them (``RETURNING``), so no figure travels twice.

One exception to step 1's rule: the runbook's dedupe credits refunds to legacy users who were
charged without a wallet row, and must leave nothing behind if it fails, so it creates those
rows in place (:func:`create_locked`). It may: it holds the migration lock, and a charger that
meets the same missing row only reads (its lock fails, it rolls back and creates the row in a
transaction of its own, which waits for the dedupe), so no two writers insert into the gap.

A negative balance is allowed (hotgo's rule: a charge is never refused). See docs/charging.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.errors import DatabaseError, DuplicateKey, RowsMissing
from reconcile.storage.bulk import BulkWriter
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, trading_order, wallet, wallet_log

CONSUME = "power_consume"
REFUND = "power_consume_refund"
REFUND_REVERSAL = "power_consume_refund_reversal"
ADJUST = "power_consume_adjust"  # a correction: the charge at a revised profit, minus the charged

#: users per locking statement, ledger rows per INSERT ... RETURNING
_ROWS_PER_STATEMENT = 1000
_ZERO = Decimal(0)
_ENTRY_COLUMNS = ("user_id", "change_amount", "before_amount", "after_amount", "related_id")


@dataclass(frozen=True)
class Entry:
    """One ledger row: ``amount`` > 0 credits the user's power, < 0 debits it."""

    user_id: int
    order_id: int
    order_sn: str
    amount: Decimal
    remark: str | None = None  # None: the remark given to post()


@dataclass(frozen=True)
class Balance:
    power: Decimal
    total_power_consume: Decimal


@dataclass(frozen=True)
class Posted:
    entry: Entry
    before: Decimal
    after: Decimal


class MissingWallets(RowsMissing):
    def __init__(self, db: Database, user_ids: Sequence[int]) -> None:
        super().__init__(f"{len(user_ids)} users without a wallet row")
        self.db = db
        self.user_ids = list(user_ids)

    async def prepare(self) -> None:
        await open_wallets(self.db, self.user_ids)


def _new_wallet(user_id: int, power: Decimal, gift: Decimal, now: Any) -> dict[str, Any]:
    """A wallet row as hotgo creates one: its balances and no power consumed yet."""
    return {
        "user_id": user_id,
        "power": power,
        "gift_power": gift,
        "total_power_consume": _ZERO,
        "created_at": now,
        "updated_at": now,
    }


async def open_wallets(db: Database, user_ids: Sequence[int]) -> int:
    """Create the missing wallet rows (all zero) in a transaction of their own; how many."""
    wanted = sorted(set(user_ids))
    if not wanted:
        return 0
    now = db.now()
    w = wallet.c

    async def create(conn: AsyncConnection) -> int:
        have: set[int] = set()
        for start in range(0, len(wanted), _ROWS_PER_STATEMENT):
            chunk = wanted[start : start + _ROWS_PER_STATEMENT]
            have.update(
                r[0] for r in await conn.execute(select(w.user_id).where(w.user_id.in_(chunk)))
            )
        rows = [_new_wallet(u, _ZERO, _ZERO, now) for u in wanted if u not in have]
        if rows:  # a no-op where a concurrent creator won: no money column is touched
            await conn.execute(db.dialect.upsert(wallet, key=("user_id",)), rows)
        return len(rows)

    return await db.transaction(create, what="create wallets", users=len(wanted))


async def open_with_balances(
    conn: AsyncConnection, balances: Mapping[int, Decimal], *, gift: Decimal, now: datetime
) -> None:
    """Wallet rows with a starting balance and no ledger rows (the balance's history predates
    the daemon): the demo's users. Never used on a production database."""
    rows = [_new_wallet(u, p, gift, now) for u, p in sorted(balances.items())]
    if rows:
        await conn.execute(wallet.insert(), rows)


async def lock(
    db: Database,
    conn: AsyncConnection,
    user_ids: Sequence[int],
    *,
    exclusive: bool = True,
    require: bool = True,
) -> dict[int, Balance]:
    """Lock the users' wallet rows in user-id order (``exclusive=False``: shared locks).

    Raises :class:`MissingWallets` if ``require`` and a user has no wallet row."""
    w = wallet.c
    rows = await _locked(
        db,
        conn,
        (w.user_id, w.power, w.total_power_consume),
        user_ids,
        exclusive=exclusive,
        require=require,
    )
    return {r.user_id: Balance(r.power, r.total_power_consume) for r in rows}


async def lock_rows(db: Database, conn: AsyncConnection, user_ids: Sequence[int]) -> None:
    """:func:`lock` without reading the balances (for :func:`post_consumes`, which reads them
    on the server)."""
    await _locked(db, conn, (wallet.c.user_id,), user_ids, exclusive=True, require=True)


async def _locked(
    db: Database,
    conn: AsyncConnection,
    columns: Sequence[Any],
    user_ids: Sequence[int],
    *,
    exclusive: bool,
    require: bool,
) -> list[Any]:
    w = wallet.c
    stmt = (
        select(*columns)
        .where(w.user_id.in_(bindparam("users", expanding=True)))
        .order_by(w.user_id)
        .with_for_update(read=not exclusive)
    )
    ordered = sorted(set(user_ids))
    found: list[Any] = []
    for start in range(0, len(ordered), _ROWS_PER_STATEMENT):
        found += await conn.execute(stmt, {"users": ordered[start : start + _ROWS_PER_STATEMENT]})
    have = {r.user_id for r in found}
    missing = [u for u in ordered if u not in have]
    if missing and require:
        raise MissingWallets(db, missing)
    return found


async def create_locked(
    db: Database, conn: AsyncConnection, user_ids: Sequence[int]
) -> dict[int, Balance]:
    """Create wallet rows (all zero) for users :func:`lock` found without one, inside the
    caller's transaction, and lock them. Only for the runbook (see the module's docstring)."""
    now = db.now()
    rows = [_new_wallet(u, _ZERO, _ZERO, now) for u in sorted(set(user_ids))]
    if rows:
        await conn.execute(db.dialect.upsert(wallet, key=("user_id",)), rows)
    return await lock(db, conn, user_ids)


async def post(
    conn: AsyncConnection,
    entries: Sequence[Entry],
    balances: Mapping[int, Balance],
    *,
    change_type: str,
    now: datetime,
    remark: str = "",
    returning: bool = False,
) -> tuple[list[Posted], dict[tuple[int, int], int]]:
    """Write the entries' ledger rows and move the balances.

    Returns the entries with their before/after, in order, and - with ``returning`` - the
    ledger row id of each (user_id, order_id). Without it the rows go in one multi-row INSERT
    with the constant columns written once (the charging hot path)."""
    if not entries:
        return [], {}
    running = {u: b.power for u, b in balances.items()}
    posted: list[Posted] = []
    per_user: dict[int, Decimal] = defaultdict(Decimal)
    for e in entries:
        before = running[e.user_id]
        running[e.user_id] = before + e.amount
        posted.append(Posted(e, before, before + e.amount))
        per_user[e.user_id] += e.amount
    constants: dict[str, Any] = {
        "account_type": "power",
        "change_type": change_type,
        "related_type": "trading_order",
        "created_at": now,
    }
    ids = await (_insert_returning if returning else _insert)(conn, posted, constants, remark)
    await _move(conn, per_user, balances, now)
    return posted, ids


@dataclass(frozen=True, slots=True)
class Consumed:
    """What :func:`post_consumes` posted for one order: the debit and the balance around it."""

    amount: Decimal  # < 0
    before: Decimal
    after: Decimal


async def post_consumes(
    conn: AsyncConnection, order_ids: Sequence[int], *, now: datetime, remark: str
) -> dict[int, Consumed]:
    """Debit the charges recorded in the consume rows of ``order_ids``, just inserted by the
    caller, whose users' wallets :func:`lock_rows` has locked: one ledger row per order,
    before/after continuing from the locked balance in order-id order - as :func:`post` given
    the entries in that order - then each wallet moved once. Needs INSERT ... SELECT ...
    RETURNING (``Database.returning``). Returns what was posted, by order id.

    Raises :class:`DuplicateKey` (the transaction is then run again, and finds the order
    charged) when an order has another consume row than ours: a writer without the unique key
    added it meanwhile."""
    wanted = sorted(set(order_ids))
    if not wanted:
        return {}
    ids = ", ".join(str(int(i)) for i in wanted)
    numbered = conn.dialect.name == "postgresql"
    mark = ("$1", "$2") if numbered else ("%s", "%s")
    # one statement: the running sum per user gives each row its before/after
    running = "SUM(c.consume_power) OVER (PARTITION BY c.user_id ORDER BY c.order_id)"
    sql = (
        f"INSERT INTO {wallet_log.name} (user_id, account_type, change_type, change_amount, "  # noqa: S608
        "before_amount, after_amount, related_id, related_type, order_sn, remark, created_at) "
        f"SELECT c.user_id, 'power', '{CONSUME}', -c.consume_power, "
        f"w.power - ({running} - c.consume_power), w.power - {running}, "
        f"c.order_id, 'trading_order', c.order_sn, {mark[0]}, {mark[1]} "
        f"FROM {trading_order.name} o "
        f"JOIN {power_consume.name} c ON c.user_id = o.user_id AND c.order_id = o.id "
        f"JOIN {wallet.name} w ON w.user_id = c.user_id "
        f"WHERE o.id IN ({ids}) ORDER BY c.order_id "
        "RETURNING user_id, related_id, change_amount, before_amount, after_amount"
    )
    result = await conn.exec_driver_sql(sql, (remark[:255], now))
    posted: dict[int, Consumed] = {}
    per_user: dict[int, Decimal] = defaultdict(Decimal)
    rows = 0
    row: Any
    for row in result:
        user_id, order_id, amount, before, after = row
        posted[order_id] = Consumed(amount, before, after)
        per_user[user_id] += amount
        rows += 1
    if rows != len(posted) or len(posted) != len(wanted):
        raise DuplicateKey(f"{rows} consume rows for {len(posted)} of {len(wanted)} orders")
    await _move(conn, per_user, {}, now)
    return posted


async def _move(
    conn: AsyncConnection,
    per_user: Mapping[int, Decimal],
    balances: Mapping[int, Balance],
    now: datetime,
) -> None:
    """Each wallet once: ``power += Σ``, ``total_power_consume -= Σ``."""
    await BulkWriter(conn).add(
        wallet,
        "user_id",
        per_user,
        {"power": 1, "total_power_consume": -1},
        {
            "power": {u: b.power for u, b in balances.items()},
            "total_power_consume": {u: b.total_power_consume for u, b in balances.items()},
        },
        {"updated_at": now},
    )


def _row(p: Posted) -> tuple[Any, ...]:
    return (p.entry.user_id, p.entry.amount, p.before, p.after, p.entry.order_id, p.entry.order_sn)


async def _insert(
    conn: AsyncConnection, posted: list[Posted], constants: dict[str, Any], remark: str
) -> dict[tuple[int, int], int]:
    columns = (*_ENTRY_COLUMNS, "order_sn")
    if all(p.entry.remark is None for p in posted):
        await BulkWriter(conn).insert(
            wallet_log, columns, [_row(p) for p in posted], {**constants, "remark": remark[:255]}
        )
    else:
        rows = [(*_row(p), (p.entry.remark or remark)[:255]) for p in posted]
        await BulkWriter(conn).insert(wallet_log, (*columns, "remark"), rows, constants)
    return {}


async def _insert_returning(
    conn: AsyncConnection, posted: list[Posted], constants: dict[str, Any], remark: str
) -> dict[tuple[int, int], int]:
    rows = [
        {
            **dict(zip((*_ENTRY_COLUMNS, "order_sn"), _row(p), strict=True)),
            **constants,
            "remark": (p.entry.remark or remark)[:255],
        }
        for p in posted
    ]
    w = wallet_log.c
    ids: dict[tuple[int, int], int] = {}
    if not conn.dialect.insert_executemany_returning:  # MySQL 8: one row at a time, its id
        for row in rows:
            key = (await conn.execute(wallet_log.insert(), row)).inserted_primary_key
            if key is None:  # cannot happen: the id is an autoincrement
                raise DatabaseError("a ledger row without an id")
            ids[(row["user_id"], row["related_id"])] = int(key[0])
        return ids
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        result = await conn.execute(
            wallet_log.insert().returning(
                w.id, w.user_id, w.related_id, sort_by_parameter_order=True
            ),
            rows[start : start + _ROWS_PER_STATEMENT],
        )
        ids.update({(r.user_id, r.related_id): r.id for r in result})
    return ids


__all__ = [
    "ADJUST",
    "CONSUME",
    "REFUND",
    "REFUND_REVERSAL",
    "Balance",
    "Consumed",
    "Entry",
    "MissingWallets",
    "Posted",
    "create_locked",
    "lock",
    "lock_rows",
    "open_wallets",
    "open_with_balances",
    "post",
    "post_consumes",
]
