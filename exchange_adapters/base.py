"""The base of the ccxt adapters: windowing, paging guards, strict field parsing, finishing.

Each exchange module overrides only what differs: how one window is paged through
(:meth:`CcxtAdapter._collect`), how the exchange's envelope is checked, and how one raw record
becomes a :class:`~reconcile.records.ClosedPosition`. Records are parsed from the raw strings the
exchange sent (``Decimal(str)``), never from ccxt's float fields; anything missing or malformed is
a :class:`~reconcile.errors.BadExchangeResponse`, never a silently skipped record.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

import structlog

from exchange_adapters.clients import ExchangeClient, MarketInfo, PlatformSpec
from exchange_adapters.errors import UnknownSymbol, sanitize
from exchange_adapters.symbols import to_unified
from reconcile.errors import BadExchangeResponse
from reconcile.records import ClosedPosition

log = structlog.get_logger("exchange_adapters")

MAX_PAGES_PER_WINDOW = 2000
_PLACES = Decimal("1e-12")


# --- strict field parsing -----------------------------------------------------------------------


_NOT_SCALAR = (dict, list, bool)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def field_text(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if isinstance(value, str):
        text = value.strip()
        if text:
            return text
    elif value is not None and not isinstance(value, _NOT_SCALAR):
        return str(value)
    raise BadExchangeResponse(f"{where}: record lacks {key!r}")


def field_decimal(record: Mapping[str, Any], key: str, where: str) -> Decimal:
    text = field_text(record, key, where)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BadExchangeResponse(f"{where}: {key!r} is not a number: {text[:40]!r}") from None
    if not value.is_finite():
        raise BadExchangeResponse(f"{where}: {key!r} is not a finite number")
    return value


def optional_decimal(record: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    value = record.get(key)
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return field_decimal(record, key, where)


def field_ms(record: Mapping[str, Any], key: str, where: str) -> int:
    value = field_decimal(record, key, where)
    if value <= 0 or value != value.to_integral_value():
        raise BadExchangeResponse(f"{where}: {key!r} is not a time in milliseconds")
    return int(value)


def ms_to_datetime(ms: int | Decimal) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(ms))


def to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("an aware datetime is required")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def div(numerator: Decimal, denominator: Decimal) -> Decimal:
    """An exact-enough quotient: 12 decimal places, trailing zeros removed."""
    value = (numerator / denominator).quantize(_PLACES)
    return value.normalize() if value != value.to_integral_value() else value.quantize(Decimal(1))


def windows(since_ms: int, until_ms: int, span: timedelta | None) -> Iterator[tuple[int, int]]:
    """[start, end) slices of at most ``span`` covering [since_ms, until_ms), oldest first."""
    if span is None:
        yield since_ms, until_ms
        return
    step = int(span / timedelta(milliseconds=1))
    start = since_ms
    while start < until_ms:
        end = min(start + step, until_ms)
        yield start, end
        start = end


def describe_body(raw: Any) -> str:
    """A short, safe rendering of an unexpected answer for error messages."""
    text = raw if isinstance(raw, str) else json.dumps(raw, default=str)[:200]
    return sanitize(repr(text[:80]))


def finish(
    positions: Iterable[ClosedPosition], since: datetime, until: datetime
) -> list[ClosedPosition]:
    """In-window positions, one per record key (the latest close wins), sorted by close time."""
    by_key: dict[str, ClosedPosition] = {}
    for position in positions:
        if not since <= position.close_time < until:
            continue
        known = by_key.get(position.record_key)
        if known is None or position.close_time >= known.close_time:
            by_key[position.record_key] = position
    return sorted(by_key.values(), key=lambda p: (p.close_time, p.record_key))


# --- the adapter --------------------------------------------------------------------------------


class CcxtAdapter(ABC):
    """A :class:`~reconcile.records.ClosedPositionSource` backed by one account's ccxt client."""

    spec: ClassVar[PlatformSpec]
    #: the exchange's maximum number of records per request
    max_page_size: ClassVar[int]
    #: the longest [start, end) the endpoint accepts in one request (None: no limit)
    max_window: ClassVar[timedelta | None] = None

    def __init__(self, client: ExchangeClient) -> None:
        self.client = client
        self.platform = client.platform
        self.account_id = client.account_id

    @property
    def page_size(self) -> int:
        wanted = self.client.options.page_size
        return min(wanted, self.max_page_size) if wanted else self.max_page_size

    def where(self, what: str) -> str:
        return f"{self.platform} account {self.account_id}: {what}"

    async def fetch_closed(
        self, symbol: str, since: datetime, until: datetime
    ) -> list[ClosedPosition]:
        if since.tzinfo is None or until.tzinfo is None:
            raise ValueError("fetch_closed needs aware datetimes")
        if since >= until:
            return []
        unified = to_unified(symbol)
        self.client.cooldowns.check(unified)
        try:
            market = await self.client.market(unified)
        except UnknownSymbol as exc:
            self.client.cooldowns.start(exc, unified, self.client.options.cooldown)
            log.warning(
                "exchange symbol unknown",
                platform=self.platform,
                account_id=self.account_id,
                symbol=symbol,
                detail=str(exc),
                will_retry=False,
                cooldown_s=self.client.options.cooldown,
            )
            raise
        positions = await self._collect(market, to_ms(since), to_ms(until))
        return finish(positions, since, until)

    @abstractmethod
    async def _collect(
        self, market: MarketInfo, since_ms: int, until_ms: int
    ) -> list[ClosedPosition]:
        """Every closed position of ``market`` closing in [since_ms, until_ms), in any order,
        possibly with duplicates (``finish`` de-duplicates by record key)."""

    def _position(
        self,
        market: MarketInfo,
        *,
        direction: str,
        size: Decimal,
        open_price: Decimal | None,
        close_price: Decimal,
        gross: Decimal,
        fee: Decimal,
        funding: Decimal,
        open_time: datetime | None,
        close_time: datetime,
        record_key: str,
        raw: dict[str, Any],
    ) -> ClosedPosition:
        if direction not in ("long", "short"):
            raise BadExchangeResponse(
                f"{self.where('normalize')}: direction {direction!r} is neither long nor short"
            )
        return ClosedPosition(
            platform=self.platform,
            account_id=self.account_id,
            symbol=market.symbol,
            direction="long" if direction == "long" else "short",
            size=size,
            open_price=open_price,
            close_price=close_price,
            gross_pnl=gross,
            fee=fee,
            funding=funding,
            net_profit=gross + fee + funding,
            open_time=open_time,
            close_time=close_time,
            record_key=record_key,
            raw=raw,
        )

    def _page_guard(self, pages: int, what: str) -> None:
        if pages >= MAX_PAGES_PER_WINDOW:
            raise BadExchangeResponse(
                f"{self.where(what)}: paging did not end after {pages} pages"
            )

    async def close(self) -> None:
        await self.client.close()
