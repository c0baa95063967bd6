"""Which streams the history sync still polls: a query over hotgo's robots and accounts that the
charging side (trades awaiting a sync), retention and status share. See docs/architecture.md."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from reconcile.storage.schema import stream_cursor, trading_api_config, trading_robot

# hg_trading_api_config.status as upstream's engine writes it
STATUS_NORMAL = 1
STATUS_DISABLED = 2


def polled(running_status: int) -> Any:
    """EXISTS, correlated to toogo_reconcile_cursor: the history sync still polls that stream
    (its own choice): a running robot, not deleted, on an enabled account, trades that symbol."""
    c, r, a = stream_cursor.c, trading_robot.c, trading_api_config.c
    return (
        select(r.id)
        .join_from(trading_robot, trading_api_config, a.id == r.api_config_id)
        .where(
            r.api_config_id == c.account_id,
            r.symbol == c.symbol,
            r.status == running_status,
            r.deleted_at.is_(None),
            a.status == STATUS_NORMAL,
            a.deleted_at.is_(None),
        )
        .exists()
    )
