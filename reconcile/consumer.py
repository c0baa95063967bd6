"""Where an order is charged: the idempotent power consumer.

One transaction per unit of work (one order, or one page of the sweep):

1. the order rows are locked (``FOR UPDATE``; the sweep adds ``SKIP LOCKED`` so sweepers share);
2. an existing consume row for (user_id, order_id) means "already charged": the order's flag and
   power_amount are repaired from it if needed and ``skip duplicate`` is logged - never a second
   debit, even when the amount it holds differs from today's (``conflict=true``);
3. otherwise the consume row is INSERTed (plain INSERT: ``uk_user_order`` decides a race with a
   writer that does not lock the order), the wallet row is created if missing and locked in
   user-id order, debited with ``power = power - x``, a ledger row with before/after is written,
   and the order gets ``power_consumed = 1, power_amount = x``;
4. commit. The ``power consumed`` events are logged only after the commit succeeded.

A crash before commit leaves nothing; after commit everything is there. A lost connection during
COMMIT is resolved by re-running the same unit: step 2 then finds the row if the commit landed.
A negative power balance is allowed (hotgo's rule: a charge is never refused).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import Select, and_, or_, select, tuple_
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.bulk import BulkWriter
from reconcile.db import Database
from reconcile.errors import DatabaseError, DuplicateKey, OrderNotFound
from reconcile.orders import eligible_sql, ineligibility
from reconcile.pricing import Charge, Discount, PowerOverride, PowerRules, compute_charge
from reconcile.schema import (
    power_consume,
    toogo_config,
    toogo_user,
    trading_order,
    wallet,
    wallet_log,
)

log = structlog.get_logger("reconcile.consumer")

PAGE = 500  # orders per transaction when charging known orders in bulk


class _MissingWallets(Exception):
    def __init__(self, user_ids: list[int]) -> None:
        super().__init__(f"{len(user_ids)} users without a wallet row")
        self.user_ids = user_ids


class Source(StrEnum):
    REALTIME = "realtime"
    SWEEP = "sweep"
    HISTORY = "history"


class Outcome(StrEnum):
    CHARGED = "charged"
    SKIPPED_DUPLICATE = "skipped_duplicate"
    NOT_ELIGIBLE = "not_eligible"


@dataclass(frozen=True)
class ChargeResult:
    order_id: int
    outcome: Outcome
    consume_power: Decimal | None = None
    reason: str | None = None
    conflict: bool = False


@dataclass(frozen=True)
class _Order:
    id: int
    user_id: int
    robot_id: int
    order_sn: str
    status: int | None
    realized_profit: Decimal | None
    power_consumed: int
    power_amount: Decimal
    close_time: datetime | None


@dataclass
class _Settlement:
    """What one transaction decided; its events are logged after COMMIT."""

    results: list[ChargeResult] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def log(self) -> None:
        for event, fields in self.events:
            log.info(event, **fields)


_CONSUME_COLUMNS = (
    "user_id",
    "robot_id",
    "order_id",
    "order_sn",
    "profit_amount",
    "consume_power",
    "from_power",
    "vip_level",
    "discount_rate",
    "original_power",
)
_LEDGER_COLUMNS = (
    "user_id",
    "change_amount",
    "before_amount",
    "after_amount",
    "related_id",
    "order_sn",
)

_ORDER_COLUMNS = (
    trading_order.c.id,
    trading_order.c.user_id,
    trading_order.c.robot_id,
    trading_order.c.order_sn,
    trading_order.c.status,
    trading_order.c.realized_profit,
    trading_order.c.power_consumed,
    trading_order.c.power_amount,
    trading_order.c.close_time,
)


async def load_power_rules(db: Database, override: PowerOverride) -> PowerRules:
    """Configured values win; otherwise ``hg_toogo_config`` group ``power``; else 0.10 / 0.01."""
    consume_rate, min_consume = override.consume_rate, override.min_consume
    defaults = PowerRules()
    stored: dict[str, str] = {}
    if consume_rate is None or min_consume is None:

        async def read(conn: AsyncConnection) -> dict[str, str]:
            rows = await conn.execute(
                select(toogo_config.c.key, toogo_config.c.value).where(
                    toogo_config.c.group == "power",
                    toogo_config.c.key.in_(["consume_rate", "min_consume"]),
                )
            )
            return {k: v for k, v in rows if v is not None}

        stored = await db.transaction(read, what="read hg_toogo_config power settings")

    def pick(given: Decimal | None, key: str, default: Decimal) -> Decimal:
        if given is not None:
            return given
        if key in stored:
            try:
                return Decimal(stored[key].strip())
            except ArithmeticError:
                log.warning("bad hg_toogo_config value", group="power", key=key, using=str(default))
        return default

    return PowerRules(
        consume_rate=pick(consume_rate, "consume_rate", defaults.consume_rate),
        min_consume=pick(min_consume, "min_consume", defaults.min_consume),
        vip_discount=override.vip_discount,
    )


class PowerConsumer:
    """Charges orders exactly once. Safe under any concurrency, by construction."""

    def __init__(self, db: Database, rules: PowerRules) -> None:
        self.db = db
        self.rules = rules

    # -- one order (the realtime trigger, the history sync) -----------------------------------

    async def charge(self, order_id: int, source: Source) -> ChargeResult:
        """Charge one order, or report why not. Raises ``OrderNotFound``."""

        async def unit(conn: AsyncConnection) -> _Settlement:
            stmt = select(*_ORDER_COLUMNS).where(trading_order.c.id == order_id).with_for_update()
            rows = await _fetch_orders(conn, stmt)
            if not rows:
                raise OrderNotFound(order_id)
            return await self._settle(conn, rows, source)

        # A DuplicateKey means a writer that does not lock the order inserted the consume row
        # between our check and our INSERT: the transaction is rolled back and the next attempt
        # finds the row and takes the "already charged" path.
        for attempt in (1, 2, 3):
            try:
                settlement = await self._transaction(
                    unit, what="charge order", order_id=order_id, source=str(source)
                )
            except DuplicateKey:
                if attempt == 3:
                    raise
                log.info("consume row appeared concurrently", order_id=order_id, retry=True)
                continue
            settlement.log()
            return settlement.results[0]
        raise AssertionError("unreachable")  # pragma: no cover

    async def charge_many(self, order_ids: Sequence[int], source: Source) -> list[ChargeResult]:
        """Charge several known orders, a page per transaction (the history sync's new and
        closed orders). Waits for row locks like ``charge``; a page that fails as a whole is
        charged order by order. Orders that do not exist are left out of the results."""
        results: list[ChargeResult] = []
        ids = sorted(set(order_ids))
        for start in range(0, len(ids), PAGE):
            chunk = ids[start : start + PAGE]
            stmt = (
                select(*_ORDER_COLUMNS)
                .where(trading_order.c.id.in_(chunk))
                .order_by(trading_order.c.id)
                .with_for_update()
            )

            async def unit(conn: AsyncConnection, stmt: Select[Any] = stmt) -> _Settlement:
                return await self._settle(conn, await _fetch_orders(conn, stmt), source)

            try:
                settlement = await self._transaction(unit, what="charge orders", source=str(source))
            except DatabaseError:  # incl. DuplicateKey: a writer that does not lock orders
                for order_id in chunk:
                    try:
                        results.append(await self.charge(order_id, source))
                    except OrderNotFound:
                        continue
                continue
            settlement.log()
            results.extend(settlement.results)
        return results

    # -- a page of the sweep ------------------------------------------------------------------

    async def charge_page(
        self,
        *,
        after: tuple[datetime, int],
        limit: int,
        source: Source,
        seen: list[tuple[datetime, int]],
        partition: tuple[int, int] = (0, 1),
    ) -> list[ChargeResult]:
        """Lock and charge the next page of candidates after the keyset position ``after``.

        ``partition=(k, n)`` takes only orders with ``user_id % n == k``: concurrent workers of
        one sweep then never wait for each other's wallet locks.

        ``seen`` is filled with the page's (close_time, id) keys, in order, before any write, so
        the caller can advance its keyset and, if the page fails as a whole, charge them one by
        one. An empty ``seen`` means the sweep is done.
        """
        after_time, after_id = after
        o = trading_order.c
        eligible = eligible_sql(self.db.is_mysql)
        # 1. find the page with a plain read: scanning locks nothing, so it cannot make a
        #    concurrent worker (or hotgo) skip or wait for rows that are not ours
        scan = (
            select(o.id, o.close_time)
            .where(
                *eligible,
                # the keyset in this form gives a range on idx_reconcile_sweep (close_time, id);
                # "close_time >= t AND (close_time > t OR id > i)" made the optimizer scan
                # every unconsumed row from the start of (0, 2) on each page
                or_(
                    o.close_time > after_time,
                    and_(o.close_time == after_time, o.id > after_id),
                ),
                *((o.user_id % partition[1] == partition[0],) if partition[1] > 1 else ()),
            )
            .order_by(o.close_time, o.id)
            .limit(limit)
        )

        async def unit(conn: AsyncConnection) -> _Settlement:
            seen[:] = [(r.close_time, r.id) for r in await conn.execute(scan)]
            if not seen:
                return _Settlement()
            # 2. lock those rows by primary key alone and re-check them under the lock (in
            #    _settle); rows another transaction holds are skipped (the realtime path or
            #    another sweep has them). Only the key in the WHERE: with the eligibility
            #    columns the optimizer may lock its way along idx_power_consumed instead,
            #    momentarily locking other workers' rows, which SKIP LOCKED then passes over.
            lock = (
                select(*_ORDER_COLUMNS)
                .where(o.id.in_([oid for _, oid in seen]))
                .order_by(o.id)
                .with_for_update(skip_locked=self.db.skip_locked)
            )
            return await self._settle(conn, await _fetch_orders(conn, lock), source)

        settlement = await self._transaction(unit, what="charge sweep page", source=str(source))
        settlement.log()
        return settlement.results

    async def unconsumed(self, order_ids: list[int]) -> list[int]:
        """Those of ``order_ids`` still at power_consumed = 0 (a plain read, no locks)."""
        o = trading_order.c

        async def read(conn: AsyncConnection) -> list[int]:
            stmt = select(o.id).where(o.id.in_(order_ids), o.power_consumed == 0).order_by(o.id)
            return [r[0] for r in await conn.execute(stmt)]

        return await self.db.transaction(read, what="read unconsumed orders") if order_ids else []

    async def _transaction(
        self, unit: Callable[[AsyncConnection], Awaitable[_Settlement]], **how: Any
    ) -> _Settlement:
        """Run a charging unit; users without a wallet row get one (all zero) in a short
        transaction of its own first, and the unit runs again. Creating wallets inside the
        charging transaction, between locks taken in user-id order, let two chargers deadlock
        on the new rows' gap locks."""
        for _ in range(3):
            try:
                return await self.db.transaction(unit, **how)
            except _MissingWallets as missing:
                await self._create_wallets(missing.user_ids)
        return await self.db.transaction(unit, **how)

    async def _create_wallets(self, user_ids: list[int]) -> None:
        now = self.db.now()
        rows = [
            {"user_id": u, "power": Decimal(0), "gift_power": Decimal(0),
             "total_power_consume": Decimal(0), "created_at": now, "updated_at": now}
            for u in user_ids
        ]  # fmt: skip

        async def create(conn: AsyncConnection) -> None:
            if self.db.is_mysql:
                ins = mysql.insert(wallet)
                # a no-op on conflict: a concurrent creator won; no money column is touched
                await conn.execute(ins.on_duplicate_key_update(user_id=ins.inserted.user_id), rows)
            else:
                await conn.execute(sqlite.insert(wallet).on_conflict_do_nothing(), rows)

        await self.db.transaction(create, what="create wallets", users=len(user_ids))

    # -- the transaction body shared by both ---------------------------------------------------

    async def _settle(
        self, conn: AsyncConnection, orders: Sequence[_Order], source: Source
    ) -> _Settlement:
        out = _Settlement()
        now = self.db.now()
        eligible: list[_Order] = []
        for order in orders:
            reason = _ineligibility(order)
            if reason is None:
                eligible.append(order)
            else:
                out.results.append(ChargeResult(order.id, Outcome.NOT_ELIGIBLE, reason=reason))
        if not eligible:
            return out

        existing = await _existing_consumes(conn, eligible)
        discounts = await _discounts(conn, {o.user_id for o in eligible})
        to_charge: list[tuple[_Order, Charge]] = []
        flag: set[int] = set()  # orders to mark power_consumed = 1 from their consume row
        for order in eligible:
            charge = compute_charge(
                order.realized_profit or Decimal(0),
                self.rules,
                discounts.get(order.user_id, Discount()),
            )
            found = existing.get((order.user_id, order.id))
            if found is not None:
                out.results.append(self._duplicate(order, found, charge, source, out, flag))
            elif order.power_consumed:
                out.results.append(
                    ChargeResult(
                        order.id,
                        Outcome.NOT_ELIGIBLE,
                        reason="flagged power_consumed=1 but has no consume record (see audit)",
                    )
                )
            else:
                to_charge.append((order, charge))

        if to_charge:
            await self._debit(conn, to_charge, source, now, out)
            flag.update(o.id for o, _ in to_charge)
        if flag:
            # power_amount is copied from the order's consume row: the figure that was charged
            c = power_consume.c
            await conn.execute(
                trading_order.update()
                .where(trading_order.c.id.in_(sorted(flag)))
                .values(
                    power_consumed=1,
                    power_amount=select(c.consume_power)
                    .where(c.user_id == trading_order.c.user_id, c.order_id == trading_order.c.id)
                    .scalar_subquery(),
                    updated_at=now,
                )
            )
        return out

    def _duplicate(
        self,
        order: _Order,
        found: Decimal,
        charge: Charge,
        source: Source,
        out: _Settlement,
        flag: set[int],
    ) -> ChargeResult:
        repaired = order.power_consumed != 1 or order.power_amount != found
        if repaired:
            flag.add(order.id)
        conflict = found != charge.consume_power
        fields: dict[str, Any] = {
            "user_id": order.user_id,
            "order_id": order.id,
            "order_sn": order.order_sn,
            "consume_power": found,
            "source": str(source),
            "repaired_flag": repaired,
        }
        if conflict:
            fields.update(conflict=True, would_charge=charge.consume_power)
        out.events.append(("skip duplicate", fields))
        return ChargeResult(
            order.id, Outcome.SKIPPED_DUPLICATE, consume_power=found, conflict=conflict
        )

    async def _debit(
        self,
        conn: AsyncConnection,
        to_charge: list[tuple[_Order, Charge]],
        source: Source,
        now: datetime,
        out: _Settlement,
    ) -> None:
        bulk = BulkWriter(conn)
        await bulk.insert(
            power_consume,
            _CONSUME_COLUMNS,
            [
                (
                    o.user_id,
                    o.robot_id,
                    o.id,
                    o.order_sn,
                    c.profit,
                    c.consume_power,
                    c.consume_power,
                    c.vip_level,
                    c.discount_rate,
                    c.original_power,
                )
                for o, c in to_charge
            ],
            {"consume_rate": self.rules.consume_rate, "created_at": now},
        )
        per_user: dict[int, Decimal] = defaultdict(Decimal)
        for o, c in to_charge:
            per_user[o.user_id] += c.consume_power
        balances = await self._lock_wallets(conn, sorted(per_user))
        await self._apply_wallet_debits(conn, per_user, balances, now)

        ledger: list[tuple[Any, ...]] = []
        running = {uid: power for uid, (power, _total) in balances.items()}
        for o, c in to_charge:
            before = running[o.user_id]
            after = before - c.consume_power
            running[o.user_id] = after
            ledger.append((o.user_id, -c.consume_power, before, after, o.id, o.order_sn))
            out.results.append(ChargeResult(o.id, Outcome.CHARGED, consume_power=c.consume_power))
            out.events.append(
                (
                    "power consumed",
                    {
                        "user_id": o.user_id,
                        "robot_id": o.robot_id,
                        "order_id": o.id,
                        "order_sn": o.order_sn,
                        "profit": c.profit,
                        "consume_power": c.consume_power,
                        "before": before,
                        "after": after,
                        "source": str(source),
                    },
                )
            )
        await bulk.insert(
            wallet_log,
            _LEDGER_COLUMNS,
            ledger,
            {
                "account_type": "power",
                "change_type": "power_consume",
                "related_type": "trading_order",
                "remark": f"power consume ({source})",
                "created_at": now,
            },
        )

    async def _lock_wallets(
        self, conn: AsyncConnection, user_ids: list[int]
    ) -> dict[int, tuple[Decimal, Decimal]]:
        """Lock the users' wallet rows in user-id order; raise _MissingWallets if any is absent."""
        stmt = (
            select(wallet.c.user_id, wallet.c.power, wallet.c.total_power_consume)
            .where(wallet.c.user_id.in_(user_ids))
            .order_by(wallet.c.user_id)
            .with_for_update()
        )
        found = {r.user_id: (r.power, r.total_power_consume) for r in await conn.execute(stmt)}
        missing = [u for u in user_ids if u not in found]
        if missing:
            raise _MissingWallets(missing)
        return found

    async def _apply_wallet_debits(
        self,
        conn: AsyncConnection,
        per_user: dict[int, Decimal],
        balances: dict[int, tuple[Decimal, Decimal]],
        now: datetime,
    ) -> None:
        """Debit each wallet by its users' charges: ``power = power - x`` (MySQL)."""
        if self.db.is_mysql:
            await BulkWriter(conn).update_join_values(
                wallet,
                "user_id",
                per_user,
                {
                    "power": "t.power - d.v",
                    "total_power_consume": "t.total_power_consume + d.v",
                },
                {"updated_at": now},
            )
            return
        # SQLite keeps decimals as text, so the new figures are computed here, under the write
        # lock BEGIN IMMEDIATE took, instead of by SQL arithmetic (which would be float).
        cases = {
            "power": ("{}", {u: balances[u][0] - d for u, d in per_user.items()}),
            "total_power_consume": ("{}", {u: balances[u][1] + d for u, d in per_user.items()}),
        }
        await BulkWriter(conn).update_cases(wallet, "user_id", cases, {"updated_at": now})


def _ineligibility(order: _Order) -> str | None:
    return ineligibility(order.status, order.realized_profit, order.close_time)


async def _fetch_orders(conn: AsyncConnection, stmt: Select[Any]) -> list[_Order]:
    return [_Order(*row) for row in await conn.execute(stmt)]


async def _existing_consumes(
    conn: AsyncConnection, orders: Iterable[_Order]
) -> dict[tuple[int, int], Decimal]:
    """Consume rows already present for these (user_id, order_id) pairs; the newest wins.

    Looked up with a row-constructor IN on uk_user_order: one index point per order (an IN
    on each column would probe their cross product).
    """
    c = power_consume.c
    rows = await conn.execute(
        select(c.user_id, c.order_id, c.consume_power)
        .where(tuple_(c.user_id, c.order_id).in_([(o.user_id, o.id) for o in orders]))
        .order_by(c.id)
    )
    return {(r.user_id, r.order_id): r.consume_power for r in rows}


async def _discounts(conn: AsyncConnection, user_ids: set[int]) -> dict[int, Discount]:
    u = toogo_user.c
    rows = await conn.execute(
        select(u.member_id, u.vip_level, u.power_discount).where(u.member_id.in_(user_ids))
    )
    return {r.member_id: Discount(r.vip_level, r.power_discount) for r in rows}
