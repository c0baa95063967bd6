"""Builders for test data and the ledger invariants every charging test asserts.

The invariant check is written independently of the code under test: plain SELECTs, summed in
Python with Decimal.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.storage.contract import inspect_live
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    correction,
    power_consume,
    table_names,
    toogo_user,
    trading_order,
    wallet,
    wallet_log,
)


def invite_code(user_id: int) -> str:
    """hg_toogo_user.invite_code is NOT NULL and unique in upstream's DDL."""
    return f"INV{user_id:08d}"


@dataclass
class Seeded:
    order_ids: list[int]
    initial_power: dict[int, Decimal]


def engine_order_sn(now: datetime) -> str:
    """hotgo's engine numbers orders "TO" + YmdHis + 6 random characters (docs/architecture.md, "How
    upstream's engine writes its tables")."""
    tail = "".join(random.choices("ABCDEFGHJKLMNPQRSTUVWXYZ23456789", k=6))
    return f"TO{now:%Y%m%d%H%M%S}{tail}"


def engine_order_id() -> str:
    """An exchange's id of the engine's *opening* order, as it lands in exchange_order_id."""
    return str(random.randint(10**17, 10**18 - 1))


async def insert_order(db: Database, **fields: Any) -> int:
    """An order as upstream's engine writes it (opening id in exchange_order_id, TO… order_sn,
    margin = open price × quantity ÷ leverage); ``fields`` override."""
    now = db.now()
    row: dict[str, Any] = {
        "user_id": 1,
        "robot_id": 1,
        "order_sn": engine_order_sn(now),
        "exchange_order_id": engine_order_id(),
        "symbol": "BTCUSDT",
        "direction": "long",
        "open_price": Decimal("100"),
        "close_price": Decimal("101"),
        "quantity": Decimal("1"),
        "leverage": 10,
        "margin": Decimal("10"),
        "realized_profit": Decimal("1.0000"),
        "open_time": now - timedelta(hours=1),
        "close_time": now - timedelta(minutes=5),
        "status": 2,
        "created_at": now,
        "updated_at": now,
    }
    row.update(fields)
    if db.dialect.is_postgresql:  # upstream's PG DDL: NOT NULL with defaults ('', 0) or NULL
        row = {k: v for k, v in row.items() if v is not None}

    async def ins(conn: AsyncConnection) -> int:
        result = await conn.execute(trading_order.insert().values(**row))
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    return await db.transaction(ins, what="seed order")


async def set_wallet(db: Database, user_id: int, power: Decimal) -> None:
    async def ins(conn: AsyncConnection) -> None:
        await conn.execute(
            wallet.insert().values(
                user_id=user_id,
                power=power,
                gift_power=Decimal("5"),
                total_power_consume=Decimal(0),
            )
        )

    await db.transaction(ins, what="seed wallet")


async def set_discount(db: Database, user_id: int, discount: Decimal, vip_level: int = 3) -> None:
    async def ins(conn: AsyncConnection) -> None:
        await conn.execute(
            toogo_user.insert().values(
                member_id=user_id,
                vip_level=vip_level,
                power_discount=discount,
                invite_code=invite_code(user_id),
            )
        )

    await db.transaction(ins, what="seed user")


async def seed_backlog(
    db: Database,
    *,
    orders: int,
    users: int,
    seed: int = 7,
    with_wallet_ratio: float = 0.8,
    losing_ratio: float = 0.1,
    discount_ratio: float = 0.2,
) -> Seeded:
    """Closed orders spread over ``users``; most profitable, some losing; some users without a
    wallet row; some with a VIP discount."""
    rnd = random.Random(seed)
    now = db.now()
    initial: dict[int, Decimal] = {}
    wallets, users_rows, order_rows = [], [], []
    for uid in range(1, users + 1):
        if rnd.random() < with_wallet_ratio:
            power = Decimal(rnd.randint(0, 100000)) / 100
            initial[uid] = power
            wallets.append(
                {
                    "user_id": uid,
                    "power": power,
                    "gift_power": Decimal("3"),
                    "total_power_consume": Decimal(0),
                }
            )
        else:
            initial[uid] = Decimal(0)
        if rnd.random() < discount_ratio:
            users_rows.append(
                {
                    "member_id": uid,
                    "invite_code": invite_code(uid),
                    "vip_level": rnd.randint(2, 5),
                    "power_discount": Decimal(rnd.randint(0, 5000)) / 100,
                }
            )
    for i in range(orders):
        uid = rnd.randint(1, users)
        profit = Decimal(rnd.randint(1, 5_000_000)) / 10000
        if rnd.random() < losing_ratio:
            profit = -profit
        close = now - timedelta(seconds=rnd.randint(60, 6 * 86400))
        order_rows.append(
            {
                "user_id": uid,
                "robot_id": 1000 + uid,
                "order_sn": f"TO{close:%Y%m%d%H%M%S}{seed:02d}{i:07d}",
                "exchange_order_id": str(10**17 + seed * 10**8 + i),
                "symbol": "BTCUSDT",
                "direction": "long",
                "open_price": Decimal("100"),
                "close_price": Decimal("101"),
                "quantity": Decimal("0.01"),
                "leverage": 10,
                "margin": Decimal("0.1"),
                "realized_profit": profit,
                "open_time": close - timedelta(minutes=30),
                "close_time": close,
                "status": 2,
                "created_at": now,
                "updated_at": now,
            }
        )

    async def ins(conn: AsyncConnection) -> list[int]:
        if wallets:
            await conn.execute(wallet.insert(), wallets)
        if users_rows:
            await conn.execute(toogo_user.insert(), users_rows)
        for start in range(0, len(order_rows), 2000):
            await conn.execute(trading_order.insert(), order_rows[start : start + 2000])
        ids = await conn.execute(select(trading_order.c.id).order_by(trading_order.c.id))
        return [r[0] for r in ids]

    ids = await db.transaction(ins, what="seed backlog")
    return Seeded(order_ids=ids, initial_power=initial)


async def assert_ledger_consistent(db: Database, initial: dict[int, Decimal]) -> dict[str, int]:
    """Exactly-once and balance invariants. Returns counts for further assertions.

    A correction (``power_consume_adjust``) counts as charged: a user's balance is the initial
    one minus the consume rows minus the corrections' deltas."""

    async def read(conn: AsyncConnection) -> tuple[list[Any], ...]:
        consumes = list(
            await conn.execute(
                select(
                    power_consume.c.user_id, power_consume.c.order_id, power_consume.c.consume_power
                )
            )
        )
        logs = list(
            await conn.execute(
                select(
                    wallet_log.c.id,
                    wallet_log.c.user_id,
                    wallet_log.c.change_type,
                    wallet_log.c.change_amount,
                    wallet_log.c.before_amount,
                    wallet_log.c.after_amount,
                    wallet_log.c.related_id,
                ).order_by(wallet_log.c.id)
            )
        )
        wallets = list(
            await conn.execute(
                select(wallet.c.user_id, wallet.c.power, wallet.c.total_power_consume)
            )
        )
        orders = list(
            await conn.execute(
                select(
                    trading_order.c.id,
                    trading_order.c.user_id,
                    trading_order.c.power_consumed,
                    trading_order.c.power_amount,
                    trading_order.c.status,
                    trading_order.c.realized_profit,
                )
            )
        )
        corrections: list[Any] = []
        if correction.name in await table_names(conn):
            k = correction.c
            corrections += await conn.execute(select(k.user_id, k.delta, k.wallet_log_id))
        return consumes, logs, wallets, orders, corrections

    consumes, logs, wallets, orders, corrections = await db.transaction(read, what="read ledger")
    pairs = [(c.user_id, c.order_id) for c in consumes]
    assert len(pairs) == len(set(pairs)), "an order was charged more than once"
    consume_of = {(c.user_id, c.order_id): c.consume_power for c in consumes}
    for o in orders:
        amount = consume_of.get((o.user_id, o.id))
        if amount is None:
            assert o.power_consumed == 0, f"order {o.id} flagged without a consume row"
        else:
            assert o.power_consumed == 1, f"order {o.id} charged but not flagged"
            assert o.power_amount == amount, f"order {o.id} power_amount differs"
            assert o.status == 2 and o.realized_profit > 0, f"order {o.id} was not eligible"
    consumed: dict[int, Decimal] = defaultdict(Decimal)
    for c in consumes:
        consumed[c.user_id] += c.consume_power
    for k in corrections:
        consumed[k.user_id] += k.delta
    adjusts = {row.id: row for row in logs if row.change_type == "power_consume_adjust"}
    assert sorted(adjusts) == sorted(k.wallet_log_id for k in corrections), "corrections' rows"
    for k in corrections:
        assert adjusts[k.wallet_log_id].change_amount == -k.delta, "a correction's ledger row"
    logged: dict[int, Decimal] = defaultdict(Decimal)
    chain: dict[int, list[Any]] = defaultdict(list)
    for row in logs:
        assert row.change_type in ("power_consume", "power_consume_adjust")
        assert row.after_amount - row.before_amount == row.change_amount
        logged[row.user_id] += row.change_amount
        chain[row.user_id].append(row)
    final = {w.user_id: w.power for w in wallets}
    totals = {w.user_id: w.total_power_consume for w in wallets}
    for uid in set(consumed) | set(logged):
        start = initial.get(uid, Decimal(0))
        assert start - final[uid] == consumed[uid] == -logged[uid], f"user {uid} balance broken"
        assert totals[uid] == consumed[uid], f"user {uid} total_power_consume broken"
        rows = chain[uid]
        assert rows[0].before_amount == start, f"user {uid} chain does not start at the balance"
        for prev, nxt in itertools.pairwise(rows):
            assert prev.after_amount == nxt.before_amount, f"user {uid} chain broken at {nxt.id}"
        assert rows[-1].after_amount == final[uid], f"user {uid} chain does not end at balance"
    for uid, power in final.items():
        if uid not in consumed:
            assert power == initial.get(uid, Decimal(0)), f"user {uid} debited without a charge"
    return {"consumes": len(consumes), "ledger": len(logs)}


async def eligible_ids(db: Database) -> set[int]:
    async def read(conn: AsyncConnection) -> set[int]:
        rows = await conn.execute(
            select(trading_order.c.id, trading_order.c.realized_profit, trading_order.c.status)
        )
        return {r.id for r in rows if r.status == 2 and r.realized_profit > 0}

    return await db.transaction(read, what="eligible ids")


async def consume_count(db: Database) -> int:
    async def read(conn: AsyncConnection) -> int:
        stmt = select(func.count()).select_from(power_consume)
        return int((await conn.execute(stmt)).scalar_one())

    return await db.transaction(read, what="count consumes")


async def legacy_charge(db: Database, user_id: int, order_id: int, amount: Decimal) -> None:
    """What the old code left behind: a consume row and a debit, but power_consumed still 0."""

    async def write(conn: AsyncConnection) -> None:
        await conn.execute(
            power_consume.insert().values(
                user_id=user_id,
                robot_id=1,
                order_id=order_id,
                order_sn="legacy",
                profit_amount=Decimal(1),
                consume_rate=Decimal("0.1"),
                consume_power=amount,
                original_power=amount,
            )
        )

    await db.transaction(write, what="legacy charge")


def ago(db: Database, **delta: float) -> datetime:
    return db.now() - timedelta(**delta)


async def live_columns(conn: AsyncConnection, table: Table) -> list[Any]:
    """``table``'s declared columns that the live schema has (upstream's PostgreSQL DDL lacks
    the optional columns of add_missing_order_fields.sql)."""
    have = (await inspect_live(conn)).present.get(table.name)
    return [c for c in table.columns if have is None or c.name in have]
