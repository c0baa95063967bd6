"""Fake Bitget (classic account): ``/api/v2/mix/market/contracts`` and
``/api/v2/mix/position/history-position``.

Wire format per Bitget v2: ``{"code": "00000", "msg": "success", "requestTime": ..., "data":
...}``, numbers as strings; history-position ``data = {"list": [...], "endId": "..."}``, newest
first, paged with ``idLessThan`` = endId, ``limit`` ≤ 100. Requests are authenticated like
Bitget: ``ACCESS-KEY``, ``ACCESS-PASSPHRASE``, ``ACCESS-TIMESTAMP`` and ``ACCESS-SIGN`` = base64
HMAC-SHA256 of timestamp + method + path + "?" + the sorted, unencoded query.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from kits.fake_exchanges.server import (
    DEFAULT_MARKETS,
    FakeExchange,
    MarketSpec,
    _Route,
    query_int,
)

REQUEST_TIME = 1_780_000_000_000


def closed(
    *,
    position_id: str,
    hold_side: str,
    open_price: str,
    close_price: str,
    size: str,
    pnl: str,
    open_fee: str,
    close_fee: str,
    funding: str,
    ctime: int,
    utime: int,
    symbol: str = "BTCUSDT",
) -> dict[str, Any]:
    """One history-position record exactly as Bitget serves it (netProfit = net)."""
    net = Decimal(pnl) + Decimal(open_fee) + Decimal(close_fee) + Decimal(funding)
    return {
        "positionId": position_id,
        "marginCoin": "USDT",
        "symbol": symbol,
        "holdSide": hold_side,
        "openAvgPrice": open_price,
        "closeAvgPrice": close_price,
        "marginMode": "crossed",
        "openTotalPos": size,
        "closeTotalPos": size,
        "pnl": pnl,
        "netProfit": format(net, "f"),
        "totalFunding": funding,
        "openFee": open_fee,
        "closeFee": close_fee,
        "ctime": str(ctime),
        "utime": str(utime),
    }


def _contract(spec: MarketSpec) -> dict[str, Any]:
    return {
        "symbol": f"{spec.base}USDT",
        "baseCoin": spec.base,
        "quoteCoin": "USDT",
        "buyLimitPriceRatio": "0.9",
        "sellLimitPriceRatio": "0.9",
        "feeRateUpRatio": "0.1",
        "makerFeeRate": "0.0002",
        "takerFeeRate": "0.0006",
        "openCostUpRatio": "0.1",
        "supportMarginCoins": ["USDT"],
        "minTradeNum": "0.001",
        "priceEndStep": "1",
        "volumePlace": "3",
        "pricePlace": "1",
        "sizeMultiplier": "0.001",
        "symbolType": "perpetual",
        "minTradeUSDT": "5",
        "maxSymbolOrderNum": "200",
        "maxProductOrderNum": "400",
        "maxPositionNum": "150",
        "symbolStatus": "normal",
        "offTime": "-1",
        "limitOpenTime": "-1",
        "deliveryTime": "",
        "deliveryStartTime": "",
        "deliveryPeriod": "",
        "launchTime": "",
        "fundInterval": "8",
        "minLever": "1",
        "maxLever": "125",
        "posLimit": "0.05",
        "maintainTime": "",
    }


class FakeBitget(FakeExchange):
    platform = "bitget"

    def __init__(self, *, markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS, **kw: Any) -> None:
        super().__init__(**kw)
        self.markets = markets

    def routes(self) -> list[_Route]:
        return [
            self.route(
                "GET", "/api/v2/mix/market/contracts", "markets", self._contracts, private=False
            ),
            self.route(
                "GET",
                "/api/v2/mix/position/history-position",
                "closed",
                self._history,
                private=True,
            ),
        ]

    def _envelope(self, data: Any, code: str = "00000", msg: str = "success") -> dict[str, Any]:
        return {"code": code, "msg": msg, "requestTime": REQUEST_TIME, "data": data}

    def error_body(self, code: str) -> dict[str, Any]:
        messages = {
            "40008": "Request timestamp expired",
            "40009": "sign signature error",
            "40015": "System error",
            "40034": "Parameter symbol does not exist",
            "40037": "Apikey does not exist",
        }
        return self._envelope(None, code, messages.get(code, "error"))

    def rate_limit_body(self) -> dict[str, Any]:
        return self._envelope(None, "429", "Too Many Requests")

    def not_envelope_body(self) -> Any:
        return {"code": "00000", "msg": "success", "data": "maintenance"}

    def auth_error(self) -> web.Response:
        return web.json_response(self.error_body("40037"), status=400)

    def authenticate(self, request: web.Request) -> web.Response | None:
        headers = request.headers
        if headers.get("ACCESS-KEY") != self.api_key:
            return self.auth_error()
        if headers.get("ACCESS-PASSPHRASE") != self.passphrase:
            return web.json_response(
                self._envelope(None, "40012", "apikey/password is incorrect"), status=400
            )
        timestamp = headers.get("ACCESS-TIMESTAMP", "")
        query = "&".join(sorted(unquote(request.query_string).split("&")))
        prehash = timestamp + request.method + request.path + ("?" + query if query else "")
        expected = base64.b64encode(
            hmac.new(self.secret.encode(), prehash.encode(), hashlib.sha256).digest()
        ).decode()
        if not timestamp or not hmac.compare_digest(headers.get("ACCESS-SIGN", ""), expected):
            return web.json_response(self.error_body("40009"), status=400)
        return None

    async def _contracts(self, request: web.Request) -> web.Response:
        if request.query.get("productType") != "USDT-FUTURES":
            return web.json_response(self._envelope([]))
        return web.json_response(self._envelope([_contract(m) for m in self.markets]))

    async def _history(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol")
        if symbol and symbol not in {f"{m.base}USDT" for m in self.markets}:
            return web.json_response(self.error_body("40034"), status=400)
        start = query_int(request, "startTime")
        end = query_int(request, "endTime")
        limit = min(query_int(request, "limit", 20) or 20, 100)
        cursor = request.query.get("idLessThan")
        rows = [
            r
            for r in self.records
            if (not symbol or r["symbol"] == symbol)
            and (start is None or int(r["utime"]) >= start)
            and (end is None or int(r["utime"]) <= end)
        ]
        rows.sort(key=lambda r: (int(r["utime"]), r["positionId"]), reverse=True)
        index = 0
        if cursor:
            ids = [r["positionId"] for r in rows]
            index = ids.index(cursor) + 1 if cursor in ids else len(rows)
        chunk = self.page(rows, index, limit)
        end_id = chunk[-1]["positionId"] if chunk else None
        if self.shuffle_pages and chunk:
            ordered = rows[max(0, index - self.page_overlap) :][: len(chunk)]
            end_id = ordered[-1]["positionId"]
        return web.json_response(self._envelope({"list": chunk, "endId": end_id}))
