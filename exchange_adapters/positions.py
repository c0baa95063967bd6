"""From raw records to closed positions: the :class:`Context` a record is normalized in (pure: no
network, so ``exchange quarantine --retry`` uses it too), the cross-check of the exchange's net
against its components, and the finishing of a window (in-window, one per record key, sorted).
See docs/exchanges.md ("Profit bases").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog

from exchange_adapters.fields import RecordUnusable, text_of
from exchange_adapters.markets import MarketInfo
from reconcile.records import ClosedPosition, ClosedWindow, NetOf, UnusableRecord

log = structlog.get_logger("exchange_adapters")

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
        return {
            "symbol": m.symbol,
            "id": m.id,
            "settle": m.settle,
            "settle_id": m.settle_id,
            "contract_size": text_of(m.contract_size),
        }

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
