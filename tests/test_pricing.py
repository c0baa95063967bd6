"""The charge formula, exact in Decimal (DESIGN.md): property-based."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile.pricing import Discount, PowerRules, compute_charge

Q = Decimal("0.00000001")
profits = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("99999999999.9999"), places=4)
rates = st.decimals(min_value=Decimal("0"), max_value=Decimal("1"), places=4)
discounts = st.decimals(min_value=Decimal("0"), max_value=Decimal("100"), places=2)
minimums = st.decimals(min_value=Decimal("0"), max_value=Decimal("1"), places=8)


def test_the_operators_example() -> None:
    charge = compute_charge(
        Decimal("0.7920"), PowerRules(Decimal("0.10"), Decimal("0.01")), Discount()
    )
    assert charge.consume_power == Decimal("0.07920000")
    assert charge.original_power == Decimal("0.07920000")
    assert charge.discount_rate == 0


def test_minimum_applies_after_discount() -> None:
    rules = PowerRules(Decimal("0.10"), Decimal("0.01"))
    assert compute_charge(Decimal("0.0500"), rules, Discount()).consume_power == Decimal("0.01")
    # 1.0000 × 0.10 = 0.1 → 95% off = 0.005 → raised to the minimum 0.01
    c = compute_charge(Decimal("1.0000"), rules, Discount(4, Decimal("95")))
    assert (c.original_power, c.consume_power, c.discount_rate) == (
        Decimal("0.1"),
        Decimal("0.01"),
        Decimal("95"),
    )


def test_discount_ignored_when_disabled_and_clamped() -> None:
    off = PowerRules(Decimal("0.10"), Decimal("0"), vip_discount=False)
    assert compute_charge(Decimal("10"), off, Discount(5, Decimal("50"))).consume_power == 1
    on = PowerRules(Decimal("0.10"), Decimal("0"))
    assert compute_charge(Decimal("10"), on, Discount(5, Decimal("150"))).consume_power == 0


def test_rounding_is_half_up_at_8_places() -> None:
    rules = PowerRules(Decimal("0.1235"), Decimal("0"))
    # 0.0001 × 0.1235 = 0.00001235 exactly; with 50% off 0.000006175 → 0.00000618 (half up)
    c = compute_charge(Decimal("0.0001"), rules, Discount(2, Decimal("50")))
    assert c.consume_power == Decimal("0.00000618")


def test_a_losing_order_is_refused() -> None:
    with pytest.raises(ValueError, match="profitable"):
        compute_charge(Decimal("0"), PowerRules(), Discount())


@given(profit=profits, rate=rates, discount=discounts, minimum=minimums, vip=st.booleans())
def test_formula(
    profit: Decimal, rate: Decimal, discount: Decimal, minimum: Decimal, vip: bool
) -> None:
    rules = PowerRules(rate, minimum, vip_discount=vip)
    c = compute_charge(profit, rules, Discount(3, discount))
    # independent restatement with integer arithmetic in units of 1e-14 (profit 4 dp × rate 4
    # dp × (100 - discount) 2 dp / 100): no Decimal context involved
    p, r, d = int(profit * 10**4), int(rate * 10**4), int(discount * 100) if vip else 0
    exact_original = Decimal(p * r) / Decimal(10**8)
    exact_charged = Decimal(p * r * (10000 - d)) / Decimal(10**12)
    expected = max(exact_charged.quantize(Q, rounding=ROUND_HALF_UP), minimum)
    assert c.original_power == exact_original.quantize(Q, rounding=ROUND_HALF_UP)
    assert c.consume_power == expected
    assert c.consume_power.as_tuple().exponent >= -8
    assert c.consume_power >= minimum
    assert c.discount_rate == (discount if vip and discount > 0 else 0)
    assert c.consume_power <= max(c.original_power, minimum)
