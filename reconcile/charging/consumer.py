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
   the debit goes through ``reconcile.charging.ledger`` (wallets locked in user-id order, one
   ledger row per charge with before/after), and the order gets ``power_consumed = 1,
   power_amount = x`` (reconcile.charging.debits);
4. commit. The ``power consumed`` events are logged only after the commit succeeded.

This module picks the rows and runs the transactions; steps 2-3, the body every path shares,
are reconcile.charging.row_charger. ``power.mode`` (:class:`PowerMode`): ``shadow`` runs the
same units without a lock on hotgo's rows and records each would-be charge in the daemon's
shadow table instead of steps 2-3 (``reconcile.charging.shadow``); ``off`` charges nothing and reads
nothing.

A crash before commit leaves nothing; after commit everything is there. A lost connection during
COMMIT is resolved by re-running the same unit: step 2 then finds the row if the commit landed.
A negative power balance is allowed (hotgo's rule: a charge is never refused).

Retries are the database layer's (``Database.transaction``: temporary failures, missing wallet
rows, the duplicate key above). What is decided here is only this: a page the database refuses
for a permanent reason is charged again order by order, so one bad order never blocks the rest;
an order that still fails is reported in the result's ``failed``, for the next sweep.
The whole mechanism is explained in docs/charging.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import shadow
from reconcile.charging.lines import ONE_BY_ONE, AuditLines
from reconcile.charging.orders import ORDER_COLUMNS, eligible_sql, fetch_judged_orders, fetch_orders
from reconcile.charging.outcomes import (
    OFF_REASON,
    Batch,
    ChargeResult,
    Outcome,
    PowerMode,
    Source,
    SweepBatch,
    UnitOutcome,
)
from reconcile.charging.pricing import PowerRules
from reconcile.charging.row_charger import RowCharger
from reconcile.charging.trades import TradeJudge
from reconcile.charging.verdicts import settled_rows
from reconcile.errors import OrderNotFound, PermanentError, ReconcileError, describe
from reconcile.storage.db import Database
from reconcile.storage.schema import trading_order

log = structlog.get_logger("reconcile.consumer")

#: orders per transaction when charging known orders by id (``charge_many``); the sweep's
#: pages have their own size (``sweep.page_size``)
KNOWN_ORDERS_PER_TRANSACTION = 500


class PowerConsumer:
    """Charges orders exactly once. Safe under any concurrency, by construction."""

    def __init__(
        self,
        db: Database,
        rules: PowerRules,
        mode: PowerMode = PowerMode.CHARGE,
        judge: TradeJudge | None = None,
        lines: AuditLines = ONE_BY_ONE,
    ) -> None:
        self.db = db
        self.rules = rules
        self.mode = mode
        self.lines = lines  # where each transaction's audit lines go, after its COMMIT
        self.judge = judge or TradeJudge(db)
        self.row_charger = RowCharger(db, rules, mode, self.judge)

    @property
    def sweep_passes(self) -> tuple[int, ...]:
        """The ``power_consumed`` values a sweep reads, a keyset pass each: what is not charged
        yet; in shadow mode also what hotgo charged (reconcile.charging.shadow says why); off:
        none."""
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

        async def unit(conn: AsyncConnection) -> UnitOutcome:
            stmt = self._locking(select(*ORDER_COLUMNS).where(trading_order.c.id == order_id))
            rows = await fetch_orders(conn, stmt)
            if not rows:
                raise OrderNotFound(order_id)
            return await self.row_charger.charge_rows(conn, rows, source, waited=True)

        decided = await self._transaction(
            unit, what="charge order", order_id=order_id, source=str(source)
        )
        decided.log(self.lines)
        return decided.results[0]

    async def charge_many(self, order_ids: Sequence[int], source: Source) -> Batch:
        """Charge several known orders, a page per transaction (the history sync's new and
        closed orders, the sweep's revisits). Waits for row locks like ``charge``. Orders that
        do not exist are left out of the results."""
        out = Batch()
        ids = sorted(set(order_ids)) if self.mode is not PowerMode.OFF else []
        for start in range(0, len(ids), KNOWN_ORDERS_PER_TRANSACTION):
            chunk = ids[start : start + KNOWN_ORDERS_PER_TRANSACTION]
            stmt = self._locking(
                select(*ORDER_COLUMNS)
                .where(trading_order.c.id.in_(chunk))
                .order_by(trading_order.c.id)
            )

            async def unit(conn: AsyncConnection, stmt: Select[Any] = stmt) -> UnitOutcome:
                rows = await fetch_orders(conn, stmt)
                return await self.row_charger.charge_rows(conn, rows, source, waited=True)

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
    ) -> SweepBatch:
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
        page = SweepBatch()

        async def unit(conn: AsyncConnection) -> UnitOutcome:
            page.keys = [(r.close_time, r.id) for r in await conn.execute(scan)]
            if not page.keys:
                return UnitOutcome()
            # 2. lock those rows by primary key alone and re-check them under the lock (in
            #    charge_rows); rows another transaction holds are skipped (the realtime path or
            #    another sweep has them). Only the key in the WHERE: with the eligibility
            #    columns the optimizer may lock its way along idx_power_consumed instead,
            #    momentarily locking other workers' rows, which SKIP LOCKED then passes over.
            #    The same read carries the trade judge's columns: it reads no row again.
            lock = self._locking(
                select(*ORDER_COLUMNS, *await self.judge.page_columns(conn))
                .where(o.id.in_([oid for _, oid in page.keys]))
                .order_by(o.id),
                skip_locked=self.db.skip_locked,
            )
            orders, trade_rows = await fetch_judged_orders(conn, lock)
            return await self.row_charger.charge_rows(
                conn, orders, source, waited=False, trade_rows=trade_rows
            )

        await self._page_or_each(unit, page, source, page, what="charge sweep page")
        return page

    async def _page_or_each(
        self,
        unit: Callable[[AsyncConnection], Awaitable[UnitOutcome]],
        ids: Sequence[int] | SweepBatch,
        source: Source,
        out: Batch,
        *,
        what: str,
    ) -> None:
        """Run a page's unit; if the database refuses it for a permanent reason, charge the
        page's orders one by one (a temporary failure, retried whole already, propagates)."""
        try:
            decided = await self._transaction(unit, what=what, source=str(source))
        except PermanentError as exc:
            order_ids = [oid for _, oid in ids.keys] if isinstance(ids, SweepBatch) else list(ids)
            if not order_ids:  # the page could not even be read
                raise
            log.warning(
                "page failed; charging its orders one by one",
                orders=len(order_ids),
                source=str(source),
                error=describe(exc),
            )
            for order_id in order_ids:
                try:
                    out.results.append(await self.charge(order_id, source))
                except OrderNotFound:
                    continue
                except ReconcileError as one:
                    out.failed[order_id] = describe(one)
                    log.error(
                        "charge failed",
                        order_id=order_id,
                        source=str(source),
                        error=describe(one),
                        will_retry="next sweep",
                    )
            return
        decided.log(self.lines)
        out.results.extend(decided.results)

    async def unconsumed(self, order_ids: list[int]) -> list[int]:
        """Those of ``order_ids`` still at power_consumed = 0 (a plain read, no locks)."""
        o = trading_order.c

        async def read(conn: AsyncConnection) -> list[int]:
            stmt = select(o.id).where(o.id.in_(order_ids), o.power_consumed == 0).order_by(o.id)
            return [r[0] for r in await conn.execute(stmt)]

        return await self.db.transaction(read, what="read unconsumed orders") if order_ids else []

    async def _transaction(
        self, unit: Callable[[AsyncConnection], Awaitable[UnitOutcome]], **how: Any
    ) -> UnitOutcome:
        # retry_duplicate: a writer that does not lock the order inserted its consume row
        # between our check and our INSERT; the next attempt finds it ("already charged")
        return await self.db.transaction(
            unit, retry_duplicate="consume row appeared concurrently", **how
        )


__all__ = ["KNOWN_ORDERS_PER_TRANSACTION", "PowerConsumer"]
