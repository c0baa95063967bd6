"""OKX: ``GET /api/v5/account/positions-history``, paged on uTime with ``after``/``before``.

ccxt ``okx``, implicit method ``privateGetAccountPositionsHistory`` (the call ccxt's
``fetch_positions_history`` makes; cost 2). ccxt's unified call ignores ``since`` server-side
and filters on the open time, so the adapter pages itself: ``before`` = since − 1 and
``after`` = until select since ≤ uTime < until; the answer is newest first, ≤ 100 per page, and
the next page is ``after`` = oldest uTime + 1 (records at that instant come again and are
de-duplicated).

Fields (strings): ``direction`` long/short (``posSide`` is ``net`` in one-way mode, so ccxt's
unified side is useless there), ``closeTotalPos`` contracts × ``ctVal`` = size, ``openAvgPx`` /
``closeAvgPx``, ``pnl`` gross, ``fee`` (+ ``liqPenalty``) fee, ``fundingFee`` funding -
``realizedPnl`` is their sum (net). ``cTime`` is the open time, ``uTime`` the close time.
``posId`` is reused after a full close, so the record key is ``posId:cTime``.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    to_ms,
)
from exchange_adapters.clients import MarketInfo, PlatformSpec
from reconcile.errors import BadExchangeResponse
from reconcile.records import ClosedPosition


def _contract_size(info: Mapping[str, Any]) -> Decimal:
    value = info.get("ctVal")
    return Decimal(str(value)) if value not in (None, "") else Decimal(1)


SPEC = PlatformSpec(
    platform="okx",
    ccxt_id="okx",
    default_options={"fetchMarkets": {"types": ["swap"]}},
    # 50001 service temporarily unavailable, 50004 endpoint timeout, 50013 system busy,
    # 50026 system error, 50102 timestamp expired (clock skew)
    temporary_codes=frozenset({"50001", "50004", "50013", "50026", "50102"}),
    contract_size=_contract_size,
)


def validate_envelope(raw: Any, where: str) -> list[dict[str, Any]]:
    """``{"code": "0", "msg": "", "data": [...]}``."""
    if (
        not isinstance(raw, dict)
        or str(raw.get("code")) != "0"
        or not isinstance(raw.get("data"), list)
        or not all(isinstance(item, dict) for item in raw["data"])
    ):
        raise BadExchangeResponse(
            f"{where}: answer is not okx's JSON envelope: {describe_body(raw)}"
        )
    data: list[dict[str, Any]] = raw["data"]
    return data


class OkxAdapter(CcxtAdapter):
    spec = SPEC
    max_page_size = 100

    async def _collect(
        self, market: MarketInfo, since_ms: int, until_ms: int
    ) -> list[ClosedPosition]:
        limit = self.page_size
        after, pages = until_ms, 0
        positions: list[ClosedPosition] = []

        def parse(raw: Any, where: str) -> list[ClosedPosition]:
            return [self._normalize(market, record) for record in validate_envelope(raw, where)]

        while True:
            params = {
                "instType": "SWAP",
                "instId": market.id,
                "after": str(after),
                "before": str(since_ms - 1),
                "limit": str(limit),
            }
            page = await self.client.request(
                "privateGetAccountPositionsHistory",
                params,
                parse,
                what="positions-history",
                symbol=market.symbol,
            )
            pages += 1
            positions.extend(page)
            if len(page) < limit:
                return positions
            self._page_guard(pages, "positions-history")
            oldest = min(to_ms(position.close_time) for position in page)
            after = oldest + 1 if oldest + 1 < after else oldest

    def _normalize(self, market: MarketInfo, record: dict[str, Any]) -> ClosedPosition:
        where = self.where("positions-history")
        if record.get("instId") not in (None, market.id):
            raise BadExchangeResponse(f"{where}: record of {record.get('instId')!r}")
        direction = str(record.get("direction") or "").lower()
        if direction not in ("long", "short"):
            direction = str(record.get("posSide") or "").lower()
        fee = field_decimal(record, "fee", where) + (
            optional_decimal(record, "liqPenalty", where) or Decimal(0)
        )
        open_ms = field_ms(record, "cTime", where)
        return self._position(
            market,
            direction=direction,
            size=field_decimal(record, "closeTotalPos", where) * market.contract_size,
            open_price=optional_decimal(record, "openAvgPx", where),
            close_price=field_decimal(record, "closeAvgPx", where),
            gross=field_decimal(record, "pnl", where),
            fee=fee,
            funding=optional_decimal(record, "fundingFee", where) or Decimal(0),
            open_time=ms_to_datetime(open_ms),
            close_time=ms_to_datetime(field_ms(record, "uTime", where)),
            record_key=f"{field_text(record, 'posId', where)}:{open_ms}",
            raw=record,
        )
