"""Gate: ``GET /api/v4/futures/{settle}/position_close``, paged with ``offset``.

ccxt ``gate``, implicit method ``privateFuturesGetSettlePositionClose`` (the call ccxt's
``fetch_positions_history`` makes for a swap; cost 1). ``from``/``to`` (seconds) select the
window server-side; the answer is a bare JSON array, newest first; the next page is
``offset`` + page length (records shifted by new closes come twice and are de-duplicated).

Fields: ``side`` long/short; ccxt's unified prices are None - for a long the open price is
``long_price`` and the close price ``short_price``, reversed for a short; ``accum_size``
contracts × ``quanto_multiplier`` = size; ``pnl_pnl`` gross, ``pnl_fee`` fee, ``pnl_fund``
funding, ``pnl`` their sum (net); ``first_open_time`` and ``time`` in seconds. There is no id:
the record key is ``contract:side:first_open_time:time``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from exchange_adapters.base import (
    CcxtAdapter,
    describe_body,
    field_decimal,
    field_text,
    optional_decimal,
)
from exchange_adapters.clients import MarketInfo, PlatformSpec
from reconcile.errors import BadExchangeResponse
from reconcile.records import ClosedPosition

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
)


def validate_list(raw: Any, where: str) -> list[dict[str, Any]]:
    """position_close answers a bare JSON array (errors are ``{"label","message"}``)."""
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise BadExchangeResponse(
            f"{where}: answer is not gate's JSON array of positions: {describe_body(raw)}"
        )
    return raw


def _seconds(record: Mapping[str, Any], key: str, where: str) -> tuple[str, datetime]:
    value = field_decimal(record, key, where)
    if value <= 0:
        raise BadExchangeResponse(f"{where}: {key!r} is not a time in seconds")
    text = field_text(record, key, where)
    return text, _EPOCH + timedelta(microseconds=int(value * 1_000_000))


class GateAdapter(CcxtAdapter):
    spec = SPEC
    max_page_size = 100

    async def _collect(
        self, market: MarketInfo, since_ms: int, until_ms: int
    ) -> list[ClosedPosition]:
        limit = self.page_size
        offset, pages = 0, 0
        positions: list[ClosedPosition] = []

        def parse(raw: Any, where: str) -> list[ClosedPosition]:
            return [self._normalize(market, record) for record in validate_list(raw, where)]

        while True:
            params = {
                "settle": market.settle_id.lower(),
                "contract": market.id,
                "from": since_ms // 1000,
                "to": math.ceil(until_ms / 1000),
                "limit": limit,
                "offset": offset,
            }
            page = await self.client.request(
                "privateFuturesGetSettlePositionClose",
                params,
                parse,
                what="position_close",
                symbol=market.symbol,
            )
            pages += 1
            positions.extend(page)
            if len(page) < limit:
                return positions
            self._page_guard(pages, "position_close")
            offset += len(page)

    def _normalize(self, market: MarketInfo, record: dict[str, Any]) -> ClosedPosition:
        where = self.where("position_close")
        contract = field_text(record, "contract", where)
        if contract != market.id:
            raise BadExchangeResponse(f"{where}: record of {contract!r}")
        side = field_text(record, "side", where).lower()
        long_price = field_decimal(record, "long_price", where)
        short_price = field_decimal(record, "short_price", where)
        opened, close_price = (long_price, short_price) if side == "long" else (
            short_price, long_price
        )
        gross = optional_decimal(record, "pnl_pnl", where)
        if gross is None:  # records older than gate's pnl breakdown: pnl is all we have
            gross = field_decimal(record, "pnl", where)
        open_text, open_time = _seconds(record, "first_open_time", where)
        close_text, close_time = _seconds(record, "time", where)
        return self._position(
            market,
            direction=side,
            size=field_decimal(record, "accum_size", where).copy_abs() * market.contract_size,
            open_price=opened,
            close_price=close_price,
            gross=gross,
            fee=optional_decimal(record, "pnl_fee", where) or Decimal(0),
            funding=optional_decimal(record, "pnl_fund", where) or Decimal(0),
            open_time=open_time,
            close_time=close_time,
            record_key=f"{contract}:{side}:{open_text}:{close_text}",
            raw=record,
        )
