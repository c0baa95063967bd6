"""Gate: ``GET /api/v4/futures/{settle}/position_close``, paged with ``offset``.

ccxt ``gate``, implicit method ``privateFuturesGetSettlePositionClose`` (the call ccxt's
``fetch_positions_history`` makes for a swap; cost 1). ``from``/``to`` (seconds) select the
window server-side; the answer is a bare JSON array, newest first; the next page is
``offset`` + page length (records shifted by new closes come twice and are de-duplicated).

Fields: ``side`` long/short; ccxt's unified prices are None - for a long the open price is
``long_price`` and the close price ``short_price``, reversed for a short; ``accum_size``
contracts × ``quanto_multiplier`` = size; ``pnl_pnl`` gross, ``pnl_fee`` fee, ``pnl_fund``
funding. ``pnl`` is the exchange's net (= pnl_pnl + pnl_fee + pnl_fund): it is the net, the sum
a cross-check. ``pnl_pnl`` may be an empty string: gross is then pnl − pnl_fee − pnl_fund (never
pnl itself, which is already net); an empty ``pnl_fee`` or ``pnl_fund`` makes the record unusable.
``first_open_time`` and ``time`` in seconds. There is no id (and no order id): the record key is
``contract:side:first_open_time:time``.
See docs/exchanges.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from exchange_adapters.base import CcxtAdapter, Endpoint, Page
from exchange_adapters.budgets import BudgetOptions, Limits
from exchange_adapters.fields import (
    RecordUnusable,
    canonical_key,
    describe_body,
    field_decimal,
    field_text,
    optional_decimal,
    positive_decimal,
)
from exchange_adapters.markets import MarketInfo
from exchange_adapters.positions import Context
from exchange_adapters.transport import PlatformSpec
from reconcile.errors import BadExchangeResponse
from reconcile.records import ClosedPosition, NetOf

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _contract_size(info: Mapping[str, Any]) -> Decimal:
    value = str(info.get("quanto_multiplier") or "")
    return Decimal(value) if value not in ("", "0") else Decimal(1)


SPEC = PlatformSpec(
    platform="gate",
    ccxt_id="gate",
    default_options={
        "fetchMarkets": {"types": ["swap"]},
        "swap": {"fetchMarkets": {"settlementCurrencies": ["usdt"]}},
        "unifiedAccount": False,
    },
    # REQUEST_EXPIRED: clock skew (ccxt: AuthenticationError); SERVER_ERROR / INTERNAL:
    # transient server failures that may come with a 4xx status
    temporary_codes=frozenset({"REQUEST_EXPIRED", "SERVER_ERROR", "INTERNAL", "TOO_BUSY"}),
    contract_size=_contract_size,
    # per account (UID): futures private endpoints 200 requests per 10 s (gate.io API v4,
    # "Frequency limit rule")
    futures_hosts=frozenset({"api.gateio.ws", "fx-api.gateio.ws"}),
    domain="gateio.ws",
    limits=Limits(account=BudgetOptions(limit=200, window=10)),
)


def validate_list(raw: Any, where: str) -> Page:
    """position_close answers a bare JSON array (errors are ``{"label","message"}``)."""
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise BadExchangeResponse(
            f"{where}: answer is not gate's JSON array of positions: {describe_body(raw)}"
        )
    return Page(raw)


def _time_text(record: Mapping[str, Any], key: str) -> str | None:
    """Gate's times are JSON numbers of seconds (documented as possibly fractional)."""
    value = record.get(key)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as this number: a time, not money
    text = str(value).strip()
    return text or None


def _seconds(record: Mapping[str, Any], key: str, where: str) -> tuple[str, datetime]:
    text = _time_text(record, key)
    try:
        value = Decimal(text) if text is not None else None
    except InvalidOperation:
        value = None
    if text is None or value is None or not value.is_finite() or not 0 < value < 10**11:
        raise RecordUnusable(f"{where}: {key!r} is not a time in seconds")
    return text, _EPOCH + timedelta(microseconds=int(value * 1_000_000))


class GateAdapter(CcxtAdapter[int]):
    """Cursor: the offset (records shifted by new closes come twice and are de-duplicated)."""

    spec = SPEC
    endpoint = Endpoint("privateFuturesGetSettlePositionClose", "position_close", validate_list)
    max_page_size = 100

    def first_cursor(self, start_ms: int, end_ms: int) -> int:
        return 0

    def params(self, market: MarketInfo, start_ms: int, end_ms: int, cursor: int) -> dict[str, Any]:
        return {
            "settle": market.settle_id.lower(),
            "contract": market.id,
            "from": start_ms // 1000,
            "to": math.ceil(end_ms / 1000),
            "limit": self.page_size,
            "offset": cursor,
        }

    def next_cursor(self, market: MarketInfo, cursor: int, page: Page) -> int:
        return cursor + len(page.rows)

    @staticmethod
    def identity(context: Context, raw: dict[str, Any]) -> str:
        parts = [
            str(raw.get("contract") or ""),
            str(raw.get("side") or "").lower(),
            _time_text(raw, "first_open_time") or "",
            _time_text(raw, "time") or "",
        ]
        return ":".join(parts) if all(parts) else canonical_key(raw)

    @staticmethod
    def close_time_of(raw: dict[str, Any]) -> datetime | None:
        try:
            return _seconds(raw, "time", "")[1]
        except RecordUnusable:
            return None

    @staticmethod
    def normalize(context: Context, raw: dict[str, Any]) -> ClosedPosition:
        return normalize(context, raw)


def normalize(context: Context, record: dict[str, Any]) -> ClosedPosition:
    market = context.market
    where = context.where("position_close")
    contract = field_text(record, "contract", where)
    if contract != market.id:
        raise RecordUnusable(f"{where}: record of {contract!r}")
    side = field_text(record, "side", where).lower()
    long_price = positive_decimal(record, "long_price", where)
    short_price = positive_decimal(record, "short_price", where)
    opened, close_price = (long_price, short_price) if side == "long" else (short_price, long_price)
    contracts = field_decimal(record, "accum_size", where).copy_abs()
    if contracts == 0:
        raise RecordUnusable(f"{where}: 'accum_size' is 0, not a closed size")
    net = field_decimal(record, "pnl", where)
    fee = field_decimal(record, "pnl_fee", where)
    funding = field_decimal(record, "pnl_fund", where)
    gross = optional_decimal(record, "pnl_pnl", where)
    if gross is None:  # pnl is already net: take the costs out, never add them again
        gross = net - fee - funding
    _, open_time = _seconds(record, "first_open_time", where)
    _, close_time = _seconds(record, "time", where)
    return context.position(
        direction=side,
        size=contracts * market.contract_size,
        open_price=opened,
        close_price=close_price,
        gross=gross,
        fee=fee,
        funding=funding,
        net=net,
        open_time=open_time,
        close_time=close_time,
        record_key=GateAdapter.identity(context, record),
        raw=record,
        profit_basis=NetOf.FEES_AND_FUNDING,
    )
