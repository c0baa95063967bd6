"""Every adapter on payloads others wrote: the exchanges' docs examples and ccxt 4.5.90's samples.

Each fixture under ``tests/fixtures/exchanges/<platform>/`` (``<name>.json`` the body, ``<name>.md``
its source and changes) is served byte for byte by the fake exchange to the real ccxt client. The
expected record is worked out here from the exchange's own field definitions, written as
arithmetic on the payload's figures - not copied from the adapter's output.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from kits.fake_exchanges import FAKES
from kits.fake_exchanges.harness import at, open_source
from reconcile.records import ClosedPosition, ClosedWindow, NetOf
from tests.exchange_fixtures import FIXTURES, MARKETS, body_of

BASIS_FEES_AND_FUNDING, BASIS_FEES_ONLY = NetOf.FEES_AND_FUNDING, NetOf.FEES
D = Decimal

BTC, ETH, XRP, SUSHI, SLERF = (f"{b}/USDT:USDT" for b in ("BTC", "ETH", "XRP", "SUSHI", "SLERF"))


async def serve(platform: str, name: str, symbol: str, close_ms: int) -> ClosedWindow:
    """The fixture served once, byte for byte, to the adapter's real ccxt client; the window is
    a day either side of the record's close time (one request window on every exchange)."""
    body = body_of(platform, name)
    async with FAKES[platform](markets=MARKETS) as fake:
        fake.serve_body(body)
        async with open_source(fake) as source:
            close = at(close_ms)
            window = await source.fetch_closed(
                symbol, close - timedelta(days=1), close + timedelta(days=1)
            )
        assert fake.served == [body]
    for record in window.records:
        assert_decimal_fields(record)
    return window


def assert_decimal_fields(record: ClosedPosition) -> None:
    """Every amount of a normalized record is a Decimal (never a float or an int)."""
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name in ("size", "close_price", "gross_pnl", "fee", "funding", "net_profit"):
            assert type(value) is Decimal, (f.name, type(value))
        if f.name == "open_price":
            assert value is None or type(value) is Decimal, (f.name, type(value))
        assert not isinstance(value, float), f.name


def position(platform: str, **fields: object) -> ClosedPosition:
    defaults: dict[str, object] = {"platform": platform, "account_id": 1, "open_time": None}
    defaults.update(fields)
    return ClosedPosition(**defaults)  # type: ignore[arg-type]


# --- binance: GET /fapi/v1/userTrades --------------------------------------------------------
# realizedPnl: gross PnL of the fill; commission: a cost (counted negative); no entry price
# (entry = exit - pnl/qty for a long, exit + pnl/qty for a short); no funding in fills.


async def test_binance_docs_example() -> None:
    window = await serve("binance", "docs_account_trade_list", "BTCUSDT", 1569514978020)
    qty, price, pnl = D("0.002"), D("7819.01"), D("-0.91539999")
    fee = -abs(D("-0.07819010"))
    assert window.records == (
        position(
            "binance",
            symbol=BTC,
            direction="short",  # positionSide SHORT
            size=qty,
            close_price=price,
            open_price=price + pnl / qty,  # short: exit + pnl/qty
            gross_pnl=pnl,
            fee=fee,
            funding=D(0),
            net_profit=pnl + fee,
            close_time=at(1569514978020),
            record_key="25851813",
            profit_basis=BASIS_FEES_ONLY,
            funding_known=False,
            exchange_order_ids=("25851813",),
        ),
    )
    assert window.unusable == ()


async def test_binance_ccxt_fetch_my_trades_sample() -> None:
    window = await serve("binance", "ccxt_fetch_my_trades_futures", "BTCUSDT", 1569514978020)
    qty, price, pnl = D("0.002"), D("7819.01"), D("-0.91539999")
    fee = -abs(D("-0.07819010"))
    assert window.records == (
        position(
            "binance",
            symbol=BTC,
            direction="long",  # no positionSide: one-way, SELL closes long
            size=qty,
            close_price=price,
            open_price=price - pnl / qty,
            gross_pnl=pnl,
            fee=fee,
            funding=D(0),
            net_profit=pnl + fee,
            close_time=at(1569514978020),
            record_key="25851813",
            profit_basis=BASIS_FEES_ONLY,
            funding_known=False,
            exchange_order_ids=("25851813",),
        ),
    )


async def test_binance_ccxt_parse_trade_sample() -> None:
    window = await serve("binance", "ccxt_parse_trade_futures", "BTCUSDT", 1612733566708)
    qty, price, pnl = D("0.001"), D("38479.55"), D("-0.00009534")
    fee = -abs(D("-0.00076959"))
    assert window.records == (
        position(
            "binance",
            symbol=BTC,
            direction="long",  # positionSide BOTH, SELL closes a long
            size=qty,
            close_price=price,
            open_price=price - pnl / qty,  # 38479.64534
            gross_pnl=pnl,
            fee=fee,
            funding=D(0),
            net_profit=pnl + fee,
            close_time=at(1612733566708),
            record_key="13809777875",
            profit_basis=BASIS_FEES_ONLY,
            funding_known=False,
            exchange_order_ids=("13809777875",),
        ),
    )


async def test_binance_hedge_mode_close_with_zero_pnl_is_a_close() -> None:
    window = await serve("binance", "variant_hedge_close_zero_pnl", "BTCUSDT", 1612733566708)
    price, fee = D("38479.55"), -abs(D("-0.00076959"))
    assert window.records == (
        position(
            "binance",
            symbol=BTC,
            direction="long",  # SELL on LONG closes the long
            size=D("0.001"),
            close_price=price,
            open_price=price,  # pnl 0: entry = exit
            gross_pnl=D(0),
            fee=fee,
            funding=D(0),
            net_profit=D(0) + fee,
            close_time=at(1612733566708),
            record_key="13809777875",
            profit_basis=BASIS_FEES_ONLY,
            funding_known=False,
            exchange_order_ids=("13809777875",),
        ),
    )


# --- okx: GET /api/v5/account/positions-history -----------------------------------------------
# size = closeTotalPos × ctVal; gross = pnl (+ settledPnl); fee = fee + liqPenalty;
# funding = fundingFee; net = realizedPnl (= pnl + fee + fundingFee + liqPenalty + settledPnl).


async def test_okx_docs_example() -> None:
    window = await serve("okx", "docs_positions_history", "BTC-USDT-SWAP", 1654177174419)
    gross, fee, funding = D("0.0011"), D("-0.0001") + D("0"), D("0")
    assert gross + fee + funding == D("0.001")  # the docs' realizedPnl
    assert window.records == (
        position(
            "okx",
            symbol=BTC,
            direction="long",
            size=D("1") * D("0.01"),  # 1 contract × ctVal
            open_price=D("29783.8999999995535393"),
            close_price=D("29786.5999999789081085"),
            gross_pnl=gross,
            fee=fee,
            funding=funding,
            net_profit=D("0.001"),
            open_time=at(1654177169995),
            close_time=at(1654177174419),
            record_key="452587086133239818:1654177169995",
            profit_basis=BASIS_FEES_AND_FUNDING,
        ),
    )


@pytest.mark.parametrize("name", ["ccxt_parse_position_history"])
async def test_okx_ccxt_parse_position_sample(name: str) -> None:
    window = await serve("okx", name, "SUSHI-USDT-SWAP", 1708354805699)
    gross, fee, funding = D("-0.42"), D("-0.0351036") + D("0"), D("0")
    assert window.records == (
        position(
            "okx",
            symbol=SUSHI,
            direction="short",
            size=D("40") * D("1"),
            open_price=D("1.2462"),
            close_price=D("1.2567"),
            gross_pnl=gross,
            fee=fee,
            funding=funding,
            net_profit=D("-0.4551036"),
            open_time=at(1708351230102),
            close_time=at(1708354805699),
            record_key="666159086676836352:1708351230102",
        ),
    )
    assert window.records[0].net_profit == gross + fee + funding


async def test_okx_ccxt_fetch_positions_history_sample() -> None:
    window = await serve("okx", "ccxt_fetch_positions_history", "XRP-USDT-SWAP", 1711088748170)
    gross, fee, funding = D("27.11999999999988"), D("-1.69566") + D("0"), D("-11.870404179341788")
    assert window.records == (
        position(
            "okx",
            symbol=XRP,
            direction="long",
            size=D("27") * D("100"),  # ctVal 100 XRP
            open_price=D("0.623"),
            close_price=D("0.6330444444444444"),
            gross_pnl=gross,
            fee=fee,
            funding=funding,
            net_profit=D("13.553935820658092"),
            open_time=at(1708735940395),
            close_time=at(1711088748170),
            record_key="681423155054862336:1708735940395",
        ),
    )
    assert window.records[0].net_profit == gross + fee + funding


async def test_okx_zero_closed_size_is_unusable() -> None:
    window = await serve("okx", "variant_zero_size", "SUSHI-USDT-SWAP", 1708354805699)
    assert window.records == ()
    (bad,) = window.unusable
    assert bad.record_key == "666159086676836352:1708351230102"
    assert "closeTotalPos" in bad.reason and bad.close_time == at(1708354805699)
    assert bad.raw["closeTotalPos"] == "0"


# --- gate: GET /api/v4/futures/usdt/position_close --------------------------------------------
# size = accum_size × quanto_multiplier; long: open long_price, close short_price; gross
# pnl_pnl; fee pnl_fee; funding pnl_fund; net = pnl (= pnl_pnl + pnl_fee + pnl_fund).


async def test_gate_docs_example() -> None:
    window = await serve("gate", "docs_position_close", "BTC_USDT", 1546487347_000)
    gross, fee, funding = D("0.00011"), D("0.00001"), D("0.00001")
    assert gross + fee + funding == D("0.00013")  # the docs' pnl
    assert window.records == (
        position(
            "gate",
            symbol=BTC,
            direction="long",
            size=D("100") * D("0.0001"),
            open_price=D("2026.87"),
            close_price=D("2544.4"),
            gross_pnl=gross,
            fee=fee,
            funding=funding,
            net_profit=D("0.00013"),
            open_time=at(1546487347_000),
            close_time=at(1546487347_000),
            record_key="BTC_USDT:long:1546487347:1546487347",
        ),
    )


@pytest.mark.parametrize("name", ["ccxt_parse_position_history", "ccxt_fetch_positions_history"])
async def test_gate_ccxt_samples(name: str) -> None:
    window = await serve("gate", name, "SLERF_USDT", 1711279263_000)
    gross, fee, funding = D("-22.7187"), D("-0.06527125"), D("-0.63305227")
    assert gross + fee + funding == D("-23.41702352")  # ccxt's pnl
    assert window.records == (
        position(
            "gate",
            symbol=SLERF,
            direction="long",
            size=D("100") * D("1"),
            open_price=D("0.766306"),
            close_price=D("0.539119"),
            gross_pnl=gross,
            fee=fee,
            funding=funding,
            net_profit=D("-23.41702352"),
            open_time=at(1711037985_000),
            close_time=at(1711279263_000),
            record_key="SLERF_USDT:long:1711037985:1711279263",
        ),
    )


async def test_gate_empty_pnl_pnl_takes_costs_out_of_the_net() -> None:
    window = await serve("gate", "variant_empty_pnl_pnl", "SLERF_USDT", 1711279263_000)
    net, fee, funding = D("-23.41702352"), D("-0.06527125"), D("-0.63305227")
    (record,) = window.records
    assert record.net_profit == net  # not -24.11534704 (pnl + fee + funding again)
    assert record.gross_pnl == net - fee - funding == D("-22.7187")
    assert (record.fee, record.funding) == (fee, funding)


async def test_gate_zero_closed_size_is_unusable() -> None:
    window = await serve("gate", "variant_zero_size", "SLERF_USDT", 1711279263_000)
    assert window.records == ()
    (bad,) = window.unusable
    assert bad.record_key == "SLERF_USDT:long:1711037985:1711279263"
    assert "accum_size" in bad.reason


# --- bitget: GET /api/v2/mix/position/history-position ----------------------------------------
# size closeTotalPos; gross pnl; fee openFee + closeFee; funding totalFunding;
# net = netProfit (= pnl + openFee + closeFee + totalFunding); times ctime/utime or cTime/uTime.


async def test_bitget_docs_example_net_wins_and_disagreement_is_logged() -> None:
    with capture_logs() as logs:
        window = await serve("bitget", "docs_history_position", "BTCUSDT", 1988824171000)
    gross, fee, funding = D("14.1"), D("0.01") + D("0.01"), D("0.1")
    assert window.records == (
        position(
            "bitget",
            symbol=BTC,
            direction="long",
            size=D("0.01"),
            open_price=D("32000"),
            close_price=D("32500"),
            gross_pnl=gross,
            fee=fee,
            funding=funding,
            net_profit=D("12.1"),  # netProfit
            open_time=at(1988824171000),
            close_time=at(1988824171000),  # cTime / uTime
            record_key="BTCUSDT:long:1988824171000:1988824171000",  # no positionId
        ),
    )
    (event,) = [e for e in logs if e["event"] == "profit components disagree"]
    assert event["exchange_net"] == "12.1" and D(event["components_sum"]) == gross + fee + funding


@pytest.mark.parametrize(
    "name", ["ccxt_fetch_positions_history_position", "ccxt_parse_position_history"]
)
async def test_bitget_ccxt_btc_samples(name: str) -> None:
    with capture_logs() as logs:
        window = await serve("bitget", name, "BTCUSDT", 1700720700400)
    gross, fee, funding = D("-0.0007"), D("-0.02236326") + D("-0.02236284"), D("0")
    assert gross + fee + funding == D("-0.0454261")  # ccxt's netProfit
    assert window.records == (
        position(
            "bitget",
            symbol=BTC,
            direction="long",
            size=D("0.001"),
            open_price=D("37272.1"),
            close_price=D("37271.4"),
            gross_pnl=gross,
            fee=fee,
            funding=funding,
            net_profit=D("-0.0454261"),
            open_time=at(1700720651684),
            close_time=at(1700720700400),  # ctime / utime
            record_key="BTCUSDT:long:1700720651684:1700720700400",
        ),
    )
    assert not [e for e in logs if e["event"] == "profit components disagree"]


async def test_bitget_ccxt_xrp_sample() -> None:
    with capture_logs() as logs:
        window = await serve("bitget", "ccxt_fetch_positions_history", "XRPUSDT", 1709667583395)
    gross, fee, funding = D("-0.62976205"), D("-0.00389802") + D("-0.00352794"), D("-0.01638")
    assert abs(gross + fee + funding - D("-0.65356802")) == D("1E-8")  # not beyond 1e-8
    assert window.records == (
        position(
            "bitget",
            symbol=XRP,
            direction="long",
            size=D("10"),
            open_price=D("0.64967"),
            close_price=D("0.58799"),
            gross_pnl=gross,
            fee=fee,
            funding=funding,
            net_profit=D("-0.65356802"),
            open_time=at(1709590322199),
            close_time=at(1709667583395),
            record_key="XRPUSDT:long:1709590322199:1709667583395",
        ),
    )
    assert not [e for e in logs if e["event"] == "profit components disagree"]


async def test_bitget_empty_open_fee_is_unusable_not_zero() -> None:
    window = await serve("bitget", "variant_empty_open_fee", "BTCUSDT", 1700720700400)
    assert window.records == ()  # never net -0.02306284 (openFee read as 0)
    (bad,) = window.unusable
    assert "openFee" in bad.reason
    assert bad.record_key == "BTCUSDT:long:1700720651684:1700720700400"
    assert bad.close_time == at(1700720700400)


# --- bybit: GET /v5/position/closed-pnl --------------------------------------------------------
# side is the closing order's (Sell closes a long); gross = cumExitValue − cumEntryValue (long);
# net = closedPnl (net of open and close fees, funding excluded); fee = closedPnl − gross when
# openFee/closeFee are absent; funding not in the endpoint.


async def test_bybit_docs_example_gross_from_cumulative_values() -> None:
    window = await serve("bybit", "docs_closed_pnl", "ETHUSDT", 1672214887231)
    gross = D("3541.795") - D("3584.9255")  # long: cumExitValue − cumEntryValue
    assert gross == D("-43.1305")  # not (1180.59833333 − 1194.97516667) × 3 = -43.13050002
    net = D("-47.4065323")
    order = "5a373bfe-188d-4913-9c81-d57ab5be8068"
    assert window.records == (
        position(
            "bybit",
            symbol=ETH,
            direction="long",
            size=D("3"),
            open_price=D("1194.97516667"),
            close_price=D("1180.59833333"),
            gross_pnl=gross,
            fee=net - gross,
            funding=D(0),
            net_profit=net,
            close_time=at(1672214887231),
            record_key=order,
            profit_basis=BASIS_FEES_ONLY,
            funding_known=False,
            exchange_order_ids=(order,),
        ),
    )


@pytest.mark.parametrize("name", ["ccxt_parse_position_history", "ccxt_fetch_positions_history"])
async def test_bybit_ccxt_samples(name: str) -> None:
    window = await serve("bybit", name, "XRPUSDT", 1712717265566)
    gross = D("1.815") - D("1.8135")  # long: cumExitValue − cumEntryValue
    net = D("-0.00049568")
    order = "071749f3-a9fa-427b-b5ca-27b2f52b81de"
    assert window.records == (
        position(
            "bybit",
            symbol=XRP,
            direction="long",
            size=D("3"),
            open_price=D("0.6045"),
            close_price=D("0.605"),
            gross_pnl=gross,
            fee=net - gross,
            funding=D(0),
            net_profit=net,
            close_time=at(1712717265566),
            record_key=order,
            profit_basis=BASIS_FEES_ONLY,
            funding_known=False,
            exchange_order_ids=(order,),
        ),
    )


async def test_bybit_zero_closed_size_is_unusable() -> None:
    window = await serve("bybit", "variant_zero_size", "XRPUSDT", 1712717265566)
    assert window.records == ()
    (bad,) = window.unusable
    assert bad.record_key == "071749f3-a9fa-427b-b5ca-27b2f52b81de"
    assert "closedSize" in bad.reason


def test_every_fixture_has_a_test_and_names_its_source() -> None:
    text = Path(__file__).read_text()
    bodies = sorted(FIXTURES.glob("*/*.json"))
    assert len(bodies) >= 10
    for body in bodies:
        assert f'"{body.stem}"' in text, body
        meta = body.with_suffix(".md").read_text()
        assert "## Source" in meta and "## Changes" in meta
        assert "http" in meta or "ccxt 4.5.90" in meta
