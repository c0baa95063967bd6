"""Bitget (classic account): ``GET /api/v2/mix/position/history-position``, paged by ``endId``.

ccxt ``bitget`` with ``options={'uta': False}``, implicit method
``privateMixGetV2MixPositionHistoryPosition`` (the call ccxt's ``fetch_positions_history`` makes;
cost 1). ccxt drops the cursor, so the adapter pages itself: ``startTime``/``endTime`` (a window
of at most 90 days), ``limit`` ≤ 100, newest first, the next page with ``idLessThan`` = the
previous answer's ``endId``.

Fields (strings): ``holdSide`` long/short, ``openAvgPrice`` / ``closeAvgPrice``,
``closeTotalPos`` (base coin; contract size 1), ``pnl`` gross, ``openFee`` + ``closeFee`` fee,
``totalFunding`` funding, ``netProfit`` their sum (net); ``ctime`` open, ``utime`` close. The
record key is ``positionId``.
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

_PRODUCT_TYPES = {"USDT": "USDT-FUTURES", "USDC": "USDC-FUTURES"}


def _contract_size(info: Mapping[str, Any]) -> Decimal:
    return Decimal(1)  # mix sizes are in the base coin


SPEC = PlatformSpec(
    platform="bitget",
    ccxt_id="bitget",
    default_options={"fetchMarkets": {"types": ["swap"]}, "uta": False},
    # 40008 / 40010: request timestamp expired (clock skew); 40015: system error;
    # 45001: service unavailable; 40725: service busy
    temporary_codes=frozenset({"40008", "40010", "40015", "45001", "40725"}),
    contract_size=_contract_size,
)


def validate_envelope(raw: Any, where: str) -> tuple[list[dict[str, Any]], str | None]:
    """``{"code": "00000", "msg": "success", "data": {"list": [...], "endId": "..."}}``.

    An empty window may answer ``"list": null``.
    """
    if isinstance(raw, dict) and str(raw.get("code")) == "00000":
        data = raw.get("data")
        if isinstance(data, dict):
            rows = data.get("list")
            rows = [] if rows is None else rows
            if isinstance(rows, list) and all(isinstance(item, dict) for item in rows):
                end_id = data.get("endId")
                return rows, (str(end_id) if end_id not in (None, "") else None)
    raise BadExchangeResponse(
        f"{where}: answer is not bitget's JSON envelope: {describe_body(raw)}"
    )


class BitgetAdapter(CcxtAdapter):
    spec = SPEC
    max_page_size = 100
    max_window = timedelta(days=90)

    async def _collect(
        self, market: MarketInfo, since_ms: int, until_ms: int
    ) -> list[ClosedPosition]:
        limit = self.page_size
        product_type = _PRODUCT_TYPES.get(market.settle.upper(), "USDT-FUTURES")
        positions: list[ClosedPosition] = []

        def parse(raw: Any, where: str) -> tuple[list[ClosedPosition], str | None]:
            rows, end_id = validate_envelope(raw, where)
            return [self._normalize(market, record) for record in rows], end_id

        for start, end in windows(since_ms, until_ms, self.max_window):
            cursor: str | None = None
            pages = 0
            while True:
                params: dict[str, Any] = {
                    "productType": product_type,
                    "symbol": market.id,
                    "startTime": str(start),
                    "endTime": str(end - 1),
                    "limit": str(limit),
                }
                if cursor is not None:
                    params["idLessThan"] = cursor
                page, end_id = await self.client.request(
                    "privateMixGetV2MixPositionHistoryPosition",
                    params,
                    parse,
                    what="history-position",
                    symbol=market.symbol,
                )
                pages += 1
                positions.extend(page)
                if len(page) < limit or end_id is None:
                    break
                if end_id == cursor:
                    raise BadExchangeResponse(
                        f"{self.where('history-position')}: endId did not advance"
                    )
                self._page_guard(pages, "history-position")
                cursor = end_id
        return positions

    def _normalize(self, market: MarketInfo, record: dict[str, Any]) -> ClosedPosition:
        where = self.where("history-position")
        if record.get("symbol") not in (None, market.id):
            raise BadExchangeResponse(f"{where}: record of {record.get('symbol')!r}")
        direction = str(record.get("holdSide") or record.get("posSide") or "").lower()
        fee = (optional_decimal(record, "openFee", where) or Decimal(0)) + (
            optional_decimal(record, "closeFee", where) or Decimal(0)
        )
        return self._position(
            market,
            direction=direction,
            size=field_decimal(record, "closeTotalPos", where) * market.contract_size,
            open_price=optional_decimal(record, "openAvgPrice", where),
            close_price=field_decimal(record, "closeAvgPrice", where),
            gross=field_decimal(record, "pnl", where),
            fee=fee,
            funding=optional_decimal(record, "totalFunding", where) or Decimal(0),
            open_time=ms_to_datetime(field_ms(record, "ctime", where)),
            close_time=ms_to_datetime(field_ms(record, "utime", where)),
            record_key=field_text(record, "positionId", where),
            raw=record,
        )
