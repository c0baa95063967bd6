"""The power charge for a profitable order, in exact decimals.

    original = realized_profit × consume_rate
    charge   = original × (1 − power_discount / 100)   when VIP discounts are enabled
    charge   = max(charge, min_consume)
    both quantized to 8 decimal places (the DECIMAL(20,8) columns), ROUND_HALF_UP

Rounding happens once, at the end, on each stored figure; intermediate products are exact.
A discount is clamped to [0, 100] percent. Example from the operators: profit 0.7920 USDT at a
10% rate is 0.0792 power.

The same rule exists once more, as SQL (:func:`charge_sql`), for the servers that charge a page
with ``INSERT ... SELECT``: MySQL/MariaDB DECIMAL and PostgreSQL NUMERIC arithmetic is exact
here too (a 2-decimal percentage divided by 100 needs 4 decimals), and their ``ROUND`` rounds
half away from zero, which is ROUND_HALF_UP for the positive figures charged.
``tests/test_pricing.py`` checks the two against each other on both servers. Where the rates
come from is reconcile.charging.price_inputs. See docs/charging.md, "What a charge costs".
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext

QUANTUM = Decimal("0.00000001")
ZERO = Decimal(0)
HUNDRED = Decimal(100)


@dataclass(frozen=True)
class PowerRules:
    """The charging parameters, resolved from config or ``hg_toogo_config``."""

    consume_rate: Decimal = Decimal("0.10")
    min_consume: Decimal = Decimal("0.01")
    vip_discount: bool = True


@dataclass(frozen=True)
class PowerOverride:
    """What the configuration fixes of the rules (``power.*``); None: ``hg_toogo_config``'s."""

    consume_rate: Decimal | None = None
    min_consume: Decimal | None = None
    vip_discount: bool = True


@dataclass(frozen=True)
class Discount:
    """A user's VIP data from ``hg_toogo_user`` (absent row: level 1, no discount)."""

    vip_level: int = 1
    power_discount: Decimal = ZERO


@dataclass(frozen=True)
class Charge:
    """What one order costs, with the figures recorded on the consume row."""

    profit: Decimal
    consume_rate: Decimal
    original_power: Decimal
    discount_rate: Decimal
    vip_level: int
    consume_power: Decimal


@dataclass(frozen=True)
class ChargeSQL:
    """:func:`compute_charge` as SQL expressions over a profit and a discount column."""

    original_power: str
    discount_rate: str
    consume_power: str


def _literal(value: Decimal) -> str:
    """An exact decimal literal (never exponent notation, which MySQL reads as a float)."""
    if not value.is_finite():
        raise ValueError(f"not a finite decimal: {value}")
    return format(value, "f")


def charge_sql(rules: PowerRules, profit: str, discount: str) -> ChargeSQL:
    """The charge of :func:`compute_charge` for ``profit`` (> 0) and a user's ``discount``
    (NULL: none), as SQL text. The rules' figures are written as exact literals."""
    rate, minimum = _literal(rules.consume_rate), _literal(rules.min_consume)
    applied = (
        f"(CASE WHEN {discount} > 0 THEN LEAST({discount}, 100) ELSE 0 END)"
        if rules.vip_discount
        else "0"
    )
    charged = f"ROUND({profit} * {rate} * (1 - {applied} / 100), 8)"
    return ChargeSQL(
        original_power=f"ROUND({profit} * {rate}, 8)",
        discount_rate=applied,
        consume_power=f"ROUND(GREATEST({charged}, {minimum}), 8)",
    )


def quantize(value: Decimal) -> Decimal:
    return value.quantize(QUANTUM, rounding=ROUND_HALF_UP)


def compute_charge(profit: Decimal, rules: PowerRules, discount: Discount) -> Charge:
    """The charge for a profitable order. ``profit`` must be > 0."""
    if profit <= 0:
        raise ValueError("only a profitable order is charged")
    with localcontext() as ctx:
        ctx.prec = 60  # exact for DECIMAL(15,4) × DECIMAL(5,4) × DECIMAL(5,2)
        original = profit * rules.consume_rate
        applied = ZERO
        if rules.vip_discount and discount.power_discount > 0:
            applied = min(max(discount.power_discount, ZERO), HUNDRED)
        charged = original * (1 - applied / HUNDRED)
        charged = max(quantize(charged), rules.min_consume)
        return Charge(
            profit=profit,
            consume_rate=rules.consume_rate,
            original_power=quantize(original),
            discount_rate=applied,
            vip_level=discount.vip_level,
            consume_power=quantize(charged),
        )
