"""The exchange port: everything that crosses between the core and an exchange adapter.

Plain on purpose (the standard library only): the record types a source returns, the API
account as an adapter sees it, :class:`Secret`, the two kinds of basis, the source protocols
(:class:`ClosedPositionSource`, :class:`SourceProvider`) and the one profit choice
(:func:`profit_of`). ``exchange_adapters`` imports nothing else from ``reconcile`` but this
module and ``reconcile.errors``; ``reconcile.sync.accounts`` loads accounts from the database as
:class:`ApiAccount`.

A closed position is a plain frozen dataclass; all amounts are ``Decimal`` and all times are
aware UTC datetimes.
See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, Protocol
from urllib.parse import quote

Direction = Literal["long", "short"]


class Secret:
    """A string that never shows itself in ``repr``/``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ApiAccount:
    """One exchange API account (``hg_trading_api_config``), shared by every robot whose
    ``api_config_id`` is ``id``; its ``repr`` shows the id, user, platform and base URL only."""

    id: int
    user_id: int
    platform: str
    base_url: str | None = field(default=None)
    api_key: Secret = field(default_factory=lambda: Secret(""), repr=False)
    secret: Secret = field(default_factory=lambda: Secret(""), repr=False)
    passphrase: Secret | None = field(default=None, repr=False)
    enabled: bool = True

    def with_credentials(
        self, *, api_key: Secret, secret: Secret, passphrase: Secret | None
    ) -> ApiAccount:
        return replace(self, api_key=api_key, secret=secret, passphrase=passphrase)


@dataclass(frozen=True)
class Proxy:
    """Where exchange requests leave through: the engine's global proxy
    (``hg_trading_proxy_config``) or the one configured under ``proxy:``.

    ``kind`` is ``socks5`` (host names resolved by the proxy, as the engine's Go client does) or
    ``http``. The ``repr`` and :attr:`label` never show the password.
    """

    kind: Literal["socks5", "http"]
    host: str
    port: int
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    #: where it was read: ``hg_trading_proxy_config <id>`` or ``config``
    origin: str = "config"

    @property
    def label(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{self.kind}://{user}{self.host}:{self.port} ({self.origin})"

    @property
    def egress(self) -> str:
        """The egress this proxy stands for, credential-free: budgets are kept per egress."""
        return f"{self.kind}://{self.host}:{self.port}"

    def url(self) -> str:
        """The proxy URL with its credentials, for the HTTP client only (never log it)."""
        scheme = "socks5h" if self.kind == "socks5" else "http"  # socks5h: the proxy resolves
        auth = ""
        if self.username:
            secret = self.password.get() if self.password is not None else ""
            auth = f"{quote(self.username, safe='')}:{quote(secret, safe='')}@"
        return f"{scheme}://{auth}{self.host}:{self.port}"


class NetOf(StrEnum):
    """What a record's ``net_profit`` is net of (its ``profit_basis``; the value is stored)."""

    #: trading fees and funding (okx, gate, bitget; replay by default)
    FEES_AND_FUNDING = "fees+funding"
    #: trading fees only: the endpoint does not report funding, which is then unknown
    #: (``funding_known`` False; binance userTrades, bybit closed-pnl)
    FEES = "fees"


class ProfitBasis(StrEnum):
    """Which figure of a closed position the platform charges on
    (``exchanges.<platform>.profit_basis``)."""

    NET = "net"
    GROSS = "gross"


def profit_of(position: ClosedPosition, basis: ProfitBasis) -> Decimal:
    """The realized profit the platform charges on: net (default) or gross of fees and funding."""
    return position.gross_pnl if basis is ProfitBasis.GROSS else position.net_profit


@dataclass(frozen=True)
class ClosedPosition:
    """One position closed on an exchange account, normalized across exchanges.

    ``net_profit`` is the basis the platform charges on by default: the exchange's own net figure
    where it states one (okx realizedPnl, gate pnl, bitget netProfit, bybit closedPnl), else
    ``gross_pnl + fee + funding`` (fee and funding signed, negative = cost). ``profit_basis``
    says what the net is net of (:class:`NetOf`) and
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
    profit_basis: NetOf = NetOf.FEES_AND_FUNDING
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


class SourceProvider(Protocol):
    """Where the history sync's streams get their closed positions
    (``exchange_adapters.registry.ExchangeRegistry``)."""

    def source_for(self, account: ApiAccount) -> ClosedPositionSource: ...

    def profit_basis(self, account: ApiAccount) -> ProfitBasis: ...

    def requests(self) -> int: ...
