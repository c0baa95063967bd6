"""Bybit (v5, linear): ``GET /v5/position/closed-pnl``, paged with ``nextPageCursor``.

ccxt ``bybit``, implicit method ``privateGetV5PositionClosedPnl`` (the call ccxt's
``fetch_positions_history`` makes; cost 5). ccxt drops the cursor, so the adapter pages itself:
``startTime``/``endTime`` at most 7 days apart, ``limit`` ≤ 100, newest first, the next page with
``cursor`` = the previous ``nextPageCursor`` until it is empty.

Fields (strings): ``side`` is the *closing* order's side, inverted - ``Sell`` closes a long;
``closedSize`` base coin (contract size 1); ``avgEntryPrice`` / ``avgExitPrice``;
``closedPnl`` is net of the open and close fees (``openFee``/``closeFee``, positive = paid) and
excludes funding, so gross = closedPnl + openFee + closeFee. Records without the fee fields
derive gross from the prices ((exit − entry) × size for a long) and fee as closedPnl − gross.
``createdTime`` is the close event; the open time is unknown. The record key is the closing
``orderId``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

from exchange_adapters.base import (
    CcxtAdapter,
    describe_body,
    field_decimal,
    field_ms,
    field_text,
    ms_to_datetime,
    optional_decimal,
    windows,
)
from exchange_adapters.clients import MarketInfo, PlatformSpec
from reconcile.errors import BadExchangeResponse
from reconcile.records import ClosedPosition


def _contract_size(info: Mapping[str, Any]) -> Decimal:
    return Decimal(1)  # linear sizes are in the base coin


SPEC = PlatformSpec(
    platform="bybit",
    ccxt_id="bybit",
    default_options={"fetchMarkets": {"types": ["linear"]}},
    # 10000 server timeout, 10016 internal/system error, 10002 timestamp/recv_window (clock)
    temporary_codes=frozenset({"10000", "10016", "10002"}),
    contract_size=_contract_size,
)


def validate_envelope(raw: Any, where: str) -> tuple[list[dict[str, Any]], str | None]:
    """``{"retCode": 0, "retMsg": "OK", "result": {"list": [...], "nextPageCursor": ""}}``."""
    if isinstance(raw, dict) and str(raw.get("retCode")) == "0":
        result = raw.get("result")
        if isinstance(result, dict):
            rows = result.get("list")
            if isinstance(rows, list) and all(isinstance(item, dict) for item in rows):
                cursor = result.get("nextPageCursor")
                return rows, (str(cursor) if cursor not in (None, "") else None)
    raise BadExchangeResponse(
        f"{where}: answer is not bybit's JSON envelope: {describe_body(raw)}"
    )


class BybitAdapter(CcxtAdapter):
    spec = SPEC
    max_page_size = 100
    max_window = timedelta(days=7)

    async def _collect(
        self, market: MarketInfo, since_ms: int, until_ms: int
    ) -> list[ClosedPosition]:
        limit = self.page_size
        positions: list[ClosedPosition] = []

        def parse(raw: Any, where: str) -> tuple[list[ClosedPosition], str | None]:
            rows, cursor = validate_envelope(raw, where)
            return [self._normalize(market, record) for record in rows], cursor

        for start, end in windows(since_ms, until_ms, self.max_window):
            cursor: str | None = None
            pages = 0
            while True:
                params: dict[str, Any] = {
                    "category": "linear",
                    "symbol": market.id,
                    "startTime": start,
                    "endTime": end - 1,
                    "limit": limit,
                }
                if cursor is not None:
                    params["cursor"] = cursor
                page, next_cursor = await self.client.request(
                    "privateGetV5PositionClosedPnl",
                    params,
                    parse,
                    what="closed-pnl",
                    symbol=market.symbol,
                )
                pages += 1
                positions.extend(page)
                if not page or next_cursor is None:
                    break
                if next_cursor == cursor:
                    raise BadExchangeResponse(
                        f"{self.where('closed-pnl')}: nextPageCursor did not advance"
                    )
                self._page_guard(pages, "closed-pnl")
                cursor = next_cursor
        return positions

    def _normalize(self, market: MarketInfo, record: dict[str, Any]) -> ClosedPosition:
        where = self.where("closed-pnl")
        if record.get("symbol") not in (None, market.id):
            raise BadExchangeResponse(f"{where}: record of {record.get('symbol')!r}")
        side = field_text(record, "side", where)
        if side not in ("Buy", "Sell"):
            raise BadExchangeResponse(f"{where}: unknown side {side!r}")
        direction = "long" if side == "Sell" else "short"  # the closing order's side
        size = field_decimal(record, "closedSize", where) * market.contract_size
        entry = field_decimal(record, "avgEntryPrice", where)
        exit_ = field_decimal(record, "avgExitPrice", where)
        closed_pnl = field_decimal(record, "closedPnl", where)
        open_fee = optional_decimal(record, "openFee", where)
        close_fee = optional_decimal(record, "closeFee", where)
        if open_fee is not None and close_fee is not None:
            fee = -(open_fee + close_fee)
            gross = closed_pnl - fee
        else:
            move = exit_ - entry if direction == "long" else entry - exit_
            gross = move * size
            fee = closed_pnl - gross
        return self._position(
            market,
            direction=direction,
            size=size,
            open_price=entry,
            close_price=exit_,
            gross=gross,
            fee=fee,
            funding=Decimal(0),
            open_time=None,
            close_time=ms_to_datetime(field_ms(record, "createdTime", where)),
            record_key=field_text(record, "orderId", where),
            raw=record,
        )
