"""The base of the ccxt adapters: windowing, the one paging loop, finishing.

Each exchange module overrides only what differs: the endpoint and its envelope check
(:class:`Endpoint`), how its cursor starts, moves and ends (:meth:`CcxtAdapter.params`,
:meth:`~CcxtAdapter.first_cursor`, :meth:`~CcxtAdapter.next_cursor`,
:meth:`~CcxtAdapter.last_page`; the loop is :meth:`CcxtAdapter._collect`), and how one raw
record becomes a :class:`~reconcile.records.ClosedPosition` (with the strict parsers of
:mod:`exchange_adapters.fields`, in a :class:`~exchange_adapters.positions.Context`). A page that
is not the exchange's answer is a :class:`~reconcile.errors.BadExchangeResponse` (the whole fetch
fails and the stream's cursor holds); one record of a good page that cannot be normalized comes
back as an :class:`~reconcile.records.UnusableRecord`, never silently skipped. See
docs/exchanges.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar

import structlog

from exchange_adapters.clients import ExchangeClient
from exchange_adapters.errors import UnknownSymbol
from exchange_adapters.fields import RecordUnusable, to_ms
from exchange_adapters.markets import MarketInfo
from exchange_adapters.positions import Context, finish_window
from exchange_adapters.symbols import to_unified
from exchange_adapters.transport import PlatformSpec
from reconcile.errors import BadExchangeResponse
from reconcile.records import ClosedPosition, ClosedWindow, UnusableRecord

log = structlog.get_logger("exchange_adapters")

MAX_PAGES_PER_WINDOW = 2000

#: what an exchange pages with: an opaque token, a time, an offset
Cursor = TypeVar("Cursor")


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
