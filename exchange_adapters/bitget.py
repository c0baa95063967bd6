"""Bitget (classic account): ``GET /api/v2/mix/position/history-position``, paged by ``endId``.

ccxt ``bitget`` with ``options={'uta': False}``, implicit method
``privateMixGetV2MixPositionHistoryPosition`` (the call ccxt's ``fetch_positions_history`` makes;
cost 1). ccxt drops the cursor, so the adapter pages itself: ``startTime``/``endTime`` (a window
of at most 90 days), ``limit`` ≤ 100, newest first, the next page with ``idLessThan`` = the
previous answer's ``endId``.

Fields (strings): ``holdSide`` long/short, ``openAvgPrice`` / ``closeAvgPrice``,
``closeTotalPos`` (base coin; contract size 1), ``pnl`` gross, ``openFee`` + ``closeFee`` fee,
``totalFunding`` funding; ``netProfit`` is the exchange's net (= pnl + openFee + closeFee +
totalFunding): where present it is the net, the sum a cross-check. Times are ``ctime`` /
``utime`` (ccxt's recorded samples) or ``cTime`` / ``uTime`` (the docs example): both are read.
The record key is ``positionId`` when present - neither of ccxt's samples nor the docs example
has it - else ``symbol:holdSide:open ms:close ms``. The payload has no order id.
See docs/exchanges.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from exchange_adapters.base import CcxtAdapter, Endpoint, Page
from exchange_adapters.budgets import BudgetOptions, Limits
from exchange_adapters.fields import (
    RecordUnusable,
    canonical_key,
    describe_body,
    field_decimal,
    field_ms,
    first_key,
    lenient_ms,
    ms_to_datetime,
    optional_decimal,
    positive_decimal,
)
from exchange_adapters.markets import MarketInfo
from exchange_adapters.positions import Context
from exchange_adapters.transport import PlatformSpec
from reconcile.errors import BadExchangeResponse
from reconcile.records import ClosedPosition, NetOf

_PRODUCT_TYPES = {"USDT": "USDT-FUTURES", "USDC": "USDC-FUTURES"}
_OPEN_TIME = ("ctime", "cTime")
_CLOSE_TIME = ("utime", "uTime")


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
    # per account (UID): history-position 20 requests per second (bitget.com API docs, "Get
    # Historical Position")
    futures_hosts=frozenset({"api.bitget.com"}),
    domain="bitget.com",
    limits=Limits(account=BudgetOptions(limit=20, window=1)),
)


def validate_envelope(raw: Any, where: str) -> Page:
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
                return Page(rows, str(end_id) if end_id not in (None, "") else None)
    raise BadExchangeResponse(
        f"{where}: answer is not bitget's JSON envelope: {describe_body(raw)}"
    )


class BitgetAdapter(CcxtAdapter[str | None]):
    """Cursor: the previous answer's ``endId`` (None on the first page of a window)."""

    spec = SPEC
    endpoint = Endpoint(
        "privateMixGetV2MixPositionHistoryPosition", "history-position", validate_envelope
    )
    max_page_size = 100
    max_window = timedelta(days=90)

    def first_cursor(self, start_ms: int, end_ms: int) -> str | None:
        return None

    def params(
        self, market: MarketInfo, start_ms: int, end_ms: int, cursor: str | None
    ) -> dict[str, Any]:
        params = {
            "productType": _PRODUCT_TYPES.get(market.settle.upper(), "USDT-FUTURES"),
            "symbol": market.id,
            "startTime": str(start_ms),
            "endTime": str(end_ms - 1),
            "limit": str(self.page_size),
        }
        return params if cursor is None else {**params, "idLessThan": cursor}

    def last_page(self, page: Page) -> bool:
        return page.token is None or super().last_page(page)

    def next_cursor(self, market: MarketInfo, cursor: str | None, page: Page) -> str:
        return self.next_token(cursor, page, "endId")

    @staticmethod
    def identity(context: Context, raw: dict[str, Any]) -> str:
        position_id = raw.get("positionId")
        if isinstance(position_id, str | int) and str(position_id).strip():
            return str(position_id).strip()
        parts = [
            str(raw.get("symbol") or context.market.id),
            str(raw.get("holdSide") or raw.get("posSide") or "").lower(),
            str(raw.get(first_key(raw, _OPEN_TIME)) or ""),
            str(raw.get(first_key(raw, _CLOSE_TIME)) or ""),
        ]
        return ":".join(parts) if all(parts) else canonical_key(raw)

    @staticmethod
    def close_time_of(raw: dict[str, Any]) -> datetime | None:
        ms = lenient_ms(raw, first_key(raw, _CLOSE_TIME))
        return None if ms is None else ms_to_datetime(ms)

    @staticmethod
    def normalize(context: Context, raw: dict[str, Any]) -> ClosedPosition:
        return normalize(context, raw)


def normalize(context: Context, record: dict[str, Any]) -> ClosedPosition:
    market = context.market
    where = context.where("history-position")
    if record.get("symbol") not in (None, market.id):
        raise RecordUnusable(f"{where}: record of {record.get('symbol')!r}")
    direction = str(record.get("holdSide") or record.get("posSide") or "").lower()
    fee = field_decimal(record, "openFee", where) + field_decimal(record, "closeFee", where)
    return context.position(
        direction=direction,
        size=positive_decimal(record, "closeTotalPos", where) * market.contract_size,
        open_price=positive_decimal(record, "openAvgPrice", where),
        close_price=positive_decimal(record, "closeAvgPrice", where),
        gross=field_decimal(record, "pnl", where),
        fee=fee,
        funding=field_decimal(record, "totalFunding", where),
        net=optional_decimal(record, "netProfit", where),
        open_time=ms_to_datetime(field_ms(record, first_key(record, _OPEN_TIME), where)),
        close_time=ms_to_datetime(field_ms(record, first_key(record, _CLOSE_TIME), where)),
        record_key=BitgetAdapter.identity(context, record),
        raw=record,
        profit_basis=NetOf.FEES_AND_FUNDING,
    )
