"""Fake OKX: ``/api/v5/public/instruments`` and ``/api/v5/account/positions-history``.

Wire format per OKX v5: ``{"code": "0", "msg": "", "data": [...]}``, every number a string;
positions-history newest first by uTime, ``after`` (uTime <) / ``before`` (uTime >) cursors,
``limit`` ≤ 100. Requests are authenticated like OKX: ``OK-ACCESS-KEY``,
``OK-ACCESS-PASSPHRASE``, ``OK-ACCESS-TIMESTAMP`` and ``OK-ACCESS-SIGN`` = base64 HMAC-SHA256 of
timestamp + method + path with query.
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


def position(
    *,
    pos_id: str,
    direction: str,
    open_px: str,
    close_px: str,
    close_total_pos: str,
    pnl: str,
    fee: str,
    funding_fee: str,
    c_time: int,
    u_time: int,
    inst_id: str = "BTC-USDT-SWAP",
    pos_side: str = "net",
    liq_penalty: str = "0",
    close_type: str = "2",
) -> dict[str, Any]:
    """One positions-history record exactly as OKX serves it (realizedPnl = net)."""
    realized = Decimal(pnl) + Decimal(fee) + Decimal(funding_fee) + Decimal(liq_penalty)
    return {
        "cTime": str(c_time),
        "ccy": "USDT",
        "closeAvgPx": close_px,
        "closeTotalPos": close_total_pos,
        "direction": direction,
        "fee": fee,
        "fundingFee": funding_fee,
        "instId": inst_id,
        "instType": "SWAP",
        "lever": "10.0",
        "liqPenalty": liq_penalty,
        "mgnMode": "cross",
        "nonSettleAvgPx": "",
        "openAvgPx": open_px,
        "openMaxPos": close_total_pos,
        "pnl": pnl,
        "pnlRatio": "0.0123",
        "posId": pos_id,
        "posSide": pos_side,
        "realizedPnl": format(realized, "f"),
        "settledPnl": "",
        "triggerPx": "",
        "type": close_type,
        "uTime": str(u_time),
        "uly": inst_id.removesuffix("-SWAP"),
    }


def _instrument(spec: MarketSpec) -> dict[str, Any]:
    family = f"{spec.base}-USDT"
    return {
        "alias": "",
        "auctionEndTime": "",
        "baseCcy": "",
        "category": "1",
        "ctMult": "1",
        "ctType": "linear",
        "ctVal": spec.okx_ct_val,
        "ctValCcy": spec.base,
        "expTime": "",
        "instFamily": family,
        "instId": f"{family}-SWAP",
        "instType": "SWAP",
        "lever": "100",
        "listTime": "1573557408000",
        "lotSz": "0.01",
        "maxIcebergSz": "100000000",
        "maxLmtAmt": "20000000",
        "maxLmtSz": "100000000",
        "maxMktAmt": "",
        "maxMktSz": "12000",
        "maxStopSz": "12000",
        "maxTriggerSz": "100000000",
        "maxTwapSz": "100000000",
        "minSz": "0.01",
        "optType": "",
        "quoteCcy": "",
        "ruleType": "normal",
        "settleCcy": "USDT",
        "state": "live",
        "stk": "",
        "tickSz": "0.1",
        "uly": family,
    }


class FakeOkx(FakeExchange):
    platform = "okx"

    def __init__(self, *, markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS, **kw: Any) -> None:
        super().__init__(**kw)
        self.markets = markets

    def routes(self) -> list[_Route]:
        return [
            self.route(
                "GET", "/api/v5/public/instruments", "markets", self._instruments, private=False
            ),
            self.route(
                "GET", "/api/v5/account/positions-history", "closed", self._history, private=True
            ),
        ]

    def error_body(self, code: str) -> dict[str, Any]:
        messages = {
            "50001": "Service temporarily unavailable. Please try again later.",
            "50102": "Timestamp request expired.",
            "50111": "Invalid OK-ACCESS-KEY.",
            "50113": "Invalid Sign.",
            "51001": "Instrument ID does not exist.",
        }
        return {"code": code, "msg": messages.get(code, "error"), "data": []}

    def rate_limit_body(self) -> dict[str, Any]:
        return {"code": "50011", "msg": "Too Many Requests", "data": []}

    def not_envelope_body(self) -> Any:
        return {"status": "ok", "positions": []}

    def auth_error(self) -> web.Response:
        return web.json_response(self.error_body("50111"), status=401)

    def authenticate(self, request: web.Request) -> web.Response | None:
        headers = request.headers
        if headers.get("OK-ACCESS-KEY") != self.api_key:
            return self.auth_error()
        if headers.get("OK-ACCESS-PASSPHRASE") != self.passphrase:
            return web.json_response(
                {"code": "50105", "msg": "Invalid OK-ACCESS-PASSPHRASE.", "data": []}, status=401
            )
        timestamp = headers.get("OK-ACCESS-TIMESTAMP", "")
        prehash = timestamp + request.method + request.path_qs
        expected = base64.b64encode(
            hmac.new(self.secret.encode(), prehash.encode(), hashlib.sha256).digest()
        ).decode()
        if not timestamp or not hmac.compare_digest(headers.get("OK-ACCESS-SIGN", ""), expected):
            return web.json_response(self.error_body("50113"), status=401)
        return None

    async def _instruments(self, request: web.Request) -> web.Response:
        if request.query.get("instType") != "SWAP":
            return web.json_response({"code": "0", "msg": "", "data": []})
        return web.json_response(
            {"code": "0", "msg": "", "data": [_instrument(m) for m in self.markets]}
        )

    async def _history(self, request: web.Request) -> web.Response:
        inst_id = request.query.get("instId")
        if inst_id and inst_id not in {f"{m.base}-USDT-SWAP" for m in self.markets}:
            return web.json_response(self.error_body("51001"))
        after = query_int(request, "after")
        before = query_int(request, "before")
        limit = min(query_int(request, "limit", 100) or 100, 100)
        rows = [
            r
            for r in self.records
            if (not inst_id or r["instId"] == inst_id)
            and (after is None or int(r["uTime"]) < after)
            and (before is None or int(r["uTime"]) > before)
        ]
        rows.sort(key=lambda r: (int(r["uTime"]), r["posId"]), reverse=True)
        if before is not None and after is None:
            rows = rows[-limit:]  # "before" alone pages towards newer records
        return web.json_response({"code": "0", "msg": "", "data": self.page(rows, 0, limit)})
