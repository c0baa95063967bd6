"""OKX: ``GET /api/v5/account/positions-history``, paged on uTime with ``after``/``before``.

ccxt ``okx``, implicit method ``privateGetAccountPositionsHistory`` (the call ccxt's
``fetch_positions_history`` makes; cost 2). ccxt's unified call ignores ``since`` server-side
and filters on the open time, so the adapter pages itself: ``before`` = since − 1 and
``after`` = until select since ≤ uTime < until; the answer is newest first, ≤ 100 per page, and
the next page is ``after`` = oldest uTime + 1 (records at that instant come again and are
de-duplicated).

Fields (strings): ``direction`` long/short (``posSide`` is ``net`` in one-way mode, so ccxt's
unified side is useless there), ``closeTotalPos`` contracts × ``ctVal`` = size, ``openAvgPx`` /
``closeAvgPx``, ``pnl`` (+ ``settledPnl``, cross-margin FUTURES only) gross, ``fee``
(+ ``liqPenalty``) fee, ``fundingFee`` funding. ``realizedPnl`` is the exchange's net
(= pnl + fee + fundingFee + liqPenalty + settledPnl): it is the net, the sum a cross-check.
``cTime`` is the open time, ``uTime`` the close time. ``posId`` is reused after a full close,
so the record key is ``posId:cTime``; the payload has no order id. A record with ``type`` 1
(close partially) is cumulative: a later close of the same position comes back under the same
key with larger figures (see docs/exchanges.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
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
    field_text,
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
    # per account (UID): positions-history 10 requests per 2 s (okx.com/docs-v5, "Get
    # positions history")
    futures_hosts=frozenset({"www.okx.com", "aws.okx.com", "my.okx.com"}),
    domain="okx.com",
    limits=Limits(account=BudgetOptions(limit=10, window=2)),
)


def validate_envelope(raw: Any, where: str) -> Page:
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
    return Page(raw["data"])


class OkxAdapter(CcxtAdapter[int]):
    """Cursor: ``after`` (exclusive upper bound on uTime), from the window's end down."""

    spec = SPEC
    endpoint = Endpoint("privateGetAccountPositionsHistory", "positions-history", validate_envelope)
    max_page_size = 100

    def first_cursor(self, start_ms: int, end_ms: int) -> int:
        return end_ms

    def params(self, market: MarketInfo, start_ms: int, end_ms: int, cursor: int) -> dict[str, Any]:
        return {
            "instType": "SWAP",
            "instId": market.id,
            "after": str(cursor),
            "before": str(start_ms - 1),
            "limit": str(self.page_size),
        }

    def next_cursor(self, market: MarketInfo, cursor: int, page: Page) -> int:
        times = [t for t in (lenient_ms(r, "uTime") for r in page.rows) if t is not None]
        if not times:
            raise BadExchangeResponse(
                f"{self.where('positions-history')}: a full page without a readable uTime"
            )
        oldest = min(times)
        return oldest + 1 if oldest + 1 < cursor else oldest

    @staticmethod
    def identity(context: Context, raw: dict[str, Any]) -> str:
        pos_id, c_time = raw.get("posId"), raw.get("cTime")
        if pos_id not in (None, "") and c_time not in (None, ""):
            return f"{pos_id}:{c_time}"
        return canonical_key(raw)

    @staticmethod
    def close_time_of(raw: dict[str, Any]) -> datetime | None:
        ms = lenient_ms(raw, "uTime")
        return None if ms is None else ms_to_datetime(ms)

    @staticmethod
    def normalize(context: Context, raw: dict[str, Any]) -> ClosedPosition:
        return normalize(context, raw)


def normalize(context: Context, record: dict[str, Any]) -> ClosedPosition:
    market = context.market
    where = context.where("positions-history")
    if record.get("instId") not in (None, market.id):
        raise RecordUnusable(f"{where}: record of {record.get('instId')!r}")
    direction = str(record.get("direction") or "").lower()
    if direction not in ("long", "short"):
        direction = str(record.get("posSide") or "").lower()
    open_ms = field_ms(record, "cTime", where)
    field_text(record, "posId", where)
    gross = field_decimal(record, "pnl", where) + (
        optional_decimal(record, "settledPnl", where) or Decimal(0)
    )
    fee = field_decimal(record, "fee", where) + (
        optional_decimal(record, "liqPenalty", where) or Decimal(0)
    )
    return context.position(
        direction=direction,
        size=positive_decimal(record, "closeTotalPos", where) * market.contract_size,
        open_price=positive_decimal(record, "openAvgPx", where),
        close_price=positive_decimal(record, "closeAvgPx", where),
        gross=gross,
        fee=fee,
        funding=field_decimal(record, "fundingFee", where),
        net=field_decimal(record, "realizedPnl", where),
        open_time=ms_to_datetime(open_ms),
        close_time=ms_to_datetime(field_ms(record, "uTime", where)),
        record_key=OkxAdapter.identity(context, record),
        raw=record,
        profit_basis=NetOf.FEES_AND_FUNDING,
    )
