"""Bybit (v5, linear): ``GET /v5/position/closed-pnl``, paged with ``nextPageCursor``.

ccxt ``bybit``, implicit method ``privateGetV5PositionClosedPnl`` (the call ccxt's
``fetch_positions_history`` makes; cost 5). ccxt drops the cursor, so the adapter pages itself:
``startTime``/``endTime`` at most 7 days apart, ``limit`` ≤ 100, newest first, the next page with
``cursor`` = the previous ``nextPageCursor`` until it is empty.

Fields (strings): ``side`` is the *closing* order's side, inverted - ``Sell`` closes a long;
``closedSize`` base coin (contract size 1); ``avgEntryPrice`` / ``avgExitPrice`` (rounded
averages: prices only); gross is exact from ``cumExitValue − cumEntryValue`` (a long; the
reverse for a short). ``closedPnl`` is the exchange's net of the open and close fees, funding
excluded: it is the net. The fee is ``−(openFee + closeFee)`` (positive = paid) where the record
has them - then ``gross + fee`` against closedPnl is a cross-check - else ``closedPnl − gross``.
Funding is not in the endpoint: ``funding_known`` False, basis ``fees``. ``createdTime`` is the
close event; the open time is unknown. One record per closing order: the record key is that
``orderId`` (also its ``exchange_order_ids``).
See docs/exchanges.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from exchange_adapters.base import CcxtAdapter, Endpoint, Page
from exchange_adapters.budgets import BudgetOptions, Limits
from exchange_adapters.fields import (
    RecordUnusable,
    canonical_key,
    describe_body,
    field_decimal,
    field_ms,
    field_text,
    lenient_ms,
    ms_to_datetime,
    optional_decimal,
    positive_decimal,
)
from exchange_adapters.markets import MarketInfo
from exchange_adapters.positions import Context
from exchange_adapters.transport import PlatformSpec
from reconcile.errors import BadExchangeResponse
from reconcile.records import ClosedPosition, NetOf


def _contract_size(info: Mapping[str, Any]) -> Decimal:
    return Decimal(1)  # linear sizes are in the base coin


SPEC = PlatformSpec(
    platform="bybit",
    ccxt_id="bybit",
    default_options={"fetchMarkets": {"types": ["linear"]}},
    # 10000 server timeout, 10016 internal/system error, 10002 timestamp/recv_window (clock)
    temporary_codes=frozenset({"10000", "10016", "10002"}),
    contract_size=_contract_size,
    # per IP: 600 requests per 5 s; past it a 403 and a ban of at least 10 minutes
    # (bybit-exchange.github.io/docs/v5/rate-limit)
    futures_hosts=frozenset({"api.bybit.com", "api.bytick.com"}),
    domain="bybit.com",
    limits=Limits(
        egress=BudgetOptions(limit=600, window=5),
        bans={429: 5, 403: 600},
    ),
)


def validate_envelope(raw: Any, where: str) -> Page:
    """``{"retCode": 0, "retMsg": "OK", "result": {"list": [...], "nextPageCursor": ""}}``."""
    if isinstance(raw, dict) and str(raw.get("retCode")) == "0":
        result = raw.get("result")
        if isinstance(result, dict):
            rows = result.get("list")
            if isinstance(rows, list) and all(isinstance(item, dict) for item in rows):
                cursor = result.get("nextPageCursor")
                return Page(rows, str(cursor) if cursor not in (None, "") else None)
    raise BadExchangeResponse(f"{where}: answer is not bybit's JSON envelope: {describe_body(raw)}")


class BybitAdapter(CcxtAdapter[str | None]):
    """Cursor: the previous answer's ``nextPageCursor`` (None on the first page of a window);
    the window ends with an empty page or an empty cursor, not with a short page."""

    spec = SPEC
    endpoint = Endpoint("privateGetV5PositionClosedPnl", "closed-pnl", validate_envelope)
    max_page_size = 100
    max_window = timedelta(days=7)

    def first_cursor(self, start_ms: int, end_ms: int) -> str | None:
        return None

    def params(
        self, market: MarketInfo, start_ms: int, end_ms: int, cursor: str | None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "category": "linear",
            "symbol": market.id,
            "startTime": start_ms,
            "endTime": end_ms - 1,
            "limit": self.page_size,
        }
        return params if cursor is None else {**params, "cursor": cursor}

    def last_page(self, page: Page) -> bool:
        return not page.rows or page.token is None

    def next_cursor(self, market: MarketInfo, cursor: str | None, page: Page) -> str:
        return self.next_token(cursor, page, "nextPageCursor")

    @staticmethod
    def identity(context: Context, raw: dict[str, Any]) -> str:
        order_id = raw.get("orderId")
        if isinstance(order_id, str) and order_id.strip():
            return order_id.strip()
        return canonical_key(raw)

    @staticmethod
    def close_time_of(raw: dict[str, Any]) -> datetime | None:
        ms = lenient_ms(raw, "createdTime")
        return None if ms is None else ms_to_datetime(ms)

    @staticmethod
    def normalize(context: Context, raw: dict[str, Any]) -> ClosedPosition:
        return normalize(context, raw)


def normalize(context: Context, record: dict[str, Any]) -> ClosedPosition:
    market = context.market
    where = context.where("closed-pnl")
    if record.get("symbol") not in (None, market.id):
        raise RecordUnusable(f"{where}: record of {record.get('symbol')!r}")
    side = field_text(record, "side", where)
    if side not in ("Buy", "Sell"):
        raise RecordUnusable(f"{where}: unknown side {side!r}")
    direction = "long" if side == "Sell" else "short"  # the closing order's side
    order_id = field_text(record, "orderId", where)
    size = positive_decimal(record, "closedSize", where) * market.contract_size
    entry_value = positive_decimal(record, "cumEntryValue", where)
    exit_value = positive_decimal(record, "cumExitValue", where)
    gross = exit_value - entry_value if direction == "long" else entry_value - exit_value
    closed_pnl = field_decimal(record, "closedPnl", where)
    open_fee = optional_decimal(record, "openFee", where)
    close_fee = optional_decimal(record, "closeFee", where)
    if (open_fee is None) != (close_fee is None):
        raise RecordUnusable(f"{where}: only one of 'openFee' / 'closeFee' is given")
    fee = closed_pnl - gross if open_fee is None or close_fee is None else -(open_fee + close_fee)
    return context.position(
        direction=direction,
        size=size,
        open_price=positive_decimal(record, "avgEntryPrice", where),
        close_price=positive_decimal(record, "avgExitPrice", where),
        gross=gross,
        fee=fee,
        funding=Decimal(0),
        net=closed_pnl,
        open_time=None,
        close_time=ms_to_datetime(field_ms(record, "createdTime", where)),
        record_key=order_id,
        raw=record,
        profit_basis=NetOf.FEES,
        funding_known=False,
        exchange_order_ids=(order_id,),
    )
