"""Record types that cross from an exchange adapter into the core, and the port adapters implement.

A closed position is a plain frozen dataclass; all amounts are ``Decimal`` and all times are
aware UTC datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

Direction = Literal["long", "short"]

#: ``net_profit`` is net of trading fees and funding (okx, gate, bitget; replay by default)
BASIS_FEES_AND_FUNDING = "fees+funding"
#: ``net_profit`` is net of trading fees only: the endpoint does not report funding, which is
#: then unknown (``funding_known`` False; binance userTrades, bybit closed-pnl)
BASIS_FEES_ONLY = "fees"


@dataclass(frozen=True)
class ClosedPosition:
    """One position closed on an exchange account, normalized across exchanges.

    ``net_profit`` is the basis the platform charges on by default: the exchange's own net figure
    where it states one (okx realizedPnl, gate pnl, bitget netProfit, bybit closedPnl), else
    ``gross_pnl + fee + funding`` (fee and funding signed, negative = cost). ``profit_basis``
    says what the net is net of (``BASIS_FEES_AND_FUNDING`` or ``BASIS_FEES_ONLY``) and
    ``funding_known`` whether ``funding`` is the exchange's figure or unknown (then 0).
    ``record_key`` is stable and unique per closed position on that account.
    ``exchange_order_ids`` are the record's own exchange order ids (the closing order where the
    exchange names it), to match local orders' ``close_order_id`` / ``exchange_order_id``.
    ``raw`` keeps the exchange's record for diagnostics.
    """

    platform: str
    account_id: int
    symbol: str
    direction: Direction
    size: Decimal
    open_price: Decimal | None
    close_price: Decimal
    gross_pnl: Decimal
    fee: Decimal
    funding: Decimal
    net_profit: Decimal
    open_time: datetime | None
    close_time: datetime
    record_key: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    profit_basis: str = BASIS_FEES_AND_FUNDING
    funding_known: bool = True
    exchange_order_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnusableRecord:
    """A record the exchange sent that cannot be normalized (an empty, non-numeric or
    non-positive field where one is required, an unknown side, ...).

    It is never read as zero and never dropped: the history sync stores it in the quarantine
    table with its raw payload and ``reason``, and the stream moves on. ``record_key`` is the
    record's stable identity (as a usable record would have it, or ``sha256:`` of its canonical
    JSON when even that cannot be built). ``context`` is what re-normalizing it needs without a
    network call (the market's id and exact contract size).
    """

    platform: str
    account_id: int
    symbol: str
    record_key: str
    reason: str
    raw: dict[str, Any] = field(compare=False, repr=False)
    close_time: datetime | None = None
    context: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ClosedWindow:
    """What a source says closed in one window: the usable records, sorted by close time, and
    the unusable ones (which must not block the stream and must not be lost)."""

    records: tuple[ClosedPosition, ...] = ()
    unusable: tuple[UnusableRecord, ...] = ()


class ClosedPositionSource(Protocol):
    """The port: where closed positions come from (an exchange account, or a file)."""

    platform: str
    account_id: int

    async def fetch_closed(self, symbol: str, since: datetime, until: datetime) -> ClosedWindow:
        """Closed positions of ``symbol`` with since <= close_time < until, sorted by close time.

        Pages through the exchange's limits itself and de-duplicates across pages. Raises
        ``TemporaryError`` (worth retrying later) or ``PermanentError`` when a page is not the
        exchange's answer (HTML, an error code in a 200): never an empty window for an answer it
        could not understand. A well-formed page with a bad record is not such a failure: the
        record comes back in ``unusable``.
        """
        ...

    async def close(self) -> None:
        """Release the client; safe to call twice."""
        ...
