"""Binance USDⓈ-M futures: closing fills from ``GET /fapi/v1/userTrades`` grouped by order.

ccxt ``binanceusdm``, implicit method ``fapiPrivateGetUserTrades`` (the call ccxt's
``fetch_my_trades`` makes for a linear market; cost 5). Parameters: symbol, startTime, endTime
(inclusive, at most 7 days apart), limit ≤ 1000; fills come oldest first.

A closing fill has a non-zero ``realizedPnl`` (gross); the closing fills of one ``orderId`` make
one closed position, keyed by that orderId. Size is the sum of ``qty`` (base asset; the contract
size of USDⓈ-M markets is 1), the close price their volume-weighted price. The payload has no
entry price: it is derived as ``close − gross/size`` for a long, ``close + gross/size`` for a
short. ``commission`` is a cost whatever its sign; only commissions in the settle asset are
counted (BNB-paid fees stay in ``raw``). Funding is not in fills: ``funding = 0``. Direction:
``positionSide`` LONG/SHORT in hedge mode; in one-way mode (BOTH) a closing SELL closes a long.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

import structlog

from exchange_adapters.base import (
    CcxtAdapter,
    describe_body,
    div,
    field_decimal,
    field_ms,
    field_text,
    ms_to_datetime,
    windows,
)
from exchange_adapters.clients import MarketInfo, PlatformSpec
from reconcile.errors import BadExchangeResponse
from reconcile.records import ClosedPosition

log = structlog.get_logger("exchange_adapters")


def _contract_size(info: Mapping[str, Any]) -> Decimal:
    value = info.get("contractSize")
    return Decimal(str(value)) if value not in (None, "") else Decimal(1)


SPEC = PlatformSpec(
    platform="binance",
    ccxt_id="binanceusdm",
    default_options={"fetchMarkets": {"types": ["linear"]}, "fetchCurrencies": False},
    # -1000 unknown error, -1001 internal error / disconnected, -1007 backend timeout,
    # -1021 timestamp outside recvWindow (clock skew), -1008 server overloaded
    temporary_codes=frozenset({"-1000", "-1001", "-1007", "-1008", "-1021"}),
    contract_size=_contract_size,
)


def validate_fills(raw: Any, where: str) -> list[dict[str, Any]]:
    """userTrades answers a JSON array of fill objects (errors are ``{"code","msg"}``); every
    field the grouping reads must be there and parse."""
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise BadExchangeResponse(
            f"{where}: answer is not binance's JSON array of fills: {describe_body(raw)}"
        )
    for fill in raw:
        field_text(fill, "id", where)
        field_text(fill, "orderId", where)
        field_text(fill, "side", where)
        field_ms(fill, "time", where)
        for key in ("price", "qty", "realizedPnl", "commission"):
            field_decimal(fill, key, where)
    return raw


class BinanceAdapter(CcxtAdapter):
    spec = SPEC
    max_page_size = 1000
    max_window = timedelta(days=7)

    async def _collect(
        self, market: MarketInfo, since_ms: int, until_ms: int
    ) -> list[ClosedPosition]:
        fills: dict[str, dict[str, Any]] = {}
        limit = self.page_size
        for start, end in windows(since_ms, until_ms, self.max_window):
            cursor, pages = start, 0
            while True:
                params = {
                    "symbol": market.id,
                    "startTime": cursor,
                    "endTime": end - 1,
                    "limit": limit,
                }
                page = await self.client.request(
                    "fapiPrivateGetUserTrades",
                    params,
                    validate_fills,
                    what="userTrades",
                    symbol=market.symbol,
                )
                pages += 1
                where = self.where("userTrades")
                newest = cursor
                for fill in page:
                    fills[field_text(fill, "id", where)] = fill
                    newest = max(newest, field_ms(fill, "time", where))
                if len(page) < limit:
                    break
                self._page_guard(pages, "userTrades")
                if newest > cursor:
                    cursor = newest  # fills at `newest` come again; de-duplicated by id
                else:
                    log.warning(
                        "exchange page full of one millisecond",
                        platform=self.platform,
                        account_id=self.account_id,
                        symbol=market.symbol,
                        time_ms=cursor,
                    )
                    cursor += 1
        return self._group(market, fills.values())

    def _group(self, market: MarketInfo, fills: Iterable[dict[str, Any]]) -> list[ClosedPosition]:
        where = self.where("userTrades")
        orders: dict[str, list[dict[str, Any]]] = {}
        for fill in fills:
            if field_decimal(fill, "realizedPnl", where) != 0:
                orders.setdefault(field_text(fill, "orderId", where), []).append(fill)
        return [self._position_of(market, order_id, rows) for order_id, rows in orders.items()]

    def _position_of(
        self, market: MarketInfo, order_id: str, rows: list[dict[str, Any]]
    ) -> ClosedPosition:
        where = self.where(f"userTrades order {order_id}")
        rows.sort(key=lambda f: (field_ms(f, "time", where), field_text(f, "id", where)))
        qty = sum((field_decimal(f, "qty", where) for f in rows), Decimal(0))
        if qty <= 0:
            raise BadExchangeResponse(f"{where}: closing fills have no quantity")
        notional = sum(
            (field_decimal(f, "price", where) * field_decimal(f, "qty", where) for f in rows),
            Decimal(0),
        )
        gross = sum((field_decimal(f, "realizedPnl", where) for f in rows), Decimal(0))
        fee = Decimal(0)
        for f in rows:
            commission = field_decimal(f, "commission", where)
            if str(f.get("commissionAsset", market.settle)).upper() == market.settle.upper():
                fee -= abs(commission)
        side = field_text(rows[0], "side", where).upper()
        position_side = str(rows[0].get("positionSide") or "BOTH").upper()
        if position_side in ("LONG", "SHORT"):
            direction = position_side.lower()
        elif side in ("SELL", "BUY"):
            direction = "long" if side == "SELL" else "short"
        else:
            raise BadExchangeResponse(f"{where}: unknown side {side!r}")
        size = qty * market.contract_size
        close_price = div(notional, qty)
        per_unit = div(gross, size)
        open_price = close_price - per_unit if direction == "long" else close_price + per_unit
        return self._position(
            market,
            direction=direction,
            size=size,
            open_price=open_price,
            close_price=close_price,
            gross=gross,
            fee=fee,
            funding=Decimal(0),
            open_time=None,
            close_time=ms_to_datetime(field_ms(rows[-1], "time", where)),
            record_key=order_id,
            raw={"orderId": order_id, "fills": rows},
        )
