"""Where an order is charged: the idempotent power consumer.

One transaction per unit of work (one order, or one page of the sweep):

1. the order rows are locked (``FOR UPDATE``; the sweep adds ``SKIP LOCKED`` so sweepers share);
2. an existing consume row for (user_id, order_id), read in the locking statement, means
   "already charged": the order's flag and power_amount are repaired from it if needed and
   ``skip duplicate`` is logged (and recorded in ``toogo_reconcile_skip``, in this transaction)
   - never a second debit, even when the amount it holds differs from today's
   (``conflict=true``);
3. otherwise the consume row is INSERTed (plain INSERT: ``uk_user_order`` decides a race with a
   writer that does not lock the order; the transaction is then run again and takes step 2),
   the debit goes through ``reconcile.ledger`` (wallets locked in user-id order, one ledger row
   per charge with before/after), and the order gets ``power_consumed = 1, power_amount = x``.
   On a server with INSERT ... SELECT ... RETURNING (MariaDB >= 10.5, PostgreSQL) the server
   does the page's writes set-based: the consume rows are selected from the locked orders and
   priced in SQL (``pricing.charge_sql``, the same rule), the ledger rows' before/after come back
   from their INSERT; the client sends ids and logs the figures stored. Elsewhere (SQLite,
   MySQL 8) the client prices and sends multi-row INSERTs (``reconcile.bulk``);
4. commit. The ``power consumed`` events are logged only after the commit succeeded.

``power.mode`` (:class:`PowerMode`): ``shadow`` runs the same units without a lock on hotgo's
rows and records each would-be charge in the daemon's shadow table instead of steps 2-3
(``reconcile.shadow``); ``off`` charges nothing and reads nothing.

A crash before commit leaves nothing; after commit everything is there. A lost connection during
COMMIT is resolved by re-running the same unit: step 2 then finds the row if the commit landed.
A negative power balance is allowed (hotgo's rule: a charge is never refused).

Retries are the database layer's (``Database.transaction``: temporary failures, missing wallet
rows, the duplicate key above). What is decided here is only this: a page the database refuses
for a permanent reason is charged again order by order, so one bad order never blocks the rest;
an order that still fails is reported in the result's ``failed``, for the next sweep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import Select, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import ledger, lines, shadow
from reconcile.charging.orders import ORDER_COLUMNS, OrderRow, eligible_sql, fetch_orders
from reconcile.charging.pricing import (
    Charge,
    Discount,
    PowerOverride,
    PowerRules,
    charge_sql,
    compute_charge,
)
from reconcile.charging.trades import TradeJudge, Verdict, settled_rows
from reconcile.errors import OrderNotFound, PermanentError, ReconcileError
from reconcile.storage.bulk import BulkWriter
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    power_consume,
    skipped_duplicate,
    toogo_config,
    toogo_user,
    trading_order,
)

log = structlog.get_logger("reconcile.consumer")

PAGE = 500  # orders per transaction when charging known orders in bulk


class Source(StrEnum):
    REALTIME = "realtime"
    SWEEP = "sweep"
    HISTORY = "history"
    OPERATOR = "operator"  # `held charge`: an operator's decision on a held row


class PowerMode(StrEnum):
    """``power.mode``: the daemon charges; records what it would charge while hotgo's engine
    charges (the cutover's evidence, see reconcile.shadow); or reconciles orders only."""

    CHARGE = "charge"
    SHADOW = "shadow"
    OFF = "off"


class Outcome(StrEnum):
    CHARGED = "charged"
    SKIPPED_DUPLICATE = "skipped_duplicate"
    NOT_ELIGIBLE = "not_eligible"
    WOULD_CHARGE = "would_charge"  # shadow mode: recorded in the shadow table
    LEG = "leg"  # a closing leg of another row's trade (reconcile.trades): never charged
    HELD = "held"  # possibly a leg, or awaiting the exchange sync: not charged yet


OFF_REASON = "charging is off (power.mode: off)"


@dataclass(frozen=True)
class ChargeResult:
    order_id: int
    outcome: Outcome
    consume_power: Decimal | None = None
    reason: str | None = None
    conflict: bool = False


@dataclass
class Batch:
    """What charging some orders gave: a result per order found, and the orders that could not
    be charged (order id -> error; each logged as ``charge failed``, left for the next sweep)."""

    results: list[ChargeResult] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


@dataclass
class Page(Batch):
    """A sweep page: also the page's candidates' (close_time, id) keys in keyset order, read
    before any write - the next page starts after the last; none means the sweep is done."""

    keys: list[tuple[datetime, int]] = field(default_factory=list)


@dataclass
class _Settlement:
    """What one transaction decided; its events are logged after COMMIT."""

    results: list[ChargeResult] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    skips: list[dict[str, Any]] = field(default_factory=list)  # toogo_reconcile_skip rows

    def log(self) -> None:
        lines.write(log, self.events)


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

    def __init__(
        self,
        db: Database,
        rules: PowerRules,
        mode: PowerMode = PowerMode.CHARGE,
        judge: TradeJudge | None = None,
    ) -> None:
        self.db = db
        self.rules = rules
        self.mode = mode
        self.judge = judge or TradeJudge(db)

    @property
    def sweep_passes(self) -> tuple[int, ...]:
        """The ``power_consumed`` values a sweep reads, a keyset pass each: what is not charged
        yet; in shadow mode also what hotgo charged (reconcile.shadow says why); off: none."""
        return {PowerMode.CHARGE: (0,), PowerMode.SHADOW: (0, 1), PowerMode.OFF: ()}[self.mode]

    def _locking(self, stmt: Select[Any], *, skip_locked: bool = False) -> Select[Any]:
        """``FOR UPDATE`` when charging; shadow mode reads hotgo's rows without a lock."""
        if self.mode is not PowerMode.CHARGE:
            return stmt
        return stmt.with_for_update(skip_locked=skip_locked)

    # -- one order (the realtime trigger, the history sync) -----------------------------------

    async def charge(self, order_id: int, source: Source) -> ChargeResult:
        """Charge one order, or report why not. Raises ``OrderNotFound``."""
        if self.mode is PowerMode.OFF:
            return ChargeResult(order_id, Outcome.NOT_ELIGIBLE, reason=OFF_REASON)

        async def unit(conn: AsyncConnection) -> _Settlement:
            stmt = self._locking(select(*ORDER_COLUMNS).where(trading_order.c.id == order_id))
            rows = await fetch_orders(conn, stmt)
            if not rows:
                raise OrderNotFound(order_id)
            return await self._settle(conn, rows, source, waited=True)

        settlement = await self._transaction(
            unit, what="charge order", order_id=order_id, source=str(source)
        )
        settlement.log()
        return settlement.results[0]

    async def charge_many(self, order_ids: Sequence[int], source: Source) -> Batch:
        """Charge several known orders, a page per transaction (the history sync's new and
        closed orders, the sweep's revisits). Waits for row locks like ``charge``. Orders that
        do not exist are left out of the results."""
        out = Batch()
        ids = sorted(set(order_ids)) if self.mode is not PowerMode.OFF else []
        for start in range(0, len(ids), PAGE):
            chunk = ids[start : start + PAGE]
            stmt = self._locking(
                select(*ORDER_COLUMNS)
                .where(trading_order.c.id.in_(chunk))
                .order_by(trading_order.c.id)
            )

            async def unit(conn: AsyncConnection, stmt: Select[Any] = stmt) -> _Settlement:
                rows = await fetch_orders(conn, stmt)
                return await self._settle(conn, rows, source, waited=True)

            await self._page_or_each(unit, chunk, source, out, what="charge orders")
        return out

    # -- a page of the sweep ------------------------------------------------------------------

    async def charge_page(
        self,
        *,
        after: tuple[datetime, int],
        limit: int,
        source: Source,
        partition: tuple[int, int] = (0, 1),
        power_consumed: int = 0,
    ) -> Page:
        """Lock and charge the next page of candidates after the keyset position ``after``.

        ``partition=(k, n)`` takes only orders with ``user_id % n == k``: concurrent workers of
        one sweep then never wait for each other's wallet locks. ``power_consumed``: the pass
        (see ``sweep_passes``); in shadow mode orders with a shadow row are left out.
        """
        after_time, after_id = after
        o = trading_order.c
        # 1. find the page with a plain read: scanning locks nothing, so it cannot make a
        #    concurrent worker (or hotgo) skip or wait for rows that are not ours
        scan = (
            select(o.id, o.close_time)
            .where(
                *eligible_sql(self.db.dialect, power_consumed=power_consumed),
                # a range on idx_reconcile_sweep (..., close_time[, id]) on every database
                self.db.dialect.after((o.close_time, o.id), (after_time, after_id)),
                *(
                    (self.db.dialect.bucket(o.user_id, partition[1], partition[0]),)
                    if partition[1] > 1
                    else ()
                ),
            )
            .order_by(o.close_time, o.id)
            .limit(limit)
        )
        if self.mode is PowerMode.SHADOW:
            scan = shadow.unrecorded(scan)
        scan = scan.where(~settled_rows(o.id))  # legs and dismissed rows: never charged
        page = Page()

        async def unit(conn: AsyncConnection) -> _Settlement:
            page.keys = [(r.close_time, r.id) for r in await conn.execute(scan)]
            if not page.keys:
                return _Settlement()
            # 2. lock those rows by primary key alone and re-check them under the lock (in
            #    _settle); rows another transaction holds are skipped (the realtime path or
            #    another sweep has them). Only the key in the WHERE: with the eligibility
            #    columns the optimizer may lock its way along idx_power_consumed instead,
            #    momentarily locking other workers' rows, which SKIP LOCKED then passes over.
            lock = self._locking(
                select(*ORDER_COLUMNS)
                .where(o.id.in_([oid for _, oid in page.keys]))
                .order_by(o.id),
                skip_locked=self.db.skip_locked,
            )
            return await self._settle(conn, await fetch_orders(conn, lock), source, waited=False)

        await self._page_or_each(unit, page, source, page, what="charge sweep page")
        return page

    async def _page_or_each(
        self,
        unit: Callable[[AsyncConnection], Awaitable[_Settlement]],
        ids: Sequence[int] | Page,
        source: Source,
        out: Batch,
        *,
        what: str,
    ) -> None:
        """Run a page's unit; if the database refuses it for a permanent reason, charge the
        page's orders one by one (a temporary failure, retried whole already, propagates)."""
        try:
            settlement = await self._transaction(unit, what=what, source=str(source))
        except PermanentError as exc:
            order_ids = [oid for _, oid in ids.keys] if isinstance(ids, Page) else list(ids)
            if not order_ids:  # the page could not even be read
                raise
            log.warning(
                "page failed; charging its orders one by one",
                orders=len(order_ids),
                source=str(source),
                error=_err(exc),
            )
            for order_id in order_ids:
                try:
                    out.results.append(await self.charge(order_id, source))
                except OrderNotFound:
                    continue
                except ReconcileError as one:
                    out.failed[order_id] = _err(one)
                    log.error(
                        "charge failed",
                        order_id=order_id,
                        source=str(source),
                        error=_err(one),
                        will_retry="next sweep",
                    )
            return
        settlement.log()
        out.results.extend(settlement.results)

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
        # retry_duplicate: a writer that does not lock the order inserted its consume row
        # between our check and our INSERT; the next attempt finds it ("already charged")
        return await self.db.transaction(
            unit, retry_duplicate="consume row appeared concurrently", **how
        )

    # -- the transaction body shared by both ---------------------------------------------------

    async def _settle(
        self, conn: AsyncConnection, orders: Sequence[OrderRow], source: Source, *, waited: bool
    ) -> _Settlement:
        """``orders``: locked rows, with ``charged`` as the locking statement read it. That
        statement's snapshot may predate the lock (PostgreSQL rechecks a row changed under it
        but keeps the snapshot for the subquery): after waiting for locks (``waited``) it is
        read again, fresh; with SKIP LOCKED only where the row says charged and the snapshot
        knew no consume row. A consume row missed otherwise meets ``uk_user_order`` (or
        ``post_consumes``' count) and the unit runs again."""
        out = _Settlement()
        now = self.db.now()
        eligible: list[OrderRow] = []
        for order in orders:
            reason = order.ineligibility()
            if reason is None:
                eligible.append(order)
            else:
                out.results.append(ChargeResult(order.id, Outcome.NOT_ELIGIBLE, reason=reason))
        if not eligible:
            return out
        if self.mode is PowerMode.SHADOW:
            trades = await self._trades_only(conn, eligible, out)
            if trades:
                await self._shadow(conn, trades, source, now, out)
            return out

        stale = (
            eligible if waited else [o for o in eligible if o.power_consumed and o.charged is None]
        )
        if stale:
            fresh = await _existing_consumes(conn, stale)
            recheck = {o.id for o in stale}
            eligible = [
                o._replace(charged=fresh.get((o.user_id, o.id))) if o.id in recheck else o
                for o in eligible
            ]
        # the server prices a page itself when it can (see _debit_in_sql): discounts are then
        # read here only for orders already charged, to tell a conflicting amount
        in_sql = self.db.returning
        priced = [o for o in eligible if not in_sql or o.charged is not None]
        discounts = await _discounts(conn, {o.user_id for o in priced}) if priced else {}
        to_charge: list[OrderRow] = []
        flag: set[int] = set()  # orders to mark power_consumed = 1 from their consume row
        for order in eligible:
            found = order.charged
            if found is not None:
                charge = self._price(order, discounts)
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
                to_charge.append(order)

        to_charge = await self._trades_only(conn, to_charge, out)
        if to_charge:
            if in_sql:
                await self._debit_in_sql(conn, to_charge, source, now, out)
            else:
                charges = [(o, self._price(o, discounts)) for o in to_charge]
                await self._debit(conn, charges, source, now, out)
            flag.update(o.id for o in to_charge)
        if flag:
            await self._flag(conn, sorted(flag), now)
        if out.skips:  # in the same transaction as the decision: report's skipped duplicates
            await conn.execute(
                skipped_duplicate.insert(), [{**row, "created_at": now} for row in out.skips]
            )
        return out

    async def _trades_only(
        self, conn: AsyncConnection, orders: list[OrderRow], out: _Settlement
    ) -> list[OrderRow]:
        """Those of ``orders`` that are trades; a leg or a held row gets its result here
        (reconcile.trades decides; a leg found now is recorded in this transaction)."""
        if not orders:
            return orders
        judged = await self.judge.judge(conn, [o.id for o in orders])
        trades: list[OrderRow] = []
        for order in orders:
            judgement = judged.get(order.id)
            if judgement is None or judgement.charge:
                trades.append(order)
                continue
            outcome = {Verdict.LEG: Outcome.LEG, Verdict.HELD: Outcome.HELD}.get(
                judgement.verdict, Outcome.NOT_ELIGIBLE
            )
            out.results.append(ChargeResult(order.id, outcome, reason=judgement.reason))
            if judgement.new:
                out.events.append(
                    (
                        "leg recognized",
                        {
                            "order_id": order.id,
                            "user_id": order.user_id,
                            "order_sn": order.order_sn,
                            "trade_order_id": judgement.trade_order_id,
                            "rule": str(judgement.rule),
                            "profit": order.realized_profit,
                        },
                    )
                )
        return trades

    async def _shadow(
        self,
        conn: AsyncConnection,
        orders: list[OrderRow],
        source: Source,
        now: datetime,
        out: _Settlement,
    ) -> None:
        """Shadow mode: the would-be charges recorded once each, priced by the same rule;
        whatever hotgo itself charged or flagged is neither read nor touched."""
        discounts = await _discounts(conn, {o.user_id for o in orders})
        priced = [(o, self._price(o, discounts)) for o in orders]
        for would in await shadow.record(conn, priced, source=str(source), now=now):
            out.events.append(would.event(str(source)))
            duplicate = would.recorded is not None
            out.results.append(
                ChargeResult(
                    would.order.id,
                    Outcome.SKIPPED_DUPLICATE if duplicate else Outcome.WOULD_CHARGE,
                    consume_power=would.recorded if duplicate else would.charge.consume_power,
                    conflict=would.conflict,
                )
            )

    async def _flag(self, conn: AsyncConnection, order_ids: list[int], now: datetime) -> None:
        """``power_consumed = 1`` and ``power_amount`` copied from the order's consume row (the
        figure that was charged)."""
        c = power_consume.c
        await conn.execute(
            trading_order.update()
            .where(trading_order.c.id.in_(order_ids))
            .values(
                power_consumed=1,
                power_amount=select(c.consume_power)
                .where(c.user_id == trading_order.c.user_id, c.order_id == trading_order.c.id)
                .scalar_subquery(),
                updated_at=now,
            )
        )

    def _price(self, order: OrderRow, discounts: dict[int, Discount]) -> Charge:
        return compute_charge(
            order.realized_profit or Decimal(0),
            self.rules,
            discounts.get(order.user_id, Discount()),
        )

    def _duplicate(
        self,
        order: OrderRow,
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
        out.skips.append(
            {"user_id": order.user_id, "order_id": order.id, "source": str(source),
             "consume_power": found, "would_charge": charge.consume_power if conflict else None,
             "repaired_flag": int(repaired)}
        )  # fmt: skip
        return ChargeResult(
            order.id, Outcome.SKIPPED_DUPLICATE, consume_power=found, conflict=conflict
        )

    async def _debit(
        self,
        conn: AsyncConnection,
        to_charge: list[tuple[OrderRow, Charge]],
        source: Source,
        now: datetime,
        out: _Settlement,
    ) -> None:
        await BulkWriter(conn).insert(
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
        balances = await ledger.lock(self.db, conn, [o.user_id for o, _ in to_charge])
        posted, _ = await ledger.post(
            conn,
            [ledger.Entry(o.user_id, o.id, o.order_sn, -c.consume_power) for o, c in to_charge],
            balances,
            change_type=ledger.CONSUME,
            now=now,
            remark=f"power consume ({source})",
        )
        for (o, c), p in zip(to_charge, posted, strict=True):
            self._charged(o, c.profit, c.consume_power, p.before, p.after, source, out)

    async def _debit_in_sql(
        self,
        conn: AsyncConnection,
        to_charge: list[OrderRow],
        source: Source,
        now: datetime,
        out: _Settlement,
    ) -> None:
        """``_debit`` done by the server (``Database.returning``): the consume rows are
        ``INSERT ... SELECT``ed from the locked order rows and the users' VIP rows, priced by
        ``pricing.charge_sql`` (the rule of ``compute_charge``, as SQL); the ledger rows and
        their before/after come back from ``ledger.post_consumes``. The figures logged are
        the ones stored. Per page, the client sends order ids, never a figure."""
        ids = ", ".join(str(int(o.id)) for o in to_charge)
        sql = charge_sql(self.rules, "o.realized_profit", "u.power_discount")
        rate = format(self.rules.consume_rate, "f")
        mark = "$1" if conn.dialect.name == "postgresql" else "%s"
        await conn.exec_driver_sql(
            f"INSERT INTO {power_consume.name} ({', '.join(_CONSUME_COLUMNS)}, consume_rate, "  # noqa: S608
            "created_at) "
            f"SELECT o.user_id, o.robot_id, o.id, o.order_sn, o.realized_profit, "
            f"{sql.consume_power}, {sql.consume_power}, COALESCE(u.vip_level, 1), "
            f"{sql.discount_rate}, {sql.original_power}, {rate}, {mark} "
            f"FROM {trading_order.name} o "
            f"LEFT JOIN {toogo_user.name} u ON u.member_id = o.user_id "
            f"WHERE o.id IN ({ids}) ORDER BY o.id",
            (now,),
        )
        await ledger.lock_rows(self.db, conn, [o.user_id for o in to_charge])
        posted = await ledger.post_consumes(
            conn, [o.id for o in to_charge], now=now, remark=f"power consume ({source})"
        )
        for o in to_charge:
            p = posted[o.id]
            self._charged(o, o.realized_profit, -p.amount, p.before, p.after, source, out)

    def _charged(
        self,
        o: OrderRow,
        profit: Decimal | None,
        consume_power: Decimal,
        before: Decimal,
        after: Decimal,
        source: Source,
        out: _Settlement,
    ) -> None:
        out.results.append(ChargeResult(o.id, Outcome.CHARGED, consume_power=consume_power))
        out.events.append(
            (
                "power consumed",
                {
                    "user_id": o.user_id,
                    "robot_id": o.robot_id,
                    "order_id": o.id,
                    "order_sn": o.order_sn,
                    "profit": profit,
                    "consume_power": consume_power,
                    "before": before,
                    "after": after,
                    "source": str(source),
                },
            )
        )


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _existing_consumes(
    conn: AsyncConnection, orders: Sequence[OrderRow]
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
