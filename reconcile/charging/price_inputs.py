"""Where a charge's inputs are read from: the rates (configuration, else ``hg_toogo_config``
group ``power``, else 0.10 / 0.01) and each user's VIP discount (``hg_toogo_user``).

The rule that prices with them is reconcile.charging.pricing; both are explained in
docs/charging.md.
"""

from __future__ import annotations

from decimal import Decimal

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.pricing import Discount, PowerOverride, PowerRules
from reconcile.storage.db import Database
from reconcile.storage.schema import toogo_config, toogo_user

log = structlog.get_logger("reconcile.consumer")


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


async def discounts(conn: AsyncConnection, user_ids: set[int]) -> dict[int, Discount]:
    """The VIP level and discount of each of ``user_ids`` that has a ``hg_toogo_user`` row."""
    u = toogo_user.c
    rows = await conn.execute(
        select(u.member_id, u.vip_level, u.power_discount).where(u.member_id.in_(user_ids))
    )
    return {r.member_id: Discount(r.vip_level, r.power_discount) for r in rows}


__all__ = ["discounts", "load_power_rules"]
