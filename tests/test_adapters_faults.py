"""Faults injected by the fake exchanges, through real ccxt, translated once at the boundary.

Every case asserts the translated error type and the exact number of attempts, counted as
requests the fake server received.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from exchange_adapters.errors import UnknownSymbol
from exchange_adapters.registry import ExchangeRegistry
from kits.fake_exchanges import FAKES, FakeBinance, Fault
from kits.fake_exchanges.harness import (
    FAST_RETRY,
    HOUR_MS,
    T0,
    T0_MS,
    account_for,
    at,
    closed_record,
    fast_options,
    open_source,
)
from reconcile.errors import (
    BadExchangeResponse,
    ExchangeRejected,
    ExchangeUnavailable,
    PermanentError,
    RateLimited,
    ReconcileError,
    TemporaryError,
)
from reconcile.records import Secret

PLATFORMS = sorted(FAKES)
ATTEMPTS = FAST_RETRY.attempts
SINCE, UNTIL = T0 - timedelta(days=1), T0
Logs = list[dict[str, Any]]

TEMPORARY: dict[str, tuple[Fault, type[TemporaryError]]] = {
    "429": (Fault.rate_limit("0"), RateLimited),
    "418": (Fault.ban("0"), RateLimited),
    "500": (Fault.http(500), ExchangeUnavailable),
    "502": (Fault.http(502), ExchangeUnavailable),
    "503": (Fault.http(503), ExchangeUnavailable),
    "timeout": (Fault.timeout(1.5), ExchangeUnavailable),
    "html-200": (Fault.html(), BadExchangeResponse),
    "malformed-json": (Fault.malformed_json(), BadExchangeResponse),
    "not-envelope": (Fault.not_envelope(), BadExchangeResponse),
    "truncated-body": (Fault.truncated(), ExchangeUnavailable),
}

#: exchange error codes that ccxt does not call temporary but are (clock skew, internal errors)
TEMPORARY_CODES: list[tuple[str, str, int]] = [
    ("binance", "-1001", 503),
    ("binance", "-1000", 500),
    ("binance", "-1021", 400),
    ("okx", "50001", 503),
    ("okx", "50102", 401),
    ("gate", "REQUEST_EXPIRED", 401),
    ("gate", "SERVER_ERROR", 500),
    ("bitget", "40008", 400),
    ("bitget", "40015", 400),
    ("bybit", "10002", 200),
    ("bybit", "10016", 200),
]


def _secrets_absent(fake: Any, logs: Logs, exc: BaseException) -> None:
    """No credential anywhere (logs, our error, the chained ccxt error); no signed query string
    in what we write ourselves."""
    ours = [repr(event) for event in logs] + [str(exc), repr(exc)]
    chain: list[str] = []
    cause = exc.__cause__
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__
    for text in ours + chain:
        for secret in (fake.api_key, fake.secret, fake.passphrase):
            assert secret not in text
    for text in ours:
        assert "signature=" not in text and "timestamp=" not in text


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("case", sorted(TEMPORARY))
async def test_temporary_fault_is_retried_to_the_limit(
    platform: str, case: str, logs: Logs
) -> None:
    fault, expected = TEMPORARY[case]
    async with FAKES[platform]() as fake:
        fake.records += closed_record(platform, close_ms=T0_MS - HOUR_MS)
        fake.fail(fault, times=100)
        async with open_source(fake, timeout=0.3) as source:
            with pytest.raises(expected) as caught:
                await source.fetch_closed("BTC_USDT", SINCE, UNTIL)
        assert fake.count("closed") == ATTEMPTS
    failures = [e for e in logs if e["event"] == "exchange request failed"]
    assert [e["attempt"] for e in failures] == list(range(1, ATTEMPTS + 1))
    assert [e["will_retry"] for e in failures] == [True] * (ATTEMPTS - 1) + [False]
    for event in failures:
        assert event["platform"] == platform and event["account_id"] == 1
        assert event["error"] == expected.__name__
        assert event["symbol"] == "BTC/USDT:USDT"
    assert isinstance(caught.value.__cause__, Exception) or expected is BadExchangeResponse
    _secrets_absent(fake, logs, caught.value)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("case", ["429", "502", "html-200", "timeout"])
async def test_temporary_fault_then_success(platform: str, case: str) -> None:
    fault, _ = TEMPORARY[case]
    async with FAKES[platform]() as fake:
        fake.records += closed_record(platform, close_ms=T0_MS - HOUR_MS)
        fake.fail(fault, times=ATTEMPTS - 1)
        async with open_source(fake, timeout=0.3) as source:
            positions = (await source.fetch_closed("BTC_USDT", SINCE, UNTIL)).records
        assert len(positions) == 1
        assert fake.count("closed") == ATTEMPTS


@pytest.mark.parametrize(("platform", "code", "status"), TEMPORARY_CODES)
async def test_exchange_codes_that_are_temporary(platform: str, code: str, status: int) -> None:
    async with FAKES[platform]() as fake:
        fake.fail(Fault.exchange_error(code, status), times=100)
        async with open_source(fake) as source:
            with pytest.raises(ExchangeUnavailable):
                await source.fetch_closed("BTC_USDT", SINCE, UNTIL)
        assert fake.count("closed") == ATTEMPTS


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_auth_error_is_permanent_logged_once_and_cools_down(
    platform: str, logs: Logs
) -> None:
    async with FAKES[platform]() as fake:
        fake.fail(Fault.auth(), times=100)
        async with open_source(fake) as source:
            with pytest.raises(ExchangeRejected) as caught:
                await source.fetch_closed("BTC_USDT", SINCE, UNTIL)
            assert fake.count("closed") == 1  # not retried
            # the account is cooling down: other symbols too, and no request is made
            with pytest.raises(ExchangeRejected, match="cool-down"):
                await source.fetch_closed("ETH_USDT", SINCE, UNTIL)
            assert fake.count("closed") == 1
    assert isinstance(caught.value, PermanentError)
    assert "AuthenticationError" in str(caught.value)
    failures = [e for e in logs if e["event"] == "exchange request failed"]
    assert len(failures) == 1
    assert failures[0]["will_retry"] is False and failures[0]["cooldown_s"] == 60.0
    assert failures[0]["error"] == "ExchangeRejected"
    _secrets_absent(fake, logs, caught.value)


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_wrong_secret_is_rejected_by_the_signature_check(platform: str) -> None:
    async with FAKES[platform]() as fake:
        async with ExchangeRegistry({platform: fast_options()}) as registry:
            source = registry.source_for(account_for(fake, secret=Secret("not-the-secret")))
            with pytest.raises(ExchangeRejected):
                await source.fetch_closed("BTC_USDT", SINCE, UNTIL)
        assert fake.count("closed") == 1


async def test_retry_after_is_honoured(logs: Logs) -> None:
    async with FakeBinance() as fake:
        fake.records += closed_record("binance", close_ms=T0_MS - HOUR_MS)
        fake.fail(Fault.rate_limit("1"))
        async with open_source(fake) as source:
            started = time.monotonic()
            positions = (await source.fetch_closed("BTCUSDT", SINCE, UNTIL)).records
            elapsed = time.monotonic() - started
        assert len(positions) == 1 and fake.count("closed") == 2
    assert elapsed >= 1.0
    (retry,) = [e for e in logs if e["event"] == "exchange request failed"]
    assert retry["wait_s"] == 1.0 and retry["will_retry"] is True
    assert retry["error"] == "RateLimited"


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_retry_after_beyond_the_limit_stops_at_once(platform: str) -> None:
    async with FAKES[platform]() as fake:
        fake.fail(Fault.rate_limit("120"), times=100)
        async with open_source(fake) as source:
            with pytest.raises(RateLimited) as caught:
                await source.fetch_closed("BTCUSDT", SINCE, UNTIL)
        assert fake.count("closed") == 1
    assert caught.value.retry_after == 120.0


async def test_slow_answer_within_the_timeout_is_fine() -> None:
    async with FakeBinance() as fake:
        fake.records += closed_record("binance", close_ms=T0_MS - HOUR_MS)
        fake.fail(Fault.slow(0.2))
        async with open_source(fake, timeout=2.0) as source:
            assert len((await source.fetch_closed("BTCUSDT", SINCE, UNTIL)).records) == 1
        assert fake.count("closed") == 1


async def test_markets_failures_are_retried_too() -> None:
    async with FakeBinance() as fake:
        fake.fail(Fault.http(502), endpoint="markets", times=ATTEMPTS - 1)
        async with open_source(fake) as source:
            assert (await source.fetch_closed("BTCUSDT", SINCE, UNTIL)).records == ()
        assert fake.count("markets") == ATTEMPTS and fake.count("closed") == 1


async def test_unreachable_exchange(logs: Logs) -> None:
    async with FakeBinance() as fake:
        url = fake.url
    async with open_source(fake) as source:  # nothing listens on the port any more
        assert url.startswith("http://127.0.0.1:")
        with pytest.raises(ExchangeUnavailable):
            await source.fetch_closed("BTCUSDT", SINCE, UNTIL)
    failures = [e for e in logs if e["event"] == "exchange request failed"]
    assert len(failures) == ATTEMPTS and failures[0]["what"] == "fetch_markets"


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_unknown_symbols_are_permanent_and_cost_no_request(platform: str) -> None:
    async with FAKES[platform]() as fake:
        async with open_source(fake) as source:
            with pytest.raises(UnknownSymbol, match="DOGE/USDT:USDT"):
                await source.fetch_closed("DOGE_USDT", SINCE, UNTIL)  # not listed
            with pytest.raises(UnknownSymbol, match="BTCEUR"):
                await source.fetch_closed("BTCEUR", SINCE, UNTIL)  # cannot be mapped
            # the symbol cools down, the account does not
            with pytest.raises(UnknownSymbol, match="cool-down"):
                await source.fetch_closed("DOGE_USDT", SINCE, UNTIL)
            assert (await source.fetch_closed("BTC_USDT", SINCE, UNTIL)).records == ()
        assert fake.count("closed") == 1


def test_every_translated_error_is_in_the_tree() -> None:
    for _, expected in TEMPORARY.values():
        assert issubclass(expected, TemporaryError) and issubclass(expected, ReconcileError)
    assert issubclass(UnknownSymbol, ExchangeRejected)


BROKEN_FIELD = {
    "binance": "realizedPnl",
    "okx": "closeAvgPx",
    "gate": "side",
    "bitget": "closeAvgPrice",
    "bybit": "avgExitPrice",
}


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_malformed_record_is_unusable_not_retried_and_not_skipped(
    platform: str, logs: Logs
) -> None:
    """A record lacking a required field on a well-formed page: the page's other records are
    served, the bad one comes back as unusable with its raw payload, and the request is not
    retried (validation runs once, after the request)."""
    async with FAKES[platform]() as fake:
        fake.records += closed_record(platform, close_ms=T0_MS - HOUR_MS)
        (broken,) = closed_record(platform, close_ms=T0_MS - 2 * HOUR_MS)
        del broken[BROKEN_FIELD[platform]]
        fake.records.append(broken)
        async with open_source(fake) as source:
            window = await source.fetch_closed("BTC_USDT", SINCE, UNTIL)
        assert fake.count("closed") == 1
    assert len(window.records) == 1
    (bad,) = window.unusable
    assert BROKEN_FIELD[platform] in bad.reason
    assert (bad.raw["fills"] if platform == "binance" else [bad.raw]) == [broken]
    assert bad.close_time == at(T0_MS - 2 * HOUR_MS)
    assert not [e for e in logs if e["event"] == "exchange request failed"]
    (event,) = [e for e in logs if e["event"] == "exchange record unusable"]
    assert event["record_key"] == bad.record_key


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_dropped_connection(platform: str, logs: Logs) -> None:
    async with FAKES[platform]() as fake:
        fake.fail(Fault.disconnect(), times=100)
        async with open_source(fake) as source:
            with pytest.raises(ExchangeUnavailable):
                await source.fetch_closed("BTC_USDT", SINCE, UNTIL)
        # aiohttp itself re-sends a GET once when a pooled keep-alive connection was dropped,
        # so the server may see up to two requests per attempt; our attempts are exact
        assert ATTEMPTS <= fake.count("closed") <= 2 * ATTEMPTS
    failures = [e for e in logs if e["event"] == "exchange request failed"]
    assert [e["attempt"] for e in failures] == list(range(1, ATTEMPTS + 1))
