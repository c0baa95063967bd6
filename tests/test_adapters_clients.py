"""Symbol mapping, base_url override, and the client registry: one ccxt client per
(platform, API account) shared by every robot on it, markets loaded once, clean shutdown."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import ccxt.async_support as ccxt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange_adapters.binance import SPEC as BINANCE
from exchange_adapters.budgets import BudgetOptions
from exchange_adapters.bybit import SPEC as BYBIT
from exchange_adapters.errors import UnknownSymbol
from exchange_adapters.options import CredentialEnv
from exchange_adapters.registry import (
    ExchangeRegistry,
    closed_positions_for_account,
    position_to_json,
)
from exchange_adapters.symbols import to_unified
from exchange_adapters.transport import build_exchange, override_hosts
from kits.fake_exchanges import FAKES, FakeBinance, FakeBybit, FakeOkx, Fault
from kits.fake_exchanges.harness import (
    HOUR_MS,
    T0,
    T0_MS,
    account_for,
    closed_record,
    fast_options,
)
from reconcile.errors import ConfigError
from reconcile.records import Secret

SINCE, UNTIL = T0 - timedelta(days=1), T0

# --- symbols ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("robot", "unified"),
    [
        ("BTC_USDT", "BTC/USDT:USDT"),
        ("BTCUSDT", "BTC/USDT:USDT"),
        ("BTC-USDT", "BTC/USDT:USDT"),
        ("BTC/USDT", "BTC/USDT:USDT"),
        ("BTC-USDT-SWAP", "BTC/USDT:USDT"),
        ("BTC/USDT:USDT", "BTC/USDT:USDT"),
        ("btc_usdt", "BTC/USDT:USDT"),
        (" ETHUSDT ", "ETH/USDT:USDT"),
        ("1000PEPEUSDT", "1000PEPE/USDT:USDT"),
        ("BTCUSDT_UMCBL", "BTC/USDT:USDT"),
        ("ETH_USDC", "ETH/USDC:USDC"),
    ],
)
def test_robot_symbols_map_to_unified(robot: str, unified: str) -> None:
    assert to_unified(robot) == unified


@pytest.mark.parametrize(
    "robot",
    [
        "",
        "BTC",
        "USDT",
        "BTCEUR",
        "BTC_EUR",
        "BTC/USDT:BTC",
        "BTC__USDT",
        "BTC USDT",
        "BTC/USD:USD",
        "BTC-USDT-240329",
    ],
)
def test_unmappable_symbols_say_so(robot: str) -> None:
    with pytest.raises(UnknownSymbol, match="cannot map robot symbol"):
        to_unified(robot)


@given(
    base=st.from_regex(r"[A-Z0-9]{1,12}", fullmatch=True).filter(
        lambda b: not b.endswith(("USDT", "USDC")) and b not in ("USDT", "USDC")
    ),
    quote=st.sampled_from(["USDT", "USDC"]),
    form=st.sampled_from(
        ["{b}_{q}", "{b}{q}", "{b}-{q}", "{b}/{q}", "{b}-{q}-SWAP", "{b}/{q}:{q}"]
    ),
    lower=st.booleans(),
)
def test_every_form_maps_to_the_same_unified_symbol(
    base: str, quote: str, form: str, lower: bool
) -> None:
    robot = form.format(b=base, q=quote)
    assert to_unified(robot.lower() if lower else robot) == f"{base}/{quote}:{quote}"


# --- base_url -----------------------------------------------------------------------------------


def test_base_url_replaces_every_rest_host() -> None:
    urls = {
        "fapiPrivate": "https://fapi.binance.com/fapi/v1",
        "nested": {"public": "https://api.{hostname}", "private": "https://api.{hostname}/v5"},
        "other": 42,
    }
    override_hosts(urls, "http://127.0.0.1:8080/proxy/")
    assert urls == {
        "fapiPrivate": "http://127.0.0.1:8080/proxy/fapi/v1",
        "nested": {
            "public": "http://127.0.0.1:8080/proxy",
            "private": "http://127.0.0.1:8080/proxy/v5",
        },
        "other": 42,
    }


@pytest.mark.parametrize("bad", ["127.0.0.1:8080", "ftp://host/x", "https://", "not a url"])
def test_base_url_must_be_http(bad: str) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        override_hosts({"x": "https://a.b/c"}, bad)


async def test_built_clients_point_every_api_at_the_base_url() -> None:
    for spec in (BINANCE, BYBIT):
        exchange = build_exchange(spec, fast_options(), base_url="http://127.0.0.1:9", account=None)
        try:
            hosts = {v for v in _strings(exchange.urls["api"])}
            assert hosts and all(h.startswith("http://127.0.0.1:9") for h in hosts)
            assert exchange.enableRateLimit is True
            assert isinstance(exchange, getattr(ccxt, spec.ccxt_id))
        finally:
            await exchange.close()


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return [value] if isinstance(value, str) else []


# --- the registry -------------------------------------------------------------------------------


async def test_one_client_per_account_shared_by_robots_and_markets_loaded_once() -> None:
    async with FakeBinance() as fake:
        fake.records += closed_record("binance", close_ms=T0_MS - HOUR_MS)
        fake.records += closed_record("binance", close_ms=T0_MS - HOUR_MS, symbol="ETH")
        async with ExchangeRegistry({"binance": fast_options()}) as registry:
            a1, a2 = account_for(fake, 1), account_for(fake, 2)
            robot_btc, robot_eth = registry.source_for(a1), registry.source_for(a1)
            assert robot_btc is robot_eth  # two robots, one account: one client
            other = registry.source_for(a2)
            assert other is not robot_btc
            results = await asyncio.gather(
                robot_btc.fetch_closed("BTC_USDT", SINCE, UNTIL),
                robot_eth.fetch_closed("ETH_USDT", SINCE, UNTIL),
                other.fetch_closed("BTCUSDT", SINCE, UNTIL),
            )
            assert [len(r.records) for r in results] == [1, 1, 1]
            assert fake.count("markets") == 1  # once per exchange host, not per client
            assert registry.requests() == 3


async def test_robots_on_one_account_share_its_budget_and_accounts_do_not() -> None:
    """OKX counts positions-history per account (UID): robots on one account share that
    account's budget; another account has its own. Budget: 2 requests a second, all ours."""
    async with FakeOkx() as fake:
        options = fast_options(account_budget=BudgetOptions(limit=2, window=1.0, share=1.0))
        async with ExchangeRegistry({"okx": options}) as registry:
            shared = registry.source_for(account_for(fake, 1))
            await shared.fetch_closed("BTCUSDT", SINCE, UNTIL)  # warm up: markets; 1 token left
            fake.reset_counts()
            await asyncio.gather(*(shared.fetch_closed("BTCUSDT", SINCE, UNTIL) for _ in range(3)))
            times = sorted(s.at for s in fake.seen("closed"))
            assert len(times) == 3
            assert times[-1] - times[0] >= 0.9  # 2 refills at 2 a second: ≥ 1 s (some slack)
            fake.reset_counts()
            others = [registry.source_for(account_for(fake, n)) for n in (11, 12, 13)]
            await asyncio.gather(*(s.fetch_closed("BTCUSDT", SINCE, UNTIL) for s in others))
            times = sorted(s.at for s in fake.seen("closed"))
            assert times[-1] - times[0] < 0.3  # separate accounts, separate budgets


async def test_accounts_share_the_egress_budget_and_one_transport() -> None:
    """Binance counts weight per IP: every account through one egress shares one budget
    (userTrades weighs 5; here 10 a second, all ours), and one ccxt instance serves them."""
    async with FakeBinance() as fake:
        options = fast_options(budget=BudgetOptions(limit=10, window=1.0, share=1.0))
        async with ExchangeRegistry({"binance": options}) as registry:
            sources = [registry.source_for(account_for(fake, n)) for n in (1, 2, 3, 4)]
            await sources[0].fetch_closed("BTCUSDT", SINCE, UNTIL)  # markets (1) + 5
            fake.reset_counts()
            await asyncio.gather(*(s.fetch_closed("BTCUSDT", SINCE, UNTIL) for s in sources))
            times = sorted(s.at for s in fake.seen("closed"))
            assert len(times) == 4
            assert times[-1] - times[0] >= 1.2  # 20 weight at 10 a second, 4 left in hand
            transports = {id(s.client._transport) for s in sources}  # type: ignore[attr-defined]
            assert len(transports) == 1
            stats = registry.budgets.egress_stats()[("binance", "direct")]
            assert stats.spent == 1 + 5 * 5


async def test_max_concurrent_requests_per_account() -> None:
    async with FakeBinance() as fake:
        fake.fail(Fault.slow(0.1), times=4)
        async with ExchangeRegistry({"binance": fast_options(max_concurrent_requests=1)}) as reg:
            source = reg.source_for(account_for(fake))
            await asyncio.gather(*(source.fetch_closed("BTCUSDT", SINCE, UNTIL) for _ in range(4)))
        assert fake.count("closed") == 4 and fake.max_in_flight == 1


async def test_changed_account_gets_a_new_client_and_closing_is_idempotent() -> None:
    async with FakeOkx() as fake:
        registry = ExchangeRegistry({"okx": fast_options()})
        account = account_for(fake)
        first = registry.source_for(account)
        await first.fetch_closed("BTCUSDT", SINCE, UNTIL)
        rotated = account_for(fake, api_key=Secret("rotated-key"))
        second = registry.source_for(rotated)
        assert second is not first
        assert registry.source_for(rotated) is second
        await registry.close()
        await registry.close()
        await first.close()  # closing a client twice is safe too
        with pytest.raises(RuntimeError, match="closed"):
            registry.source_for(account)
        with pytest.raises(RuntimeError, match="closed"):
            await first.fetch_closed("BTCUSDT", SINCE, UNTIL)


async def test_credentials_from_environment_variable_names() -> None:
    async with FakeOkx(
        api_key="env-key",
        secret="env-secret",
        passphrase="env-pass",
    ) as fake:
        env = {"OKX_KEY": "env-key", "OKX_SECRET": "env-secret", "OKX_PASS": "env-pass"}
        names = CredentialEnv("OKX_KEY", "OKX_SECRET", "OKX_PASS")
        options = fast_options(credentials_env=names)
        stored = account_for(fake, api_key=Secret("db-key"), secret=Secret("db-secret"))
        async with ExchangeRegistry({"okx": options}, environ=env) as registry:
            await registry.source_for(stored).fetch_closed("BTCUSDT", SINCE, UNTIL)
        (call,) = fake.seen("closed")
        assert call.headers["OK-ACCESS-KEY"] == "env-key"
        async with ExchangeRegistry({"okx": options}, environ={"OKX_KEY": "k"}) as registry:
            with pytest.raises(ConfigError, match="OKX_SECRET is not set") as caught:
                registry.source_for(stored)
        assert "db-secret" not in str(caught.value)


async def test_platforms_must_be_enabled() -> None:
    async with FakeBinance() as fake, ExchangeRegistry({"okx": fast_options()}) as registry:
        with pytest.raises(ConfigError, match="'binance' is not enabled"):
            registry.source_for(account_for(fake))
    with pytest.raises(ConfigError, match="unknown platform"):
        ExchangeRegistry({"kraken": fast_options()})


@pytest.mark.parametrize("platform", sorted(FAKES))
def test_account_repr_never_shows_secrets(platform: str) -> None:
    fake = FAKES[platform]()
    account = account_for(fake)
    for text in (repr(account), str(account)):
        for secret in (fake.api_key, fake.secret, fake.passphrase):
            assert secret not in text
    assert "base_url" in repr(account) and platform in repr(account)


async def test_one_shot_helper_for_the_cli() -> None:
    async with FakeBybit() as fake:
        fake.records += closed_record("bybit", close_ms=T0_MS - HOUR_MS)
        window = await closed_positions_for_account(
            account_for(fake), {"bybit": fast_options()}, "BTC-USDT", SINCE, UNTIL
        )
    (position,) = window.records
    rendered = position_to_json(position)
    assert rendered["platform"] == "bybit" and rendered["symbol"] == "BTC/USDT:USDT"
    assert rendered["net_profit"] == "9.8" and rendered["gross_pnl"] == "10.00"
    assert rendered["close_time"] == "2026-05-17T05:40:00Z" and rendered["open_time"] is None
