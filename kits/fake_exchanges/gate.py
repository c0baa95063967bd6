"""Fake Gate: ``/api/v4/futures/{settle}/contracts`` and ``.../position_close``.

Wire format per Gate APIv4: bare JSON arrays; errors ``{"label": "...", "message": "..."}``;
position_close newest first, ``from``/``to`` in seconds, ``offset``/``limit`` paging. Requests
are authenticated like Gate: ``KEY``, ``Timestamp`` and ``SIGN`` = hex HMAC-SHA512 of
"METHOD\\npath\\nquery\\nsha512(body)\\ntimestamp".
"""

from __future__ import annotations

import hashlib
import hmac
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


def closed(
    *,
    side: str,
    long_price: str,
    short_price: str,
    accum_size: str,
    pnl_pnl: str,
    pnl_fee: str,
    pnl_fund: str,
    first_open_time: int,
    time: int,
    contract: str = "BTC_USDT",
) -> dict[str, Any]:
    """One position_close record exactly as Gate serves it (pnl = net)."""
    from decimal import Decimal

    pnl = Decimal(pnl_pnl) + Decimal(pnl_fee) + Decimal(pnl_fund)
    return {
        "time": time,
        "contract": contract,
        "side": side,
        "pnl": format(pnl, "f"),
        "pnl_pnl": pnl_pnl,
        "pnl_fund": pnl_fund,
        "pnl_fee": pnl_fee,
        "text": "web",
        "max_size": accum_size,
        "accum_size": accum_size,
        "first_open_time": first_open_time,
        "long_price": long_price,
        "short_price": short_price,
    }


def _contract(spec: MarketSpec) -> dict[str, Any]:
    return {
        "name": f"{spec.base}_USDT",
        "type": "direct",
        "quanto_multiplier": spec.gate_multiplier,
        "ref_discount_rate": "0",
        "order_price_deviate": "0.5",
        "maintenance_rate": "0.005",
        "mark_type": "index",
        "last_price": spec.price,
        "mark_price": spec.price,
        "index_price": spec.price,
        "funding_rate_indicative": "0.0001",
        "mark_price_round": "0.01",
        "funding_offset": 0,
        "in_delisting": False,
        "risk_limit_base": "1000000",
        "interest_rate": "0.0003",
        "order_price_round": "0.1",
        "order_size_min": 1,
        "ref_rebate_rate": "0.2",
        "funding_interval": 28800,
        "risk_limit_step": "1000000",
        "leverage_min": "1",
        "leverage_max": "100",
        "risk_limit_max": "8000000",
        "maker_fee_rate": "-0.00025",
        "taker_fee_rate": "0.00075",
        "funding_rate": "0.0001",
        "order_size_max": 1000000,
        "funding_next_apply": 1780000000,
        "short_users": 1,
        "config_change_time": 1700000000,
        "trade_size": 1000,
        "position_size": 10,
        "long_users": 1,
        "funding_impact_value": "60000",
        "orders_limit": 50,
        "trade_id": 10851092,
        "orderbook_id": 2129638396,
        "enable_bonus": True,
        "enable_credit": True,
        "create_time": 1669688556,
        "funding_cap_ratio": "0.75",
        "status": "trading",
        "launch_time": 1669688556,
        "enable_decimal": False,
    }


class FakeGate(FakeExchange):
    platform = "gate"

    def __init__(self, *, markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS, **kw: Any) -> None:
        super().__init__(**kw)
        self.markets = markets

    def routes(self) -> list[_Route]:
        return [
            self.route(
                "GET",
                "/api/v4/futures/{settle}/contracts",
                "markets",
                self._contracts,
                private=False,
            ),
            self.route(
                "GET",
                "/api/v4/futures/{settle}/position_close",
                "closed",
                self._closed,
                private=True,
            ),
        ]

    def error_body(self, code: str) -> dict[str, Any]:
        messages = {
            "INVALID_KEY": "Invalid key provided",
            "REQUEST_EXPIRED": "Request timestamp expired",
            "SERVER_ERROR": "Internal server error",
            "CONTRACT_NOT_FOUND": "Contract not found",
        }
        return {"label": code, "message": messages.get(code, "error")}

    def rate_limit_body(self) -> dict[str, Any]:
        return {"label": "TOO_MANY_REQUESTS", "message": "Request Rate limit Exceeded"}

    def not_envelope_body(self) -> Any:
        return {"result": "true", "data": []}

    def auth_error(self) -> web.Response:
        return web.json_response(self.error_body("INVALID_KEY"), status=401)

    def authenticate(self, request: web.Request) -> web.Response | None:
        headers = request.headers
        if headers.get("KEY") != self.api_key:
            return self.auth_error()
        timestamp = headers.get("Timestamp", "")
        body_hash = hashlib.sha512(b"").hexdigest()
        payload = "\n".join(
            [request.method, request.path, unquote(request.query_string), body_hash, timestamp]
        )
        expected = hmac.new(self.secret.encode(), payload.encode(), hashlib.sha512).hexdigest()
        if not timestamp or not hmac.compare_digest(headers.get("SIGN", ""), expected):
            return web.json_response(
                {"label": "INVALID_SIGNATURE", "message": "Signature mismatch"}, status=401
            )
        return None

    async def _contracts(self, request: web.Request) -> web.Response:
        if request.match_info["settle"] != "usdt":
            return web.json_response([])
        return web.json_response([_contract(m) for m in self.markets])

    async def _closed(self, request: web.Request) -> web.Response:
        if request.match_info["settle"] != "usdt":
            return web.json_response(self.error_body("INVALID_PARAM_VALUE"), status=400)
        contract = request.query.get("contract")
        if contract and contract not in {f"{m.base}_USDT" for m in self.markets}:
            return web.json_response(self.error_body("CONTRACT_NOT_FOUND"), status=400)
        start = query_int(request, "from")
        end = query_int(request, "to")
        limit = min(query_int(request, "limit", 100) or 100, 1000)
        offset = query_int(request, "offset", 0) or 0
        rows = [
            r
            for r in self.records
            if (not contract or r["contract"] == contract)
            and (start is None or r["time"] >= start)
            and (end is None or r["time"] <= end)
        ]
        rows.sort(key=lambda r: (r["time"], r["first_open_time"]), reverse=True)
        return web.json_response(self.page(rows, offset, limit))
