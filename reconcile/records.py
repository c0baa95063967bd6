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


@dataclass(frozen=True)
class ClosedPosition:
    """One position closed on an exchange account, normalized across exchanges.

    ``net_profit = gross_pnl + fee + funding`` (fee and funding signed, negative = cost) is the
    basis the platform charges on by default. ``record_key`` is stable and unique per closed
    position on that account. ``raw`` keeps the exchange's record for diagnostics.
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
    #: the exchange's own ids of the orders in this record (binance/bybit orderId, ...): matched
    #: against a local order's close_order_id / exchange_order_id
    exchange_order_ids: tuple[str, ...] = ()


class ClosedPositionSource(Protocol):
    """The port: where closed positions come from (an exchange account, or a file)."""

    platform: str
    account_id: int

    async def fetch_closed(
        self, symbol: str, since: datetime, until: datetime
    ) -> list[ClosedPosition]:
        """Closed positions of ``symbol`` with since <= close_time < until, sorted by close time.

        Pages through the exchange's limits itself and de-duplicates across pages. Raises
        ``TemporaryError`` (worth retrying later) or ``PermanentError``; never returns an empty
        list for an answer it could not understand.
        """
        ...

    async def close(self) -> None:
        """Release the client; safe to call twice."""
        ...
