"""Never get the engine's IP banned: the history sync against a fake Binance that enforces the
per-IP request weight as Binance documents it (``kits/fake_exchanges/binance.py``,
:class:`IpWeightLimit`, with the documentation it follows).

The fake is one IP: every account on it shares 2,400 weight per window, half of it taken by the
trading engine's steady load. The acceptance scenario (400 binance accounts, 2 closes each, engine
at 1,200 of 2,400 weight per minute) runs 1.5x faster: a 40 s window with the same limit per window,
bans and retry waits scaled alike (a 2-minute ban becomes 80 s, ``retry_after_max`` 60 s becomes
40 s), so the daemon meets the same rules at the same ratios; the sync starts half-way into a
window (as ``bench/bench_budget.py --phase 30`` does). Not faster: the daemon itself takes 15-19 s
for the 400 streams on this project's 2-core machine with no limit at all, and it is in reality
(15 s against a 60 s minute) that a sync much shorter than the window overruns it - the sync needs
2,001 weight (400 userTrades at 5, one exchangeInfo), the window holds 1,200 beside the engine's,
and with a shorter window the sync straddles windows and the code without budgets slips through.

On the code before budgets (HEAD c66be72) the cold sync gets a 429 then 418s and failed streams;
with budgets it must get none, reconcile and charge everything, and take at most 1.5x the least
time the weight the engine leaves allows (worked out from the fake's own counters).

The budget is configured through ``AdapterOptions.budget = BudgetOptions(limit, window, share)``
(``exchange_adapters/options.py``); before that exists the test runs without one (and fails on
the counts it prints).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange_adapters import options as adapter_options
from exchange_adapters.options import AdapterOptions, RetryOptions
from exchange_adapters.registry import ExchangeRegistry
from kits.fake_exchanges.binance import (
    THREE_DAYS,
    USED_WEIGHT_HEADER,
    FakeBinance,
    IpWeightLimit,
)
from kits.fake_exchanges.harness import HOUR_MS, closed_record
from kits.seed import assert_ledger_consistent
from reconcile.charging.consumer import PowerConsumer
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, trading_api_config, trading_order, trading_robot
from reconcile.sync.history import HistorySync
from reconcile.sync.settings import SyncSettings
from reconcile.sync.window import SyncSummary
from tests.history_kit import RULES

MINUTE = 60.0

# -- the acceptance scenario, scaled in time ------------------------------------------------------

ACCOUNTS = 400
LIMIT = 2400  # weight per window, as Binance's per minute
WINDOW = 40.0  # seconds: Binance's minute, 1.5x faster
PHASE = WINDOW / 2  # the sync starts this long into a window
ENGINE_LOAD = LIMIT / 2  # the engine's weight per window
SHARE = 0.45  # of the limit, for the history sync (the engine takes 0.5)
SCALE = MINUTE / WINDOW
#: shipped retry defaults (exchange_adapters/options.py RetryOptions), 20x faster
SCALED_RETRY = RetryOptions(
    attempts=4, initial=0.5 / SCALE, maximum=10.0 / SCALE, retry_after_max=60.0 / SCALE
)
MAX_RATIO = 1.5


def options_for(
    fake: FakeBinance, *, limit: float, window: float, share: float, **fields: Any
) -> AdapterOptions:
    """Adapter options pointing every account at ``fake``, with the budget ``limit`` per
    ``window``, ``share`` of it the daemon's: ``AdapterOptions.budget = BudgetOptions(...)``.

    Written against the budgets' interface, and runnable before it: without ``BudgetOptions``
    the options have no budget (the code before budgets, which fails the test), and where the
    accounts' ``base_url`` is not honoured by default, ``account_base_url`` turns it on."""
    names = {f.name for f in dataclasses.fields(AdapterOptions)}
    budget_class = getattr(adapter_options, "BudgetOptions", None)
    if budget_class is not None and "budget" in names:
        fields["budget"] = budget_class(limit=limit, window=window, share=share)
    if "account_base_url" in names:
        fields["account_base_url"] = True
    return AdapterOptions(**fields)


@dataclass
class Outcome:
    summary: SyncSummary
    wall: float
    client_weight: float
    min_seconds: float
    orders: int
    charged_rows: int

    @property
    def ratio(self) -> float:
        return self.wall / self.min_seconds


async def count(db: Database, table: Any) -> int:
    async def read(conn: AsyncConnection) -> int:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

    return await db.transaction(read, what="count")


async def seed_accounts(db: Database, fake: FakeBinance, accounts: int) -> int:
    """``accounts`` API accounts on ``fake`` (one IP), each its own user, one running BTCUSDT
    robot and two closes (the first profitable, the second too on even accounts). Returns the
    number of profitable closes."""
    now_ms = int(time.time() * 1000)
    configs, robots, winners = [], [], 0
    for n in range(1, accounts + 1):
        key, secret = f"budget-key-{n}", f"budget-secret-{n}"
        records = fake.add_account(key, secret)
        records += closed_record("binance", close_ms=now_ms - 3 * HOUR_MS, profit="10")
        win = n % 2 == 0
        records += closed_record(
            "binance", close_ms=now_ms - 2 * HOUR_MS, profit="7" if win else "-4", long=win
        )
        winners += 1 + win
        configs.append(
            {
                "id": n,
                "user_id": 1000 + n,
                "platform": "binance",
                "api_name": f"binance {n}",
                "base_url": fake.url,
                "api_key": key,
                "secret_key": secret,
                "status": 1,
            }
        )
        robots.append(
            {
                "id": n * 10,
                "tenant_id": 3,
                "user_id": 1000 + n,
                "api_config_id": n,
                "exchange": "binance",
                "symbol": "BTCUSDT",
                "robot_name": f"robot {n}",
                "leverage": 10,
                "status": 2,
            }
        )

    async def insert(conn: AsyncConnection) -> None:
        await conn.execute(trading_api_config.insert(), configs)
        await conn.execute(trading_robot.insert(), robots)

    await db.transaction(insert, what="seed accounts and robots")
    return winners


async def cold_sync(db: Database, fake: FakeBinance, options: AdapterOptions) -> Outcome:
    """One cold history sync, real ccxt against ``fake``, timed."""
    limit = fake.weight_limit
    assert limit is not None
    async with ExchangeRegistry({"binance": options}) as registry:
        sync = HistorySync(
            db, PowerConsumer(db, RULES), registry, SyncSettings(platforms=frozenset({"binance"}))
        )
        started = time.monotonic()
        summary = await sync.run_cycle()
        wall = time.monotonic() - started
    client = limit.weight["client"]
    return Outcome(
        summary,
        wall,
        client,
        limit.min_seconds(client),
        await count(db, trading_order),
        await count(db, power_consume),
    )


def figures(limit: IpWeightLimit, out: Outcome, expected: int, winners: int) -> str:
    s = out.summary
    peaks = [round(w.peak) for w in limit.windows]
    return (
        f"429: {limit.rate_limited} (engine {limit.count(429, 'engine')}), "
        f"418: {limit.banned} (engine {limit.count(418, 'engine')}), bans {len(limit.bans)}; "
        f"streams {s.streams}, failed {s.failed_streams}; closes reconciled {out.orders}/{expected}"
        f", charged {out.charged_rows}/{winners}; cycle {out.wall:.1f} s, minimum "
        f"{out.min_seconds:.1f} s ({out.client_weight:.0f} weight / ({limit.limit} - "
        f"{limit.engine_load:.0f}) x {limit.window:g} s), ratio {out.ratio:.2f}; "
        f"peak weight per window {peaks}"
    )


@pytest.fixture
async def shared_ip() -> AsyncIterator[FakeBinance]:
    limit = IpWeightLimit(
        limit=LIMIT,
        window=WINDOW,
        ban_min=120.0 / SCALE,
        ban_max=THREE_DAYS / SCALE,
        engine_load=ENGINE_LOAD,
    )
    async with FakeBinance(weight_limit=limit) as fake:
        yield fake


@pytest.mark.mysql
@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_cold_sync_of_400_accounts_never_gets_the_ip_banned(
    mysql_db: Database, shared_ip: FakeBinance
) -> None:
    fake, limit = shared_ip, shared_ip.weight_limit
    assert limit is not None
    winners = await seed_accounts(mysql_db, fake, ACCOUNTS)
    expected = 2 * ACCOUNTS
    options = options_for(
        fake, limit=LIMIT, window=WINDOW, share=SHARE, retry=SCALED_RETRY, close_delay_ms=0
    )
    await asyncio.sleep((PHASE - time.time()) % WINDOW)
    out = await cold_sync(mysql_db, fake, options)
    report = figures(limit, out, expected, winners)
    print(report)  # the figures, on success too (pytest -s / -rP)

    assert (limit.rate_limited, limit.banned) == (0, 0), report
    assert out.summary.failed_streams == 0 and out.summary.streams == ACCOUNTS, report
    assert out.orders == expected and out.summary.records == expected, report
    assert out.charged_rows == out.summary.charged == winners, report
    counts = await assert_ledger_consistent(mysql_db, {})
    assert counts, report
    assert out.ratio <= MAX_RATIO, report


# -- the fake itself, with plain HTTP requests ----------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], Any]:
    async with session.get(url) as response:
        return response.status, dict(response.headers), await response.json()


async def test_fake_binance_weight_429_then_418_and_reset() -> None:
    clock = Clock(6_000_010.0)  # 10 s into a clock minute
    limit = IpWeightLimit(limit=12, window=60.0, ban_min=120.0, clock=clock, engine_tick=0)
    async with FakeBinance(weight_limit=limit) as fake, aiohttp.ClientSession() as http:
        info, trades = f"{fake.url}/fapi/v1/exchangeInfo", f"{fake.url}/fapi/v1/userTrades"
        # every answer carries the IP's used weight: exchangeInfo 1, userTrades 5 (even refused)
        status, headers, body = await get(http, info)
        assert status == 200 and headers[USED_WEIGHT_HEADER] == "1"
        assert body["rateLimits"][0]["limit"] == 12
        status, headers, body = await get(http, trades)
        assert status == 401 and headers[USED_WEIGHT_HEADER] == "6" and body["code"] == -2015
        status, headers, _ = await get(http, trades)
        assert (status, headers[USED_WEIGHT_HEADER]) == (401, "11")
        # past the limit: 429, Retry-After = seconds to the window's end, Binance's -1003 body
        clock.now += 5
        status, headers, body = await get(http, trades)
        assert (status, headers[USED_WEIGHT_HEADER], headers["Retry-After"]) == (429, "16", "45")
        assert (
            body["code"] == -1003
            and "current limit is 12 request weight per 1 MINUTE" in (body["msg"])
        )
        # not backing off: 418, banned for 2 minutes, the request not counted
        clock.now += 1
        status, headers, body = await get(http, info)
        assert (status, headers[USED_WEIGHT_HEADER], headers["Retry-After"]) == (418, "16", "120")
        assert body["code"] == -1003 and "IP banned until 6000136000" in body["msg"]
        # the ban outlasts the window: still 418, Retry-After counts down, the new minute at 0
        clock.now += 60
        status, headers, _ = await get(http, info)
        assert (status, headers[USED_WEIGHT_HEADER], headers["Retry-After"]) == (418, "0", "60")
        # after the ban: served again, the weight counted from the window's start
        clock.now += 60
        status, headers, _ = await get(http, info)
        assert (status, headers[USED_WEIGHT_HEADER]) == (200, "1")
        # a repeat offender's next ban is longer (doubling, up to 3 days)
        for _ in range(3):
            status, _, _ = await get(http, trades)
        status, headers, _ = await get(http, trades)
        assert (status, headers["Retry-After"]) == (418, "240")
    assert (limit.rate_limited, limit.banned) == (2, 3)
    assert [round(end - start) for start, end in limit.bans] == [120, 240]
    assert limit.weight["client"] == 1 + 5 + 5 + 5 + 1 + 15


async def test_fake_binance_window_resets_on_the_clock_and_engine_load() -> None:
    clock = Clock(600.0)  # a window's start (3 s windows: 600, 603, ...)
    limit = IpWeightLimit(limit=100, window=3.0, engine_load=60.0, clock=clock, engine_tick=0)
    async with FakeBinance(weight_limit=limit) as fake, aiohttp.ClientSession() as http:
        info = f"{fake.url}/fapi/v1/exchangeInfo"
        # the engine sends its load evenly: 60 per 3 s = 20 a second
        clock.now += 1.5
        limit.engine_step()
        status, headers, _ = await get(http, info)
        assert (status, headers[USED_WEIGHT_HEADER]) == (200, "31")
        # up to the limit exactly is allowed
        for _ in range(39):
            await get(http, info)
        clock.now += 1.0
        limit.engine_step()  # +20: 70 + 20 = 90
        status, headers, _ = await get(http, info)
        assert (status, headers[USED_WEIGHT_HEADER]) == (200, "91")
        # a fixed window: at 603.0 the count restarts (not 3 s after the first request)
        clock.now = 603.0
        status, headers, _ = await get(http, info)
        assert (status, headers[USED_WEIGHT_HEADER]) == (200, "1")
        clock.now = 604.5
        limit.engine_step()  # the engine's weight since the window's start only
        assert limit.used() == 31
    assert limit.min_seconds(240) == 240 / (100 - 60) * 3
    assert (limit.rate_limited, limit.banned) == (0, 0)
    assert limit.weight["engine"] == pytest.approx(30 + 20 + 30)
    assert [dict(w.weight) for w in limit.windows] == [
        {"engine": pytest.approx(50), "client": 41},
        {"client": 1, "engine": pytest.approx(30)},
    ]


async def test_fake_binance_engine_alone_breaks_the_limit() -> None:
    """The engine does not know of other clients: when they leave it no room it gets the 429,
    and its next request the IP's ban."""
    clock = Clock(900.0)
    limit = IpWeightLimit(
        limit=50, window=10.0, engine_load=40.0, ban_min=30.0, clock=clock, engine_tick=0
    )
    async with FakeBinance(weight_limit=limit) as fake, aiohttp.ClientSession() as http:
        for _ in range(9):  # 45
            await get(http, f"{fake.url}/fapi/v1/userTrades")
        clock.now += 5.0
        verdict = limit.engine_step()  # + 20 = 65
        assert verdict is not None and (verdict.status, verdict.retry_after) == (429, 5)
        clock.now += 1.0
        verdict = limit.engine_step()
        assert verdict is not None and (verdict.status, verdict.retry_after) == (418, 30)
        status, headers, _ = await get(http, f"{fake.url}/fapi/v1/exchangeInfo")
        assert (status, headers["Retry-After"]) == (418, "30")
    assert (limit.count(429, "engine"), limit.count(418, "engine"), limit.count(418)) == (1, 1, 2)


def test_scenario_keeps_the_unscaled_ratios() -> None:
    assert pytest.approx(2400) == LIMIT / WINDOW * MINUTE / SCALE and ENGINE_LOAD / LIMIT == 0.5
    assert SCALED_RETRY.retry_after_max < 120.0 / SCALE  # a ban outlasts the retries, as unscaled
