"""The charge formula, exact in Decimal (docs/charging.md, "What a charge costs"):
property-based."""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.pricing import Discount, PowerRules, charge_sql, compute_charge
from reconcile.storage.db import Database

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


# -- the same rule as SQL, on the servers that price a page themselves ------------------------

# the column types the SQL reads: hg_trading_order.realized_profit (upstream's MySQL DDL:
# DECIMAL(15,4); its PostgreSQL DDL: NUMERIC(20,8)) and hg_toogo_user.power_discount
PROFIT_TYPE = {"mysql": ("DECIMAL(15,4)", 4), "postgresql": ("NUMERIC(20,8)", 8)}


def _cases(places: int) -> list[tuple[PowerRules, Decimal, Decimal | None]]:
    """Edge cases (half-way roundings, the minimum, discounts out of range, no VIP row), then
    seeded random ones."""

    rng = random.Random(20261202)
    rules = [
        PowerRules(Decimal("0.10"), Decimal("0.01")),
        PowerRules(Decimal("0.0333"), Decimal("0.00000001")),
        PowerRules(Decimal("0.15"), Decimal("0"), vip_discount=False),
        PowerRules(Decimal("1"), Decimal("0.5")),
    ]
    edge_profits = ["0.0001", "0.0005", "0.7920", "1.0000", "12.3456", "99999999999.9999"]
    edge_discounts: list[Decimal | None] = [None, Decimal(0), Decimal("12.50"), Decimal("33.33")]
    edge_discounts += [Decimal("95"), Decimal("100"), Decimal("150"), Decimal("-5")]
    out = [(r, Decimal(p), d) for r in rules for p in edge_profits for d in edge_discounts]
    for _ in range(200):
        profit = Decimal(rng.randint(1, 10 ** (places + 6))).scaleb(-places)
        discount = rng.choice([None, Decimal(rng.randint(0, 10000)).scaleb(-2)])
        out.append((rng.choice(rules), profit, discount))
    return out


async def test_the_sql_rule_prices_exactly_as_compute_charge(server_db: Database) -> None:
    """``charge_sql`` evaluated by the real server on the real column types gives, to the last
    digit, what ``compute_charge`` gives (the server prices the sweep's pages with it)."""
    profit_type, places = PROFIT_TYPE[server_db.dialect.name]
    cases = _cases(places)

    async def evaluate(conn: AsyncConnection) -> list[tuple[Decimal, Decimal, Decimal]]:
        got = []
        for rules, profit, discount in cases:
            sql = charge_sql(rules, "p.v", "d.v")
            d = "NULL" if discount is None else format(discount, "f")
            row = (
                await conn.exec_driver_sql(
                    f"SELECT {sql.original_power}, {sql.discount_rate}, {sql.consume_power} "
                    f"FROM (SELECT CAST({format(profit, 'f')} AS {profit_type}) AS v) p, "
                    f"(SELECT CAST({d} AS DECIMAL(5,2)) AS v) d"
                )
            ).one()
            got.append((Decimal(row[0]), Decimal(row[1]), Decimal(row[2])))
        return got

    got = await server_db.transaction(evaluate, what="evaluate charge_sql")
    mismatches = []
    for (rules, profit, discount), (original, applied, consume) in zip(cases, got, strict=True):
        want = compute_charge(
            profit, rules, Discount(1, Decimal(0) if discount is None else discount)
        )
        if (original, applied, consume) != (
            want.original_power,
            want.discount_rate,
            want.consume_power,
        ):
            mismatches.append((rules, profit, discount, (original, applied, consume), want))
    assert not mismatches, mismatches[:5]
    assert len(cases) > 300
