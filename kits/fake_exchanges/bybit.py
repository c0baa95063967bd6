"""Fake Bybit v5: ``/v5/market/instruments-info`` and ``/v5/position/closed-pnl``.

Wire format per Bybit v5: ``{"retCode": 0, "retMsg": "OK", "result": {...}, "retExtInfo": {},
"time": ...}``, numbers as strings; business errors come with HTTP 200 and a non-zero retCode;
closed-pnl newest first, ``limit`` ≤ 100, an opaque ``nextPageCursor`` ("" on the last page),
startTime/endTime at most 7 days apart. Requests are authenticated like Bybit:
``X-BAPI-API-KEY``, ``X-BAPI-TIMESTAMP``, ``X-BAPI-RECV-WINDOW`` and ``X-BAPI-SIGN`` = hex
HMAC-SHA256 of timestamp + key + recv window + query string.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from decimal import Decimal
from typing import Any

from aiohttp import web

from kits.fake_exchanges.server import (
    DEFAULT_MARKETS,
    FakeExchange,
    MarketSpec,
    _Route,
    query_int,
)

SERVER_TIME = 1_780_000_000_000
SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000


def closed(
    *,
    order_id: str,
    side: str,
    entry: str,
    exit_: str,
    size: str,
    closed_pnl: str,
    created: int,
    open_fee: str | None = None,
    close_fee: str | None = None,
    symbol: str = "BTCUSDT",
) -> dict[str, Any]:
    """One closed-pnl record exactly as Bybit serves it (``side`` = the closing order's)."""
    record: dict[str, Any] = {
        "symbol": symbol,
        "orderType": "Market",
        "leverage": "10",
        "updatedTime": str(created + 6),
        "side": side,
        "orderId": order_id,
        "closedPnl": closed_pnl,
        "avgEntryPrice": entry,
        "qty": size,
        "cumEntryValue": format(Decimal(entry) * Decimal(size), "f"),
        "createdTime": str(created),
        "orderPrice": exit_,
        "closedSize": size,
        "avgExitPrice": exit_,
        "execType": "Trade",
        "fillCount": "1",
        "cumExitValue": format(Decimal(exit_) * Decimal(size), "f"),
    }
    if open_fee is not None:
        record["openFee"] = open_fee
    if close_fee is not None:
        record["closeFee"] = close_fee
    return record


def _instrument(spec: MarketSpec) -> dict[str, Any]:
    return {
        "symbol": f"{spec.base}USDT",
        "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": spec.base,
        "quoteCoin": "USDT",
        "launchTime": "1584230400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": "2",
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {"minPrice": "0.10", "maxPrice": "1999999.80", "tickSize": "0.10"},
        "lotSizeFilter": {
            "maxOrderQty": "1190.000",
            "minOrderQty": "0.001",
            "qtyStep": "0.001",
            "postOnlyMaxOrderQty": "1190.000",
            "maxMktOrderQty": "500.000",
            "minNotionalValue": "5",
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settleCoin": "USDT",
        "copyTrading": "both",
        "upperFundingRate": "0.00375",
        "lowerFundingRate": "-0.00375",
        "isPreListing": False,
        "preListingInfo": None,
        "displayName": "",
    }


def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"page:{index}".encode()).decode()


def _index(cursor: str) -> int:
    """Our own cursors; a foreign one (a canned answer's, e.g. the docs example's) ends paging."""
    try:
        return int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":")[1])
    except (ValueError, IndexError, UnicodeDecodeError):
        return 10**9


class FakeBybit(FakeExchange):
    platform = "bybit"

    def __init__(self, *, markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS, **kw: Any) -> None:
        super().__init__(**kw)
        self.markets = markets

    def routes(self) -> list[_Route]:
        return [
            self.route(
                "GET", "/v5/market/instruments-info", "markets", self._instruments, private=False
            ),
            self.route("GET", "/v5/position/closed-pnl", "closed", self._closed_pnl, private=True),
        ]

    def _envelope(self, result: Any, code: int = 0, msg: str = "OK") -> dict[str, Any]:
        return {
            "retCode": code,
            "retMsg": msg,
            "result": result,
            "retExtInfo": {},
            "time": SERVER_TIME,
        }

    def error_body(self, code: str) -> dict[str, Any]:
        messages = {
            "10002": "invalid request, please check your server timestamp or recv_window param",
            "10003": "API key is invalid.",
            "10004": "error sign!",
            "10016": "Internal server error.",
            "10001": "params error: symbol invalid",
        }
        return self._envelope({}, int(code), messages.get(code, "error"))

    def rate_limit_body(self) -> dict[str, Any]:
        return self._envelope({}, 10006, "Too many visits. Exceeded the API Rate Limit.")

    def not_envelope_body(self) -> Any:
        return {"retCode": 0, "retMsg": "OK", "result": None}

    def auth_error(self) -> web.Response:
        return web.json_response(self.error_body("10003"))

    def authenticate(self, request: web.Request) -> web.Response | None:
        headers = request.headers
        if headers.get("X-BAPI-API-KEY") != self.api_key:
            return self.auth_error()
        timestamp = headers.get("X-BAPI-TIMESTAMP", "")
        recv = headers.get("X-BAPI-RECV-WINDOW", "")
        query = request.rel_url.raw_query_string  # as sent: ccxt signs its raw query string
        prehash = timestamp + self.api_key + recv + query
        expected = hmac.new(self.secret.encode(), prehash.encode(), hashlib.sha256).hexdigest()
        if not timestamp or not hmac.compare_digest(headers.get("X-BAPI-SIGN", ""), expected):
            return web.json_response(self.error_body("10004"))
        return None

    async def _instruments(self, request: web.Request) -> web.Response:
        listed = (
            request.query.get("category") == "linear"
            and request.query.get("status") != "PreLaunch"
            and not request.query.get("cursor")
        )
        rows = [_instrument(m) for m in self.markets] if listed else []
        return web.json_response(
            self._envelope({"category": "linear", "list": rows, "nextPageCursor": ""})
        )

    async def _closed_pnl(self, request: web.Request) -> web.Response:
        if request.query.get("category") != "linear":
            return web.json_response(self._envelope({}, 10001, "category is invalid"))
        symbol = request.query.get("symbol")
        if symbol and symbol not in {f"{m.base}USDT" for m in self.markets}:
            return web.json_response(self.error_body("10001"))
        end = query_int(request, "endTime")
        start = query_int(request, "startTime")
        if start is not None and end is not None and end - start > SEVEN_DAYS_MS:
            return web.json_response(
                self._envelope(
                    {}, 10001, "The time range between startTime and endTime cannot exceed 7 days."
                )
            )
        if end is None:
            end = SERVER_TIME if start is None else start + SEVEN_DAYS_MS
        if start is None:
            start = end - SEVEN_DAYS_MS
        limit = min(query_int(request, "limit", 50) or 50, 100)
        rows = [
            r
            for r in self.records
            if (not symbol or r["symbol"] == symbol) and start <= int(r["createdTime"]) <= end
        ]
        rows.sort(key=lambda r: (int(r["createdTime"]), r["orderId"]), reverse=True)
        cursor = request.query.get("cursor")
        index = _index(cursor) if cursor else 0
        chunk = self.page(rows, index, limit)
        begin = max(0, index - self.page_overlap) if index > 0 else 0
        following = begin + len(chunk)
        next_cursor = _cursor(following) if following < len(rows) else ""
        return web.json_response(
            self._envelope({"category": "linear", "list": chunk, "nextPageCursor": next_cursor})
        )
