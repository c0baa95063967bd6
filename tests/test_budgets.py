"""The exchanges' budgets, shared by every client of the process (exchange_adapters.budgets).

The bucket arithmetic runs on a virtual clock (what the daemon would send in two minutes of
continuous demand, without waiting two minutes); the bans run real ccxt against the fake
exchanges on loopback, which count every request that reaches them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from exchange_adapters.answers import ResponseCapture
from exchange_adapters.budgets import Budget, BudgetOptions
from exchange_adapters.options import RetryOptions
from exchange_adapters.registry import ExchangeRegistry
from kits.fake_exchanges import FakeBinance, FakeBybit, Fault
from kits.fake_exchanges.harness import T0, account_for, fast_options
from reconcile.errors import RateLimited, TemporaryError

SINCE, UNTIL = T0.replace(hour=0), T0


class VirtualClock:
    """time.time and asyncio.sleep for one budget: sleeping moves the clock, nothing waits."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def answer(status: int, headers: dict[str, str] | None = None) -> ResponseCapture:
    return ResponseCapture(status=status, headers=headers or {})


def virtual_budget(options: BudgetOptions, **kwargs: object) -> tuple[Budget, VirtualClock]:
    clock = VirtualClock()
    budget = Budget("test", options, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]
    return budget, clock


async def test_the_daemon_takes_its_share_and_no_window_sees_more() -> None:
    """Binance's 2,400 a minute, our 40 %: under continuous demand of userTrades (weight 5),
    every 60 s window (fixed or sliding) holds at most 960 + one second's refill."""
    budget, clock = virtual_budget(BudgetOptions(limit=2400, window=60.0, share=0.4))
    sent: list[float] = []
    while not sent or sent[-1] - sent[0] <= 180:  # three minutes of demand
        await budget.acquire(5)
        sent.append(clock.now)
    start = sent[0]
    for offset in range(0, 120):
        lo = start + offset
        weight = 5 * sum(1 for t in sent if lo <= t < lo + 60)
        assert weight <= 960 + 16, (offset, weight)
    minute = 5 * sum(1 for t in sent if start + 60 <= t < start + 120)
    assert minute >= 950  # and it does use its share
    assert budget.stats.spent == 5 * len(sent)


async def test_the_exchanges_reading_near_the_limit_pauses_until_the_window_turns() -> None:
    """X-MBX-USED-WEIGHT-1M counts the IP's whole use, the engine's included: a reading at
    95 % of the limit stops the egress until the exchange's minute turns."""
    budget, clock = virtual_budget(
        BudgetOptions(limit=2400, window=60.0, share=0.4), used_header="X-MBX-USED-WEIGHT-1M"
    )
    clock.now = 1_800_000_010.0  # 10 s into a minute (1_800_000_000 is a whole minute)
    budget.record(answer(200, {"x-mbx-used-weight-1m": "2300"}))
    await budget.acquire(5)
    assert clock.now == pytest.approx(1_800_000_060.01)  # the next minute, not before
    budget.record(answer(200, {"X-MBX-USED-WEIGHT-1M": "1000"}))
    before = clock.now
    await budget.acquire(5)
    assert clock.now == before  # room again: no wait


async def test_a_ban_longer_than_max_wait_fails_at_once_and_sends_nothing() -> None:
    budget, _ = virtual_budget(BudgetOptions(limit=10, window=1.0, share=1.0), max_wait=30)
    budget.bans = {418: 120.0}
    budget.record(answer(418, {"Retry-After": "300"}))
    with pytest.raises(RateLimited) as caught:
        await budget.acquire(1)
    assert caught.value.retry_after == pytest.approx(300)
    assert budget.stats.refused == {418: 1} and budget.stats.spent == 0
    budget.record(answer(429))  # not a ban status of this budget: counted nowhere
    assert budget.stats.refused == {418: 1}


async def test_a_short_ban_is_waited_out() -> None:
    budget, clock = virtual_budget(BudgetOptions(limit=10, window=1.0, share=1.0))
    budget.bans = {429: 60.0}
    budget.record(answer(429))  # no Retry-After: the platform's default
    start = clock.now
    await budget.acquire(1)
    assert clock.now - start == pytest.approx(60.0)


def test_a_budget_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        Budget("x", BudgetOptions(limit=10, window=1.0, share=0.0))


# --- real ccxt, fake exchanges: a ban stops every client through the egress -------------------


BINANCE_BUDGET = BudgetOptions(limit=2400, window=60.0)  # the real one, our default share
NO_RETRY_WAIT = RetryOptions(attempts=3, initial=0.001, maximum=0.005, retry_after_max=5.0)


async def _gather(calls: list[Callable[[], Awaitable[object]]]) -> list[object]:
    return await asyncio.gather(*(c() for c in calls), return_exceptions=True)


async def test_a_429_stops_every_account_through_the_egress_until_retry_after() -> None:
    async with FakeBinance() as fake:
        fake.records.clear()
        options = fast_options(budget=BINANCE_BUDGET, retry=NO_RETRY_WAIT)
        async with ExchangeRegistry({"binance": options}) as registry:
            sources = [registry.source_for(account_for(fake, n)) for n in (1, 2, 3)]
            await sources[0].fetch_closed("BTCUSDT", SINCE, UNTIL)  # markets
            fake.reset_counts()
            fake.fail(Fault.rate_limit(retry_after="1"))
            first = asyncio.create_task(sources[0].fetch_closed("BTCUSDT", SINCE, UNTIL))
            while fake.count() == 0:
                await asyncio.sleep(0.005)
            refused_at = fake.seen()[0].at
            await asyncio.sleep(0.1)  # the 429 has been read: the others start now
            results = await _gather(
                [lambda s=s: s.fetch_closed("BTCUSDT", SINCE, UNTIL) for s in sources[1:]]
            )
            await first
        assert not [r for r in results if isinstance(r, BaseException)]
        later = [s.at for s in fake.seen()[1:]]
        assert len(later) == 3  # account 1's retry and the two others
        assert min(later) - refused_at >= 0.95  # nobody sent during the second's ban
        stats = registry.budgets.egress_stats()[("binance", "direct")]
        assert stats.refused == {429: 1} and stats.waited > 0


async def test_a_418_stops_every_account_and_none_touches_the_exchange() -> None:
    async with FakeBinance() as fake:
        options = fast_options(budget=BINANCE_BUDGET, retry=NO_RETRY_WAIT)
        async with ExchangeRegistry({"binance": options}) as registry:
            sources = [registry.source_for(account_for(fake, n)) for n in (1, 2, 3)]
            await sources[0].fetch_closed("BTCUSDT", SINCE, UNTIL)
            fake.reset_counts()
            fake.fail(Fault.ban(retry_after="7200"))  # two hours
            with pytest.raises(RateLimited):
                await sources[0].fetch_closed("BTCUSDT", SINCE, UNTIL)
            started = time.monotonic()
            results = await _gather(
                [lambda s=s: s.fetch_closed("BTCUSDT", SINCE, UNTIL) for s in sources]
            )
            assert time.monotonic() - started < 1.0  # failed at once, not after waiting
        assert all(isinstance(r, TemporaryError) for r in results), results
        assert fake.count("*") == 1  # the 418 itself; nothing after it
        stats = registry.budgets.egress_stats()[("binance", "direct")]
        assert stats.refused == {418: 1}


async def test_bybits_403_ban_stops_the_egress() -> None:
    """Bybit answers a client over its per-IP limit with 403 and bans it for 10 minutes."""
    async with FakeBybit() as fake:
        options = fast_options(budget=BudgetOptions(limit=600, window=5.0), retry=NO_RETRY_WAIT)
        async with ExchangeRegistry({"bybit": options}) as registry:
            one, other = (registry.source_for(account_for(fake, n)) for n in (1, 2))
            await one.fetch_closed("BTCUSDT", SINCE, UNTIL)
            fake.reset_counts()
            fake.fail(Fault.http(403))
            with pytest.raises(RateLimited):  # ccxt reads bybit's 403 as RateLimitExceeded
                await one.fetch_closed("BTCUSDT", SINCE, UNTIL)
            with pytest.raises(RateLimited, match="banned"):
                await other.fetch_closed("BTCUSDT", SINCE, UNTIL)
        assert fake.count("*") == 1


@pytest.mark.parametrize(
    ("platforms", "places"),
    [
        # 2,400 × 0.4 / 60 s = 16 weight a second = 3.2 userTrades (5 each): 4 in a second, + 1
        (["binance"], 5),
        (["okx"], 32),  # per account only: the egress does not bound it
        (["binance", "okx"], 37),
        (["bybit"], 49),  # 600 × 0.4 / 5 s = 48 a second, + 1
        (["binance", "okx", "gate", "bitget", "bybit"], 64),  # at most 64
        (["replay"], 8),
    ],
)
def test_concurrency_is_sized_by_the_budgets(platforms: list[str], places: int) -> None:
    registry = ExchangeRegistry({p: fast_options() for p in platforms})
    assert registry.concurrency() == places


def test_a_smaller_share_means_fewer_places() -> None:
    registry = ExchangeRegistry({"binance": fast_options(budget_share=0.1)})
    assert registry.concurrency() == 2  # 2,400 × 0.1 / 60 / 5 = 0.8 a second: 1, + 1
