"""The words of charging: who asked for a charge (:class:`Source`), what the daemon does with
power (:class:`PowerMode`), and what became of each order (:class:`Outcome`, :class:`ChargeResult`),
of a batch of orders (:class:`Batch`, :class:`SweepBatch`) and of one transaction
(:class:`UnitOutcome`, whose events are logged only after COMMIT).

The steps that produce them are explained in docs/charging.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import structlog

from reconcile.charging.lines import AuditLines

log = structlog.get_logger("reconcile.consumer")


class Source(StrEnum):
    REALTIME = "realtime"
    SWEEP = "sweep"
    HISTORY = "history"
    OPERATOR = "operator"  # `held charge`: an operator's decision on a held row


class PowerMode(StrEnum):
    """``power.mode``: the daemon charges; records what it would charge while hotgo's engine
    charges (the cutover's evidence, see reconcile.charging.shadow); or reconciles orders only."""

    CHARGE = "charge"
    SHADOW = "shadow"
    OFF = "off"


class Outcome(StrEnum):
    CHARGED = "charged"
    SKIPPED_DUPLICATE = "skipped_duplicate"
    NOT_ELIGIBLE = "not_eligible"
    WOULD_CHARGE = "would_charge"  # shadow mode: recorded in the shadow table
    LEG = "leg"  # a closing leg of another row's trade (reconcile.charging.trades): never charged
    HELD = "held"  # possibly a leg, or awaiting the exchange sync: not charged yet


OFF_REASON = "charging is off (power.mode: off)"


@dataclass(frozen=True)
class ChargeResult:
    order_id: int
    outcome: Outcome
    consume_power: Decimal | None = None
    reason: str | None = None
    conflict: bool = False


@dataclass
class Batch:
    """What charging some orders gave: a result per order found, and the orders that could not
    be charged (order id -> error; each logged as ``charge failed``, left for the next sweep)."""

    results: list[ChargeResult] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


@dataclass
class SweepBatch(Batch):
    """The batch of one sweep page: also the page's candidates' (close_time, id) keys in keyset
    order, read before any write - the next page starts after the last; none means the sweep
    is done."""

    keys: list[tuple[datetime, int]] = field(default_factory=list)


@dataclass
class UnitOutcome:
    """What one charging transaction decided; its events are logged after COMMIT."""

    results: list[ChargeResult] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    skips: list[dict[str, Any]] = field(default_factory=list)  # toogo_reconcile_skip rows

    def log(self, lines: AuditLines) -> None:
        lines.write(log, self.events)


__all__ = [
    "OFF_REASON",
    "Batch",
    "ChargeResult",
    "Outcome",
    "PowerMode",
    "Source",
    "SweepBatch",
    "UnitOutcome",
]
