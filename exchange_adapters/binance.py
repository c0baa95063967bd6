"""Binance USDⓈ-M futures: closing fills from ``GET /fapi/v1/userTrades`` grouped by order.

ccxt ``binanceusdm``, implicit method ``fapiPrivateGetUserTrades`` (the call ccxt's
``fetch_my_trades`` makes for a linear market; cost 5). Parameters: symbol, startTime, endTime
(inclusive, at most 7 days apart), limit ≤ 1000; fills come oldest first.

A fill closes (part of) a position when it realizes PnL (``realizedPnl`` ≠ 0), or, in hedge
mode, when it trades against its position side (SELL on LONG, BUY on SHORT) - such a close can
carry ``realizedPnl`` "0". The closing fills of one ``orderId`` make one closed position, keyed
by that orderId (also its ``exchange_order_ids``). Size is the sum of ``qty`` (base asset; the
contract size of USDⓈ-M markets is 1), the close price their volume-weighted price, gross the sum
of ``realizedPnl``. The payload has no entry price: it is derived as ``close − gross/size`` for
a long, ``close + gross/size`` for a short. ``commission`` is a cost whatever its sign; only
commissions in the settle asset are counted (BNB-paid fees stay in ``raw``). Funding is not in
fills: ``funding = 0`` with ``funding_known`` False, basis ``fees``. Direction: ``positionSide``
LONG/SHORT in hedge mode; in one-way mode (BOTH) a closing SELL closes a long.
See docs/exchanges.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog

from exchange_adapters.base import CcxtAdapter, Endpoint, Page
from exchange_adapters.budgets import BudgetOptions, Limits
from exchange_adapters.fields import (
    RecordUnusable,
    canonical_key,
    describe_body,
    div,
    field_decimal,
    field_ms,
    field_text,
    lenient_ms,
    ms_to_datetime,
    positive_decimal,
)
from exchange_adapters.markets import MarketInfo
from exchange_adapters.positions import Context
from exchange_adapters.transport import PlatformSpec
from reconcile.errors import BadExchangeResponse
from reconcile.records import ClosedPosition, NetOf

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
    # per IP: 2,400 request weight a minute, userTrades 5, exchangeInfo 1; every answer
    # reports the IP's use in X-MBX-USED-WEIGHT-1M; 429 past it, 418 (banned) for whoever
    # carries on (developers.binance.com, USDⓈ-M Futures "General Info", "Account Trade List")
    futures_hosts=frozenset({"fapi.binance.com"}),
    domain="binance.com",
    limits=Limits(
        egress=BudgetOptions(limit=2400, window=60),
        weights={"fapiPrivateGetUserTrades": 5, "fapiPublicGetExchangeInfo": 1},
        used_header="X-MBX-USED-WEIGHT-1M",
        bans={429: 60, 418: 120},
    ),
)


def validate_fills(raw: Any, where: str) -> Page:
    """userTrades answers a JSON array of fill objects (errors are ``{"code","msg"}``). The
    fills themselves are checked when they are normalized, not here."""
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise BadExchangeResponse(
            f"{where}: answer is not binance's JSON array of fills: {describe_body(raw)}"
        )
    return Page(raw)


def _text(fill: Mapping[str, Any], key: str) -> str:
    value = fill.get(key)
    return "" if value is None or isinstance(value, dict | list) else str(value).strip().upper()


def is_closing(fill: Mapping[str, Any]) -> bool:
    """Closing: realizes PnL, or trades against its hedge-mode side. A fill whose realizedPnl
    cannot be read counts as closing, so that its order is examined (and quarantined)."""
    side, position_side = _text(fill, "side"), _text(fill, "positionSide")
    if (position_side, side) in (("LONG", "SELL"), ("SHORT", "BUY")):
        return True
    try:
        return Decimal(str(fill.get("realizedPnl")).strip()) != 0
    except InvalidOperation:
        return True


def _fill_id(fill: Mapping[str, Any]) -> str:
    value = fill.get("id")
    if isinstance(value, int | str) and str(value).strip():
        return str(value)
    return canonical_key(fill)


class BinanceAdapter(CcxtAdapter[int]):
    """Cursor: ``startTime``, moved to the newest fill's time (fills at that millisecond come
    again and are de-duplicated by fill id)."""

    spec = SPEC
    endpoint = Endpoint("fapiPrivateGetUserTrades", "userTrades", validate_fills)
    max_page_size = 1000
    max_window = timedelta(days=7)

    def first_cursor(self, start_ms: int, end_ms: int) -> int:
        return start_ms

    def params(self, market: MarketInfo, start_ms: int, end_ms: int, cursor: int) -> dict[str, Any]:
        return {
            "symbol": market.id,
            "startTime": cursor,
            "endTime": end_ms - 1,
            "limit": self.page_size,
        }

    def next_cursor(self, market: MarketInfo, cursor: int, page: Page) -> int:
        newest = max([cursor, *(lenient_ms(fill, "time") or cursor for fill in page.rows)])
        if newest > cursor:
            return newest
        log.warning(
            "exchange page full of one millisecond",
            platform=self.platform,
            account_id=self.account_id,
            symbol=market.symbol,
            time_ms=cursor,
        )
        return cursor + 1

    def records_of(self, market: MarketInfo, raws: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One record per order: ``{"orderId": ..., "fills": [closing fills]}`` (fills that
        came on two pages counted once)."""
        fills = {_fill_id(fill): fill for fill in raws}
        orders: dict[str, list[dict[str, Any]]] = {}
        for fill in fills.values():
            if is_closing(fill):
                order = fill.get("orderId")
                key = str(order) if order not in (None, "") else canonical_key(fill)
                orders.setdefault(key, []).append(fill)
        return [{"orderId": key, "fills": rows} for key, rows in orders.items()]

    @staticmethod
    def identity(context: Context, raw: dict[str, Any]) -> str:
        return str(raw.get("orderId") or canonical_key(raw))

    @staticmethod
    def close_time_of(raw: dict[str, Any]) -> datetime | None:
        times = [lenient_ms(f, "time") for f in raw.get("fills") or [] if isinstance(f, dict)]
        known = [t for t in times if t is not None]
        return ms_to_datetime(max(known)) if known else None

    @staticmethod
    def normalize(context: Context, raw: dict[str, Any]) -> ClosedPosition:
        return normalize(context, raw)


def normalize(context: Context, raw: dict[str, Any]) -> ClosedPosition:
    """One order's closing fills (``{"orderId", "fills"}``) as a ClosedPosition."""
    market = context.market
    order_id = str(raw.get("orderId") or "")
    where = context.where(f"userTrades order {order_id}")
    rows = raw.get("fills")
    if not order_id or order_id.startswith("sha256:"):
        raise RecordUnusable(f"{where}: fill lacks 'orderId'")
    if not isinstance(rows, list) or not rows or not all(isinstance(f, dict) for f in rows):
        raise RecordUnusable(f"{where}: no fills")
    for f in rows:
        if str(f.get("symbol", market.id)) != market.id:
            raise RecordUnusable(f"{where}: fill of {f.get('symbol')!r}")
    rows = sorted(rows, key=lambda f: (field_ms(f, "time", where), field_text(f, "id", where)))
    qty = sum((positive_decimal(f, "qty", where) for f in rows), Decimal(0))
    notional = sum(
        (positive_decimal(f, "price", where) * field_decimal(f, "qty", where) for f in rows),
        Decimal(0),
    )
    gross = sum((field_decimal(f, "realizedPnl", where) for f in rows), Decimal(0))
    fee = Decimal(0)
    for f in rows:
        commission = field_decimal(f, "commission", where)
        asset = f.get("commissionAsset")
        if asset is None or str(asset).upper() == market.settle.upper():
            fee -= abs(commission)
    sides = {field_text(f, "side", where).upper() for f in rows}
    position_sides = {str(f.get("positionSide") or "BOTH").upper() for f in rows}
    if len(sides) != 1 or len(position_sides) != 1:
        raise RecordUnusable(f"{where}: fills of one order disagree on side")
    side, position_side = sides.pop(), position_sides.pop()
    if position_side in ("LONG", "SHORT"):
        direction = position_side.lower()
    elif position_side == "BOTH" and side in ("SELL", "BUY"):
        direction = "long" if side == "SELL" else "short"
    else:
        raise RecordUnusable(f"{where}: unknown side {side!r} / positionSide {position_side!r}")
    size = qty * market.contract_size
    close_price = div(notional, qty)
    per_unit = div(gross, size)
    open_price = close_price - per_unit if direction == "long" else close_price + per_unit
    return context.position(
        direction=direction,
        size=size,
        open_price=open_price,
        close_price=close_price,
        gross=gross,
        fee=fee,
        funding=Decimal(0),
        net=None,
        open_time=None,
        close_time=ms_to_datetime(field_ms(rows[-1], "time", where)),
        record_key=order_id,
        raw={"orderId": order_id, "fills": rows},
        profit_basis=NetOf.FEES,
        funding_known=False,
        exchange_order_ids=(order_id,),
    )
