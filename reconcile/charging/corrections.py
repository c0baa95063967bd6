"""Corrections as entries, never edits: a charged order whose realized profit the exchange
reports differently (``power.corrections: adjust``).

The charge an order has cost so far is its consume row's ``consume_power`` plus the deltas of
its corrections; the profit it was priced on is the last correction's ``new_profit`` (or the
consume row's ``profit_amount``). When the history sync sees the order's exchange record with
another profit, the order is priced again at that profit by the same rule
(``pricing.compute_charge``, with the consume rate and the user's discount as the consume row
recorded them, so only what the profit changed changes; a profit <= 0 costs nothing) and the
difference is posted through ``reconcile.charging.ledger``: a further debit or a credit, its own
``power_consume_adjust`` ledger row, and one ``toogo_reconcile_correction`` row (order,
revision, old and new profit and charge, delta, the ledger row's id).

What is never rewritten: the consume row, and ``hg_trading_order`` (``realized_profit`` keeps
the engine's figure, ``power_amount`` keeps mirroring the consume row, as the consumer and the
audit's ``consume_flag`` check hold it).

Exactly once: ``revision`` is the number of the order's corrections + 1, and
``uk_correction_revision (order_id, revision)`` decides a race. The same exchange figure seen
again matches the last applied profit and writes nothing; a later different figure is the next
revision. Two syncs deciding the same revision at once: the second INSERT meets the key, its
transaction (ledger row and wallet move included) rolls back and runs again, and then finds the
revision applied. A revision whose charge equals the charge so far (the minimum applies to
both figures) is not an entry.

One transaction per batch: read the consume rows and corrections (plain reads), decide, lock
the wallets in user-id order (``ledger.lock``), post the entries, insert the correction rows,
commit; ``power corrected`` is logged after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import ledger
from reconcile.charging.lines import ONE_BY_ONE, AuditLines
from reconcile.charging.pricing import Discount, PowerRules, compute_charge
from reconcile.storage.db import Database
from reconcile.storage.schema import correction, power_consume, trading_order

log = structlog.get_logger("reconcile.corrections")

#: orders per transaction when corrections re-price charged orders
CORRECTED_PER_TRANSACTION = 500
ZERO = Decimal(0)


class CorrectionMode(StrEnum):
    """``power.corrections``: what a different exchange profit of a charged order does."""

    LOG = "log"  # a ``profit mismatch`` line, nothing written (the default)
    ADJUST = "adjust"  # a correction entry


@dataclass(frozen=True)
class Sighting:
    """What an exchange record says of a closed local order it is bound to."""

    order_id: int
    profit: Decimal  # as hg_trading_order.realized_profit would hold it
    record_key: str


@dataclass(frozen=True)
class _Basis:
    """What an order has been charged so far, and on what."""

    user_id: int
    order_sn: str
    profit: Decimal
    charge: Decimal
    revision: int  # of the last correction; 0: none
    rules: PowerRules
    discount: Discount


@dataclass(frozen=True)
class Correction:
    order_id: int
    user_id: int
    order_sn: str
    revision: int
    record_key: str
    old_profit: Decimal
    new_profit: Decimal
    old_charge: Decimal
    new_charge: Decimal

    @property
    def delta(self) -> Decimal:
        """> 0: a further debit; < 0: a credit."""
        return self.new_charge - self.old_charge


_Decided = tuple[list[Correction], list[tuple[str, dict[str, Any]]]]


class Corrector:
    """Posts the corrections that exchange sightings call for, each once."""

    def __init__(self, db: Database, rules: PowerRules, lines: AuditLines = ONE_BY_ONE) -> None:
        self.db = db
        self.rules = rules
        self.lines = lines

    async def apply(self, sightings: Sequence[Sighting]) -> list[Correction]:
        """Correct the charged orders among ``sightings`` whose profit differs from the one
        their charge is priced on; what was applied."""
        latest = {s.order_id: s for s in sightings}  # one figure per order: the last seen
        ids = sorted(latest)
        applied: list[Correction] = []
        for start in range(0, len(ids), CORRECTED_PER_TRANSACTION):
            chunk = [latest[i] for i in ids[start : start + CORRECTED_PER_TRANSACTION]]

            async def unit(conn: AsyncConnection, chunk: list[Sighting] = chunk) -> _Decided:
                return await self._correct(conn, chunk)

            done, events = await self.db.transaction(
                unit,
                what="correct charges",
                retry_duplicate="correction applied concurrently",
                orders=len(chunk),
            )
            self.lines.write(log, events)  # after COMMIT
            applied.extend(done)
        return applied

    async def _correct(self, conn: AsyncConnection, sightings: list[Sighting]) -> _Decided:
        bases = await _bases(conn, [s.order_id for s in sightings], self.rules)
        todo: list[Correction] = []
        for s in sightings:
            basis = bases.get(s.order_id)
            if basis is None or s.profit == basis.profit:
                continue  # not charged, or nothing new
            new_charge = (
                compute_charge(s.profit, basis.rules, basis.discount).consume_power
                if s.profit > 0
                else ZERO
            )
            if new_charge == basis.charge:
                continue
            todo.append(
                Correction(
                    s.order_id,
                    basis.user_id,
                    basis.order_sn,
                    basis.revision + 1,
                    s.record_key,
                    basis.profit,
                    s.profit,
                    basis.charge,
                    new_charge,
                )
            )
        if not todo:
            return [], []
        now = self.db.now()
        balances = await ledger.lock(self.db, conn, [c.user_id for c in todo])
        entries = [
            ledger.Entry(
                c.user_id,
                c.order_id,
                c.order_sn,
                -c.delta,
                remark=f"power consume adjust: profit {_plain(c.old_profit)} -> "
                f"{_plain(c.new_profit)} (revision {c.revision})",
            )
            for c in todo
        ]
        posted, ids = await ledger.post(
            conn, entries, balances, change_type=ledger.ADJUST, now=now, returning=True
        )
        rows = [
            {
                "order_id": c.order_id,
                "user_id": c.user_id,
                "revision": c.revision,
                "order_sn": c.order_sn,
                "record_key": c.record_key[:128],
                "old_profit": c.old_profit,
                "new_profit": c.new_profit,
                "old_charge": c.old_charge,
                "new_charge": c.new_charge,
                "delta": c.delta,
                "wallet_log_id": ids[(c.user_id, c.order_id)],
                "created_at": now,
            }
            for c in todo
        ]
        await conn.execute(correction.insert(), rows)  # uk_correction_revision decides a race
        events = [
            (
                "power corrected",
                {
                    "user_id": c.user_id,
                    "order_id": c.order_id,
                    "order_sn": c.order_sn,
                    "record_key": c.record_key,
                    "revision": c.revision,
                    "old_profit": c.old_profit,
                    "new_profit": c.new_profit,
                    "old_charge": c.old_charge,
                    "new_charge": c.new_charge,
                    "delta": c.delta,
                    "before": p.before,
                    "after": p.after,
                    "wallet_log_id": row["wallet_log_id"],
                },
            )
            for c, p, row in zip(todo, posted, rows, strict=True)
        ]
        return todo, events


def _plain(value: Decimal) -> str:
    """9.50000000 -> 9.5 (for a remark)."""
    return format(value.normalize(), "f")


async def _bases(
    conn: AsyncConnection, order_ids: list[int], rules: PowerRules
) -> dict[int, _Basis]:
    """The charged orders among ``order_ids``, each with what it has cost so far."""
    c, o, k = power_consume.c, trading_order.c, correction.c
    consumes = await conn.execute(
        select(
            c.order_id,
            c.user_id,
            c.order_sn,
            c.profit_amount,
            c.consume_power,
            c.consume_rate,
            c.discount_rate,
            c.vip_level,
        )
        .join_from(power_consume, trading_order, and_(o.id == c.order_id, o.user_id == c.user_id))
        .where(c.order_id.in_(order_ids))
        .order_by(c.id)
    )
    bases: dict[int, _Basis] = {}
    for r in consumes:  # the newest consume row wins, as in the consumer
        priced = PowerRules(r.consume_rate, rules.min_consume, vip_discount=True)
        discount = Discount(r.vip_level, r.discount_rate)
        bases[r.order_id] = _Basis(
            r.user_id, r.order_sn, r.profit_amount, r.consume_power, 0, priced, discount
        )
    if not bases:
        return bases
    corrections = await conn.execute(
        select(k.order_id, k.revision, k.new_profit, k.new_charge)
        .where(k.order_id.in_(sorted(bases)))
        .order_by(k.order_id, k.revision)
    )
    for k_row in corrections:
        bases[k_row.order_id] = replace(
            bases[k_row.order_id],
            profit=k_row.new_profit,
            charge=k_row.new_charge,
            revision=k_row.revision,
        )
    return bases


__all__ = ["Correction", "CorrectionMode", "Corrector", "Sighting"]
