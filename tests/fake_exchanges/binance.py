"""Fake Binance USDⓈ-M futures: ``/fapi/v1/exchangeInfo`` and ``/fapi/v1/userTrades``.

Wire format per Binance's "Account Trade List (USER_DATA)": a bare JSON array of fills, oldest
first; errors ``{"code": -XXXX, "msg": "..."}``. Requests are authenticated like Binance:
``X-MBX-APIKEY`` header and ``signature`` = hex HMAC-SHA256 of the rest of the query string.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.fake_exchanges.server import (
    DEFAULT_MARKETS,
    FakeExchange,
    MarketSpec,
    _Route,
    query_int,
)

SERVER_TIME = 1_780_000_000_000
SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000

_ids = itertools.count(900_000_001)


def fill(
    *,
    order_id: int,
    side: str,
    price: str,
    qty: str,
    realized_pnl: str,
    commission: str,
    time: int,
    symbol: str = "BTCUSDT",
    position_side: str = "BOTH",
    commission_asset: str = "USDT",
    fill_id: int | None = None,
    maker: bool = False,
) -> dict[str, Any]:
    """One fill exactly as userTrades serves it."""
    quote_qty = Decimal(price) * Decimal(qty)
    return {
        "symbol": symbol,
        "id": fill_id if fill_id is not None else next(_ids),
        "orderId": order_id,
        "side": side,
        "price": price,
        "qty": qty,
        "realizedPnl": realized_pnl,
        "quoteQty": format(quote_qty, "f"),
        "commission": commission,
        "commissionAsset": commission_asset,
        "time": time,
        "positionSide": position_side,
        "marginAsset": "USDT",
        "buyer": side == "BUY",
        "maker": maker,
    }


def _market(spec: MarketSpec) -> dict[str, Any]:
    symbol = f"{spec.base}USDT"
    return {
        "symbol": symbol,
        "pair": symbol,
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": spec.base,
        "quoteAsset": "USDT",
        "marginAsset": "USDT",
        "pricePrecision": 2,
        "quantityPrecision": 3,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": ["PoW"],
        "settlePlan": 0,
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "556.80", "maxPrice": "4529764",
             "tickSize": "0.10"},
            {"filterType": "LOT_SIZE", "stepSize": "0.001", "maxQty": "1000", "minQty": "0.001"},
            {"filterType": "MARKET_LOT_SIZE", "stepSize": "0.001", "maxQty": "120",
             "minQty": "0.001"},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": "100"},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
             "multiplierDecimal": "4"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT",
                       "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
    }  # fmt: skip


class FakeBinance(FakeExchange):
    platform = "binance"

    def __init__(self, *, markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS, **kw: Any) -> None:
        super().__init__(**kw)
        self.markets = markets

    def routes(self) -> list[_Route]:
        return [
            self.route("GET", "/fapi/v1/exchangeInfo", "markets", self._exchange_info,
                       private=False),
            self.route("GET", "/fapi/v1/userTrades", "closed", self._user_trades, private=True),
        ]  # fmt: skip

    # --- envelopes ------------------------------------------------------------------------------

    def error_body(self, code: str) -> dict[str, Any]:
        messages = {
            "-1000": "An unknown error occured while processing the request.",
            "-1001": "Internal error; unable to process your request. Please try again.",
            "-1021": "Timestamp for this request is outside of the recvWindow.",
            "-1121": "Invalid symbol.",
            "-2015": "Invalid API-key, IP, or permissions for action.",
        }
        return {"code": int(code), "msg": messages.get(code, "error")}

    def rate_limit_body(self) -> dict[str, Any]:
        return {
            "code": -1003,
            "msg": "Too many requests; current limit is 2400 requests per "
            "minute. Please use the websocket for live updates to avoid polling the API.",
        }

    def not_envelope_body(self) -> Any:
        return {"status": "ok", "trades": "see /fapi/v2/userTrades"}

    def auth_error(self) -> web.Response:
        return web.json_response(self.error_body("-2015"), status=401)

    def authenticate(self, request: web.Request) -> web.Response | None:
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            return self.auth_error()
        raw = request.query_string
        payload, sep, signature = raw.rpartition("&signature=")
        expected = hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        signed = sep and hmac.compare_digest(signature, expected)
        if not signed or "timestamp" not in request.query:
            return web.json_response(
                {"code": -1022, "msg": "Signature for this request is not valid."}, status=400
            )
        return None

    # --- handlers -------------------------------------------------------------------------------

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "timezone": "UTC",
            "serverTime": SERVER_TIME,
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": 2400},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            ],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": [_market(spec) for spec in self.markets],
        })  # fmt: skip

    async def _user_trades(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol")
        if not symbol:
            return web.json_response(
                {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, "
                 "or malformed."}, status=400)  # fmt: skip
        if symbol not in {f"{m.base}USDT" for m in self.markets}:
            return web.json_response(self.error_body("-1121"), status=400)
        start = query_int(request, "startTime")
        end = query_int(request, "endTime")
        limit = min(query_int(request, "limit", 500) or 500, 1000)
        if start is not None and end is not None and end - start > SEVEN_DAYS_MS:
            return web.json_response(
                {"code": -4166, "msg": "Search window is restricted to recent 7 days only."},
                status=400,
            )
        if start is None and end is None:
            end = SERVER_TIME
        if start is None:
            start = (end or SERVER_TIME) - SEVEN_DAYS_MS
        if end is None:
            end = start + SEVEN_DAYS_MS
        rows = sorted(
            (r for r in self.records if r["symbol"] == symbol and start <= r["time"] <= end),
            key=lambda r: (r["time"], r["id"]),
        )
        return web.json_response(self.page(rows, 0, limit))
