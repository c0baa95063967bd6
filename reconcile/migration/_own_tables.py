"""The daemon's own tables, created by ``add_unique_key``'s last step, and what an upgrade from
an earlier release fills into them in the same transaction: the bindings of the orders the first
release inserted or closed, and the exchange order ids of the records kept before
``toogo_reconcile_record_order`` existed. Idempotent: re-running inserts nothing twice. See
docs/cutover.md.
"""

from __future__ import annotations

import json
import time

import structlog
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.migration import _pg
from reconcile.migration._alter import DdlStep
from reconcile.migration._common import ORDERS
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    binding,
    create_own_schema,
    exchange_record,
    record_order_id,
    trading_api_config,
    trading_robot,
)

log = structlog.get_logger("reconcile.migration")

BACKFILL_PAGE = 1000  # records read per statement by _backfill_record_orders


# The first release linked a record to an order through hg_trading_order itself: orders it
# inserted carry order_sn = "SX" + sha256(platform:account:record key)[:40] with the record key
# in exchange_order_id, and orders it closed carry close_reason 'exchange_sync' with the record
# key in exchange_order_id where that was empty. Their bindings are back-filled, so an upgrade
# inserts and charges nothing twice. (Engine orders whose empty exchange_order_id it filled with
# a record key cannot be told apart here: the matching rules compare record keys with
# exchange_order_id for them - reconcile.sync.matching, rule b.)
BACKFILL_BINDINGS = f"""
INSERT INTO {binding.name}
    (platform, account_id, record_key, order_id, primary_order_id, kind, rule, created_at)
SELECT LOWER(TRIM(a.platform)), a.id, o.exchange_order_id, o.id, o.id, 'order', 'backfill', NOW()
FROM {ORDERS} o
JOIN {trading_robot.name} r ON r.id = o.robot_id
JOIN {trading_api_config.name} a ON a.id = r.api_config_id
WHERE o.exchange_order_id <> ''
  AND (o.order_sn = CONCAT('SX', LEFT(SHA2(CONCAT(LOWER(TRIM(a.platform)), ':', a.id, ':',
                                                o.exchange_order_id), 256), 40))
       OR o.close_reason = 'exchange_sync')
ON DUPLICATE KEY UPDATE {binding.name}.id = {binding.name}.id
"""  # noqa: S608 - table names only
PG_BACKFILL_BINDINGS = _pg.backfill_bindings_sql(
    binding.name, ORDERS, trading_robot.name, trading_api_config.name
)


async def create_own_tables(db: Database, sql: str) -> DdlStep:
    async def create(conn: AsyncConnection) -> tuple[int, int]:
        await create_own_schema(conn)
        backfill = PG_BACKFILL_BINDINGS if _pg.is_pg(conn) else BACKFILL_BINDINGS
        bindings = int((await conn.execute(text(backfill))).rowcount)
        return bindings, await _backfill_record_orders(db, conn)

    started = time.monotonic()
    backfilled, order_ids = await db.transaction(create, what="migrate create own tables")
    seconds = time.monotonic() - started
    log.info(
        "migrate step",
        step="own tables",
        status="done",
        seconds=round(seconds, 3),
        bindings_backfilled=backfilled,
        record_order_ids_backfilled=order_ids,
    )
    return DdlStep("own tables", sql, seconds=seconds, done=True)


async def _backfill_record_orders(db: Database, conn: AsyncConnection) -> int:
    """The exchange order ids of the records kept before toogo_reconcile_record_order existed
    (their normalized JSON has them), so rule exchange_record of reconcile.charging.trades sees the
    legs of trades synced before the upgrade. Idempotent: existing rows are left alone."""
    r = exchange_record.c
    insert = db.dialect.upsert(
        record_order_id, key=("platform", "account_id", "record_key", "exchange_order_id")
    )
    written, after = 0, 0
    while True:
        page = list(
            await conn.execute(
                select(r.id, r.platform, r.account_id, r.record_key, r.normalized_json)
                .where(r.id > after)
                .order_by(r.id)
                .limit(BACKFILL_PAGE)
            )
        )
        if not page:
            return written
        after = page[-1].id
        rows = [
            {
                "platform": p.platform,
                "account_id": p.account_id,
                "record_key": p.record_key,
                "exchange_order_id": str(ref)[:100],
            }
            for p in page
            for ref in sorted(set(json.loads(p.normalized_json).get("exchange_order_ids") or ()))
            if ref
        ]
        if rows:
            await conn.execute(insert, rows)
            written += len(rows)


__all__ = ["BACKFILL_BINDINGS", "PG_BACKFILL_BINDINGS", "create_own_tables"]
