"""What the reconciliation report shows: the period and scope asked for, the figures of one
account or user (what each means: :data:`COLUMNS`), and the report's lines. Plain values, read by
:mod:`reconcile.views.report_queries` and rendered by the ``report`` command. See
docs/reports.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

ZERO = Decimal(0)

#: what each figure means (the command's --help, docs/reports.md)
COLUMNS: dict[str, str] = {
    "trades": "closed orders that are trades (reconcile.charging.trades: one per exchange close)",
    "legs": "closed orders that are the closing leg of another order's trade (never charged)",
    "held": "closed orders held uncharged: possibly a leg, or awaiting the exchange sync",
    "closes_seen": "exchange records the history sync bound (= matched + closed + inserted"
    " + parts + ambiguous)",
    "matched": "records matched to a local order the engine had closed",
    "closed": "records that closed a local order still open",
    "inserted": "records inserted as a local order (a position the local table never saw)",
    "parts": "records bound as a partial close of a local order (no charge)",
    "ambiguous": "records near an order bound to another record (nothing inserted)",
    "charges": "consume rows written (hg_toogo_power_consume), by anyone",
    "charged": "power charged by those consume rows",
    "skipped_duplicates": "orders found already charged and not charged again",
    "refunds": "over-charges refunded by `migrate dedupe --refund` (not reversed since)",
    "refunded": "power those refunds credited",
    "corrections": "correction entries (wallet log power_consume_adjust)",
    "corrected": "their net change of power (negative: a further debit)",
    "profit_mismatches": "matched records whose profit differs from the local order's",
    "quarantined": "exchange records that could not be normalized (first seen)",
    "unseen_closes": "local closes the exchange does not show: closed orders with no record"
    " bound, where the sync has read their stream over their close time",
}


@dataclass(frozen=True)
class Period:
    """[since, until): aware datetimes."""

    since: datetime
    until: datetime


@dataclass(frozen=True)
class Scope:
    user_id: int | None = None
    account_id: int | None = None


@dataclass
class Figures:
    trades: int = 0
    legs: int = 0
    held: int = 0
    closes_seen: int = 0
    matched: int = 0
    closed: int = 0
    inserted: int = 0
    parts: int = 0
    ambiguous: int = 0
    charges: int = 0
    charged: Decimal = ZERO
    skipped_duplicates: int = 0
    refunds: int = 0
    refunded: Decimal = ZERO
    corrections: int = 0
    corrected: Decimal = ZERO
    profit_mismatches: int = 0
    quarantined: int = 0
    unseen_closes: int = 0

    def add(self, other: Figures) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def values(self) -> dict[str, int | Decimal]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Line:
    """One account (``id`` its hg_trading_api_config.id; platform and owner) or one user."""

    id: int | None
    figures: Figures
    platform: str | None = None
    user_id: int | None = None


@dataclass(frozen=True)
class Report:
    period: Period
    scope: Scope
    accounts: list[Line]
    users: list[Line]
    total: Figures


MONEY = frozenset(f.name for f in fields(Figures) if f.type in ("Decimal", Decimal))
Cell = tuple[int | None, int | None]  # (account, user)


def figure(name: str, value: Any) -> int | Decimal:
    """A figure's value as a grouped query returned it: a count, or a sum of money."""
    if name not in MONEY:
        return int(value or 0)
    if isinstance(value, str):  # SQLite: the group's exact decimal texts
        return sum((Decimal(v) for v in value.split()), ZERO)
    return ZERO if value is None else Decimal(value)


__all__ = ["COLUMNS", "MONEY", "Cell", "Figures", "Line", "Period", "Report", "Scope", "figure"]
