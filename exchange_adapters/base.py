"""The base of the ccxt adapters: windowing, the one paging loop, strict field parsing, finishing.

Each exchange module overrides only what differs: the endpoint and its envelope check
(:class:`Endpoint`), how its cursor starts, moves and ends (:meth:`CcxtAdapter.params`,
:meth:`~CcxtAdapter.first_cursor`, :meth:`~CcxtAdapter.next_cursor`,
:meth:`~CcxtAdapter.last_page`; the loop is :meth:`CcxtAdapter._collect`), and how one raw
record becomes a :class:`~reconcile.records.ClosedPosition`. Records are parsed from the raw
strings the exchange sent (``Decimal(str)``), never from ccxt's float fields. A page that is not
the exchange's answer is a :class:`~reconcile.errors.BadExchangeResponse` (the whole fetch fails
and the stream's cursor holds); one record of a good page with a missing, empty, non-numeric or
non-positive required field is :class:`RecordUnusable` and comes back as an
:class:`~reconcile.records.UnusableRecord`, never read as zero and never silently skipped.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Generic, TypeVar

import structlog

from exchange_adapters.clients import ExchangeClient, MarketInfo, PlatformSpec
from exchange_adapters.errors import UnknownSymbol, sanitize
from exchange_adapters.symbols import to_unified
from reconcile.errors import BadExchangeResponse
from reconcile.records import (
    ClosedPosition,
    ClosedWindow,
    NetOf,
    UnusableRecord,
)

log = structlog.get_logger("exchange_adapters")

MAX_PAGES_PER_WINDOW = 2000
_PLACES = Decimal("1e-12")

#: what an exchange pages with: an opaque token, a time, an offset
Cursor = TypeVar("Cursor")


# --- strict field parsing -----------------------------------------------------------------------


class RecordUnusable(BadExchangeResponse):
    """One record of a well-formed page cannot be normalized. Raised while normalizing (after
    the request and its retries), turned into an :class:`~reconcile.records.UnusableRecord`."""


_NOT_SCALAR = (dict, list, bool, float)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def field_text(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if isinstance(value, str):
        text = value.strip()
        if text:
            return text
        raise RecordUnusable(f"{where}: {key!r} is empty")
    if value is not None and not isinstance(value, _NOT_SCALAR):
        return str(value)
    raise RecordUnusable(f"{where}: record lacks {key!r}")


def field_decimal(record: Mapping[str, Any], key: str, where: str) -> Decimal:
    text = field_text(record, key, where)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RecordUnusable(f"{where}: {key!r} is not a number: {text[:40]!r}") from None
    if not value.is_finite():
        raise RecordUnusable(f"{where}: {key!r} is not a finite number")
    return value


def positive_decimal(record: Mapping[str, Any], key: str, where: str) -> Decimal:
    """A size or price: a number above zero (zero or negative makes the record unusable)."""
    value = field_decimal(record, key, where)
    if value <= 0:
        raise RecordUnusable(f"{where}: {key!r} is {text_of(value)}, not a positive number")
    return value


def text_of(value: Decimal) -> str:
    return format(value, "f")


def optional_decimal(record: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    """An optional component: absent or empty is None (the caller decides what that means);
    present but not a number makes the record unusable."""
    value = record.get(key)
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return field_decimal(record, key, where)


def first_key(record: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """The first of ``keys`` (spellings of one field) present and non-empty, else the first."""
    for key in keys:
        value = record.get(key)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return key
    return keys[0]


def field_ms(record: Mapping[str, Any], key: str, where: str) -> int:
    value = field_decimal(record, key, where)
    if value <= 0 or value != value.to_integral_value() or value >= 10**14:
        raise RecordUnusable(f"{where}: {key!r} is not a time in milliseconds")
    return int(value)


def canonical_key(raw: Any) -> str:
    """A stable identity for a record that has no usable id: sha256 of its canonical JSON."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def lenient_ms(record: Mapping[str, Any], key: str) -> int | None:
    """A time in ms if it parses, else None (for paging and for unusable records)."""
    try:
        return field_ms(record, key, "")
    except RecordUnusable:
        return None


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


def finish_window(
    positions: Iterable[ClosedPosition],
    unusable: Iterable[UnusableRecord],
    since: datetime,
    until: datetime,
) -> ClosedWindow:
    """``finish`` for the usable records; the unusable ones in the window (or of unknown close
    time) de-duplicated by key, minus any key a usable record of the window has."""
    records = finish(positions, since, until)
    usable_keys = {p.record_key for p in records}
    bad: dict[str, UnusableRecord] = {}
    for record in unusable:
        if record.close_time is not None and not since <= record.close_time < until:
            continue
        if record.record_key not in usable_keys:
            bad[record.record_key] = record
    return ClosedWindow(
        records=tuple(records),
        unusable=tuple(sorted(bad.values(), key=lambda r: r.record_key)),
    )


# --- normalizing one record (pure: no network, usable by `exchange quarantine --retry`) --------

#: the largest difference between the exchange's net and our sum of its components we accept
#: silently; a larger one is logged as ``profit components disagree``
TOLERANCE = Decimal("1e-8")


@dataclass(frozen=True)
class Context:
    """Where a record comes from: what normalizing it needs besides the record itself."""

    platform: str
    account_id: int
    market: MarketInfo

    def where(self, what: str) -> str:
        return f"{self.platform} account {self.account_id}: {what}"

    def market_context(self) -> dict[str, str]:
        m = self.market
        return {"symbol": m.symbol, "id": m.id, "settle": m.settle, "settle_id": m.settle_id,
                "contract_size": text_of(m.contract_size)}  # fmt: skip

    def position(
        self,
        *,
        direction: str,
        size: Decimal,
        open_price: Decimal | None,
        close_price: Decimal,
        gross: Decimal,
        fee: Decimal,
        funding: Decimal,
        net: Decimal | None,
        open_time: datetime | None,
        close_time: datetime,
        record_key: str,
        raw: dict[str, Any],
        profit_basis: NetOf = NetOf.FEES_AND_FUNDING,
        funding_known: bool = True,
        exchange_order_ids: tuple[str, ...] = (),
    ) -> ClosedPosition:
        """The normalized record. ``net`` is the exchange's own net figure where it states one:
        that figure is the net, and the sum of the components is only a cross-check."""
        if direction not in ("long", "short"):
            raise RecordUnusable(
                f"{self.where('normalize')}: direction {direction!r} is neither long nor short"
            )
        components = gross + fee + funding
        if net is None:
            net = components
        elif abs(net - components) > TOLERANCE:
            log.warning(
                "profit components disagree",
                platform=self.platform,
                account_id=self.account_id,
                symbol=self.market.symbol,
                record_key=record_key,
                exchange_net=text_of(net),
                components_sum=text_of(components),
                gross=text_of(gross),
                fee=text_of(fee),
                funding=text_of(funding),
            )
        return ClosedPosition(
            platform=self.platform,
            account_id=self.account_id,
            symbol=self.market.symbol,
            direction="long" if direction == "long" else "short",
            size=size,
            open_price=open_price,
            close_price=close_price,
            gross_pnl=gross,
            fee=fee,
            funding=funding,
            net_profit=net,
            open_time=open_time,
            close_time=close_time,
            record_key=record_key,
            raw=raw,
            profit_basis=profit_basis,
            funding_known=funding_known,
            exchange_order_ids=exchange_order_ids,
        )

    def unusable(
        self, raw: dict[str, Any], record_key: str, reason: str, close_time: datetime | None
    ) -> UnusableRecord:
        return UnusableRecord(
            platform=self.platform,
            account_id=self.account_id,
            symbol=self.market.symbol,
            record_key=record_key,
            reason=reason,
            raw=raw,
            close_time=close_time,
            context=self.market_context(),
        )


def market_from_context(context: Mapping[str, str]) -> MarketInfo:
    """The MarketInfo an UnusableRecord's ``context`` describes (no network)."""
    try:
        return MarketInfo(
            symbol=context["symbol"],
            id=context["id"],
            settle=context.get("settle", ""),
            settle_id=context.get("settle_id", ""),
            contract_size=Decimal(context["contract_size"]),
            info={},
        )
    except (KeyError, InvalidOperation) as exc:
        raise ValueError(f"stored market context is incomplete: {exc}") from None


# --- the adapter --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One well-formed answer: its raw records, and the exchange's next-page token where the
    envelope carries one."""

    rows: list[dict[str, Any]]
    token: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """The ccxt implicit method closed positions are paged from, and its envelope check
    (``validate(raw, where)``: the page, or :class:`~reconcile.errors.BadExchangeResponse`; it
    runs inside the request's retries)."""

    method: str
    #: the endpoint's name in logs and errors
    what: str
    validate: Callable[[Any, str], Page]


class CcxtAdapter(ABC, Generic[Cursor]):
    """A :class:`~reconcile.records.ClosedPositionSource` backed by one account's ccxt client.

    A subclass names its :attr:`endpoint` and says how its cursor pages through one window
    (:meth:`params`, :meth:`first_cursor`, :meth:`next_cursor`, :meth:`last_page`: the loop
    itself is :meth:`_collect`), how one raw record becomes a ClosedPosition (:meth:`normalize`,
    pure) and what its identity is (:meth:`identity`, never fails). Normalizing runs once per
    record, after the requests, never inside the retry loop.
    """

    spec: ClassVar[PlatformSpec]
    endpoint: ClassVar[Endpoint]
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

    def context(self, market: MarketInfo) -> Context:
        return Context(self.platform, self.account_id, market)

    async def fetch_closed(self, symbol: str, since: datetime, until: datetime) -> ClosedWindow:
        if since.tzinfo is None or until.tzinfo is None:
            raise ValueError("fetch_closed needs aware datetimes")
        if since >= until:
            return ClosedWindow()
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
        raws = await self._collect(market, to_ms(since), to_ms(until))
        context = self.context(market)
        positions: list[ClosedPosition] = []
        unusable: list[UnusableRecord] = []
        for raw in self.records_of(market, raws):
            try:
                positions.append(self.normalize(context, raw))
            except RecordUnusable as exc:
                bad = context.unusable(
                    raw, self.identity(context, raw), str(exc), self.close_time_of(raw)
                )
                log.warning(
                    "exchange record unusable",
                    platform=self.platform,
                    account_id=self.account_id,
                    symbol=market.symbol,
                    record_key=bad.record_key,
                    reason=bad.reason,
                )
                unusable.append(bad)
        return finish_window(positions, unusable, since, until)

    async def _collect(
        self, market: MarketInfo, since_ms: int, until_ms: int
    ) -> list[dict[str, Any]]:
        """Every raw record of ``market`` closing in [since_ms, until_ms), in any order,
        possibly with duplicates (de-duplicated by record key afterwards): each window of at
        most :attr:`max_window`, oldest first, paged through until :meth:`last_page`."""
        endpoint = self.endpoint
        records: list[dict[str, Any]] = []
        for start, end in windows(since_ms, until_ms, self.max_window):
            cursor = self.first_cursor(start, end)
            pages = 0
            while True:
                page = await self.client.request(
                    endpoint.method,
                    self.params(market, start, end, cursor),
                    endpoint.validate,
                    what=endpoint.what,
                    symbol=market.symbol,
                )
                pages += 1
                records.extend(page.rows)
                if self.last_page(page):
                    break
                if pages >= MAX_PAGES_PER_WINDOW:
                    raise BadExchangeResponse(
                        f"{self.where(endpoint.what)}: paging did not end after {pages} pages"
                    )
                cursor = self.next_cursor(market, cursor, page)
        return records

    @abstractmethod
    def first_cursor(self, start_ms: int, end_ms: int) -> Cursor:
        """The cursor of the first request of the window [start_ms, end_ms)."""

    @abstractmethod
    def params(
        self, market: MarketInfo, start_ms: int, end_ms: int, cursor: Cursor
    ) -> dict[str, Any]:
        """The request's parameters for ``cursor`` in the window [start_ms, end_ms)."""

    def last_page(self, page: Page) -> bool:
        """Whether the window ends with ``page`` (by default: a page shorter than the limit)."""
        return len(page.rows) < self.page_size

    @abstractmethod
    def next_cursor(self, market: MarketInfo, cursor: Cursor, page: Page) -> Cursor:
        """The cursor after a full ``page``; BadExchangeResponse if the exchange's does not
        move on."""

    def next_token(self, cursor: str | None, page: Page, name: str) -> str:
        """The exchange's next-page token, which must differ from the one just sent."""
        if page.token is None or page.token == cursor:
            raise BadExchangeResponse(f"{self.where(self.endpoint.what)}: {name} did not advance")
        return page.token

    def records_of(self, market: MarketInfo, raws: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The raw records that each make one closed position (binance groups fills)."""
        return raws

    @staticmethod
    @abstractmethod
    def normalize(context: Context, raw: dict[str, Any]) -> ClosedPosition:
        """One raw record as a ClosedPosition; RecordUnusable if it cannot be one."""

    @staticmethod
    @abstractmethod
    def identity(context: Context, raw: dict[str, Any]) -> str:
        """The record's stable key, also for a record that cannot be normalized."""

    @staticmethod
    @abstractmethod
    def close_time_of(raw: dict[str, Any]) -> datetime | None:
        """The close time if it can be read, else None."""

    async def close(self) -> None:
        await self.client.close()
