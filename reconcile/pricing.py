"""The power charge for a profitable order, in exact decimals.

    original = realized_profit × consume_rate
    charge   = original × (1 − power_discount / 100)   when VIP discounts are enabled
    charge   = max(charge, min_consume)
    both quantized to 8 decimal places (the DECIMAL(20,8) columns), ROUND_HALF_UP

Rounding happens once, at the end, on each stored figure; intermediate products are exact.
A discount is clamped to [0, 100] percent. Example from the operators: profit 0.7920 USDT at a
10% rate is 0.0792 power.
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
