"""Wallet credits and debits with ledger rows, for refunds and their reversals.

Called inside the caller's transaction, after the rows that justify the change are locked:
wallets are locked in user-id order (the order the consumer uses), each entry becomes one
``hg_toogo_wallet_log`` row whose before/after continue from the wallet's locked balance, and
each wallet gets one UPDATE with atomic ``power = power + x`` arithmetic. Money is Decimal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, case, literal, select
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.migration._common import ZERO, chunks
from reconcile.schema import wallet, wallet_log

REFUND = "power_consume_refund"
REFUND_REVERSAL = "power_consume_refund_reversal"


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger row: ``amount`` > 0 credits the user's power, < 0 debits it."""

    user_id: int
    order_id: int
    order_sn: str
    amount: Decimal
    remark: str


async def lock_wallets(
    conn: AsyncConnection,
    user_ids: Sequence[int],
    now: datetime,
    *,
    exclusive: bool = True,
    create_missing: bool = False,
) -> tuple[dict[int, Decimal], int]:
    """Lock the wallet rows in user-id order; returns ({user_id: power}, wallets created)."""
    w = wallet.c
    stmt = (
        select(w.user_id, w.power)
        .where(w.user_id.in_(bindparam("users", expanding=True)))
        .order_by(w.user_id)
        .with_for_update(read=not exclusive)
    )
    ordered = sorted(set(user_ids))
    found: dict[int, Decimal] = {}
    for chunk in chunks(ordered):
        found.update({r.user_id: r.power for r in await conn.execute(stmt, {"users": list(chunk)})})
    missing = [u for u in ordered if u not in found]
    if missing and create_missing:
        ins = mysql.insert(wallet)
        rows = [
            {
                "user_id": u,
                "power": ZERO,
                "gift_power": ZERO,
                "total_power_consume": ZERO,
                "created_at": now,
                "updated_at": now,
            }
            for u in missing
        ]
        # a no-op on conflict (a concurrent creator won); no money column is touched
        await conn.execute(ins.on_duplicate_key_update(user_id=ins.inserted.user_id), rows)
        for chunk in chunks(missing):
            found.update(
                {r.user_id: r.power for r in await conn.execute(stmt, {"users": list(chunk)})}
            )
    return found, len(missing) if create_missing else 0


async def post_entries(
    conn: AsyncConnection,
    entries: Sequence[LedgerEntry],
    balances: dict[int, Decimal],
    *,
    change_type: str,
    now: datetime,
) -> dict[tuple[int, int], int]:
    """Write the ledger rows and move the balances; returns {(user_id, order_id): ledger id}.

    ``total_power_consume`` moves against ``power``: a refund credits power and lowers the
    total consumed, its reversal does the opposite. ``gift_power`` is never touched.
    """
    if not entries:
        return {}
    running = dict(balances)
    rows: list[dict[str, Any]] = []
    for e in sorted(entries, key=lambda x: (x.user_id, x.order_id)):
        before = running[e.user_id]
        after = before + e.amount
        running[e.user_id] = after
        rows.append(
            {
                "user_id": e.user_id,
                "account_type": "power",
                "change_type": change_type,
                "change_amount": e.amount,
                "before_amount": before,
                "after_amount": after,
                "related_id": e.order_id,
                "related_type": "trading_order",
                "order_sn": e.order_sn,
                "remark": e.remark[:255],
                "created_at": now,
            }
        )
    ids: dict[tuple[int, int], int] = {}
    for batch in chunks(rows):
        result = await conn.execute(
            wallet_log.insert().returning(
                wallet_log.c.id,
                wallet_log.c.user_id,
                wallet_log.c.related_id,
                sort_by_parameter_order=True,
            ),
            list(batch),
        )
        ids.update({(r.user_id, r.related_id): r.id for r in result})

    per_user: dict[int, Decimal] = defaultdict(Decimal)
    for e in entries:
        per_user[e.user_id] += e.amount
    w = wallet.c
    for chunk in chunks(sorted(per_user)):
        delta = case({u: literal(per_user[u], w.power.type) for u in chunk}, value=w.user_id)
        await conn.execute(
            wallet.update()
            .where(w.user_id.in_(list(chunk)))
            .values(
                power=w.power + delta,
                total_power_consume=w.total_power_consume - delta,
                updated_at=now,
            )
        )
    return ids
