"""Each exchange's real record shapes normalized into ClosedPosition, through real ccxt.

Expected values are worked out by hand from the raw strings: gross/net PnL, fee and funding
signs, direction (okx one-way ``net``, bybit's inverted side, binance one-way vs hedge), sizes
via contract size, times, record keys.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from kits.fake_exchanges import FakeBinance, FakeBitget, FakeBybit, FakeGate, FakeOkx
from kits.fake_exchanges import binance as bn
from kits.fake_exchanges import bitget as bg
from kits.fake_exchanges import bybit as by
from kits.fake_exchanges import gate as gt
from kits.fake_exchanges import okx as ok
from kits.fake_exchanges.harness import HOUR_MS, T0, T0_MS, at, open_source
from reconcile.records import ProfitBasis, profit_of

D = Decimal
SINCE, UNTIL = T0 - timedelta(days=1), T0 + timedelta(hours=1)


async def test_binance_groups_closing_fills_by_order() -> None:
    async with FakeBinance() as fake:
        fake.records += [
            # opening fills: realizedPnl 0, never a closed position
            bn.fill(
                order_id=5001,
                side="BUY",
                price="60000",
                qty="0.01",
                realized_pnl="0",
                commission="-0.24",
                time=T0_MS - 2 * HOUR_MS,
            ),
            # one closing SELL order in one-way mode, two fills; commission sign varies
            bn.fill(
                order_id=5002,
                side="SELL",
                price="61000",
                qty="0.004",
                realized_pnl="4.0",
                commission="-0.0976",
                time=T0_MS,
            ),
            bn.fill(
                order_id=5002,
                side="SELL",
                price="61010",
                qty="0.006",
                realized_pnl="6.06",
                commission="0.146424",
                time=T0_MS + 5,
            ),
            # hedge mode: closing a SHORT with a BUY; one fill's fee paid in BNB
            bn.fill(
                order_id=6001,
                side="BUY",
                position_side="SHORT",
                price="59000",
                qty="0.02",
                realized_pnl="20",
                commission="-0.472",
                time=T0_MS + 60_000,
            ),
            bn.fill(
                order_id=6001,
                side="BUY",
                position_side="SHORT",
                price="59000",
                qty="0.01",
                realized_pnl="10",
                commission="0.00035",
                commission_asset="BNB",
                time=T0_MS + 60_001,
            ),
        ]
        async with open_source(fake) as source:
            long_, short = (await source.fetch_closed("BTCUSDT", SINCE, UNTIL)).records

    assert long_.platform == "binance" and long_.account_id == 1
    assert long_.symbol == "BTC/USDT:USDT"
    assert long_.direction == "long"
    assert long_.record_key == "5002"
    assert long_.size == D("0.010")
    assert long_.close_price == D("61006")
    assert long_.open_price == D("60000")
    assert long_.gross_pnl == D("10.06")
    assert long_.fee == D("-0.244024")
    assert long_.funding == D(0)
    assert long_.net_profit == D("9.815976")
    assert long_.open_time is None
    assert long_.close_time == at(T0_MS + 5)
    assert [f["id"] for f in long_.raw["fills"]] == [
        r["id"] for r in fake.records if r["orderId"] == 5002
    ]

    assert short.direction == "short" and short.record_key == "6001"
    assert short.size == D("0.03") and short.close_price == D("59000")
    assert short.open_price == D("60000")
    assert short.gross_pnl == D("30") and short.fee == D("-0.472")  # the BNB fee is not USDT
    assert short.net_profit == D("29.528")
    assert short.close_time == at(T0_MS + 60_001)


async def test_okx_direction_contract_size_and_reused_pos_id() -> None:
    async with FakeOkx() as fake:
        fake.records += [
            # one-way mode: posSide "net", the direction field says long
            ok.position(
                pos_id="681423155054862336",
                direction="long",
                open_px="60000",
                close_px="61000",
                close_total_pos="3",
                pnl="30",
                fee="-0.9",
                funding_fee="-0.25",
                c_time=T0_MS - 2 * HOUR_MS,
                u_time=T0_MS,
            ),
            # the same posId reused for a later position: a different record
            ok.position(
                pos_id="681423155054862336",
                direction="short",
                open_px="61500",
                close_px="61000",
                close_total_pos="2",
                pnl="10",
                fee="-0.61",
                funding_fee="0.02",
                c_time=T0_MS + 60_000,
                u_time=T0_MS + 120_000,
            ),
            # hedge mode, liquidated: the penalty counts as a fee
            ok.position(
                pos_id="700000000000000001",
                direction="short",
                pos_side="short",
                open_px="58000",
                close_px="60000",
                close_total_pos="1",
                pnl="-20",
                fee="-0.3",
                funding_fee="0",
                liq_penalty="-1.5",
                close_type="3",
                c_time=T0_MS - 5 * HOUR_MS,
                u_time=T0_MS + 180_000,
            ),
        ]
        async with open_source(fake) as source:
            first, second, liquidated = (
                await source.fetch_closed("BTC-USDT-SWAP", SINCE, UNTIL)
            ).records

    assert first.direction == "long"
    assert first.size == D("0.03")  # 3 contracts × ctVal 0.01
    assert (first.open_price, first.close_price) == (D("60000"), D("61000"))
    assert (first.gross_pnl, first.fee, first.funding) == (D("30"), D("-0.9"), D("-0.25"))
    assert first.net_profit == D("28.85") == D(first.raw["realizedPnl"])
    assert first.open_time == at(T0_MS - 2 * HOUR_MS) and first.close_time == T0
    assert first.record_key == f"681423155054862336:{T0_MS - 2 * HOUR_MS}"

    assert second.direction == "short" and second.record_key != first.record_key
    assert second.net_profit == D("9.41")

    assert liquidated.direction == "short"
    assert liquidated.fee == D("-1.8") and liquidated.net_profit == D("-21.8")
    assert liquidated.net_profit == D(liquidated.raw["realizedPnl"])
    assert profit_of(liquidated, ProfitBasis.GROSS) == D("-20")


async def test_gate_prices_by_side_and_composite_key() -> None:
    async with FakeGate() as fake:
        fake.records += [
            gt.closed(
                side="long",
                long_price="60000",
                short_price="61000",
                accum_size="100",
                pnl_pnl="10",
                pnl_fee="-0.3",
                pnl_fund="-0.05",
                first_open_time=T0_MS // 1000 - 7200,
                time=T0_MS // 1000,
            ),
            gt.closed(
                side="short",
                long_price="59000",
                short_price="60000",
                accum_size="250",
                pnl_pnl="25",
                pnl_fee="-0.74",
                pnl_fund="0.12",
                first_open_time=T0_MS // 1000 - 600,
                time=T0_MS // 1000 + 60,
            ),
        ]
        async with open_source(fake) as source:
            long_, short = (await source.fetch_closed("BTC_USDT", SINCE, UNTIL)).records

    assert long_.direction == "long"
    assert (long_.open_price, long_.close_price) == (D("60000"), D("61000"))
    assert long_.size == D("0.01")  # 100 contracts × quanto_multiplier 0.0001
    assert (long_.gross_pnl, long_.fee, long_.funding) == (D("10"), D("-0.3"), D("-0.05"))
    assert long_.net_profit == D("9.65") == D(long_.raw["pnl"])
    assert long_.open_time == at(T0_MS - 7_200_000) and long_.close_time == T0
    assert long_.record_key == f"BTC_USDT:long:{T0_MS // 1000 - 7200}:{T0_MS // 1000}"

    assert short.direction == "short"
    assert (short.open_price, short.close_price) == (D("60000"), D("59000"))
    assert short.size == D("0.025")
    assert short.net_profit == D("24.38")


async def test_bitget_fees_funding_and_position_id() -> None:
    async with FakeBitget() as fake:
        fake.records += [
            bg.closed(
                position_id="1322441328637100049",
                hold_side="long",
                open_price="107003.7",
                close_price="107005.4",
                size="0.0001",
                pnl="0.00017",
                open_fee="-0.00642022",
                close_fee="-0.00642032",
                funding="0",
                ctime=T0_MS - 17_263,
                utime=T0_MS,
            ),
            bg.closed(
                position_id="1322441328637100050",
                hold_side="short",
                open_price="0.64967",
                close_price="0.58799",
                size="10",
                pnl="0.6168",
                open_fee="-0.00389802",
                close_fee="-0.00352794",
                funding="-0.01638",
                ctime=T0_MS - HOUR_MS,
                utime=T0_MS + 1_000,
            ),
        ]
        async with open_source(fake) as source:
            long_, short = (await source.fetch_closed("BTC/USDT", SINCE, UNTIL)).records

    assert long_.direction == "long" and long_.record_key == "1322441328637100049"
    assert long_.size == D("0.0001")
    assert long_.gross_pnl == D("0.00017") and long_.fee == D("-0.01284054")
    assert long_.net_profit == D("-0.01267054") == D(long_.raw["netProfit"])
    assert long_.open_time == at(T0_MS - 17_263) and long_.close_time == T0
    assert short.direction == "short"
    assert short.funding == D("-0.01638")
    assert short.net_profit == D(short.raw["netProfit"])


async def test_bybit_inverted_side_and_fee_derivation() -> None:
    async with FakeBybit() as fake:
        fake.records += [
            # "Sell" closed a long; closedPnl is net of both fees
            by.closed(
                order_id="071749f3-a9fa-427b-b5ca-27b2f52b81de",
                side="Sell",
                entry="60000",
                exit_="61000",
                size="0.01",
                closed_pnl="9.4",
                open_fee="0.3",
                close_fee="0.3",
                created=T0_MS,
            ),
            # "Buy" closed a short; an older record without fee fields: derive from prices
            by.closed(
                order_id="18f1dd5e-0000-4000-8000-000000000001",
                side="Buy",
                entry="3000",
                exit_="2900",
                size="0.5",
                closed_pnl="49.7",
                created=T0_MS + 30_000,
            ),
        ]
        async with open_source(fake) as source:
            long_, short = (await source.fetch_closed("BTCUSDT", SINCE, UNTIL)).records

    assert long_.direction == "long"
    assert long_.record_key == "071749f3-a9fa-427b-b5ca-27b2f52b81de"
    assert (long_.open_price, long_.close_price, long_.size) == (D("60000"), D("61000"), D("0.01"))
    assert (long_.gross_pnl, long_.fee, long_.funding) == (D("10.0"), D("-0.6"), D(0))
    assert long_.net_profit == D("9.4") == D(long_.raw["closedPnl"])
    assert long_.open_time is None and long_.close_time == T0

    assert short.direction == "short"
    assert short.gross_pnl == D("50.0") and short.fee == D("-0.3")
    assert short.net_profit == D("49.7")


async def test_times_are_aware_utc_and_amounts_decimal() -> None:
    async with FakeOkx() as fake:
        fake.records += (
            ok.position(
                pos_id="1",
                direction="long",
                open_px="0.623",
                close_px="0.6330444444444444",
                close_total_pos="27",
                pnl="27.11999999999988",
                fee="-1.69566",
                funding_fee="-11.870404179341788",
                c_time=T0_MS - 1,
                u_time=T0_MS,
            ),
        )
        async with open_source(fake) as source:
            (position,) = (await source.fetch_closed("BTC_USDT", SINCE, UNTIL)).records
    for name in ("size", "open_price", "close_price", "gross_pnl", "fee", "funding", "net_profit"):
        assert type(getattr(position, name)) is Decimal, name
    assert position.close_price == D("0.6330444444444444")  # exact, not a float round-trip
    assert position.net_profit == D("13.553935820658092")
    assert position.close_time.utcoffset() == timedelta(0)
    assert position.open_time is not None and position.open_time.tzinfo is not None
