"""Paging through each exchange's window and page limits: several pages, records repeated across
pages and served out of order, clusters at one instant on page boundaries, windows longer than
the exchange allows, records outside the window, and the empty window (one request)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kits.fake_exchanges import FAKES, FakeExchange
from kits.fake_exchanges.harness import (
    DAY_MS,
    HOUR_MS,
    T0,
    T0_MS,
    close_ms_of,
    closed_record,
    open_source,
    record_key_of,
)

PLATFORMS = sorted(FAKES)
PAGE = 7
MAX_WINDOW_MS = {"binance": 7 * DAY_MS, "bybit": 7 * DAY_MS, "bitget": 90 * DAY_MS}
MAX_LIMIT = {"binance": 1000, "okx": 100, "gate": 1000, "bitget": 100, "bybit": 100}


def _populate(fake: FakeExchange, since_ms: int, until_ms: int) -> list[dict[str, object]]:
    """~70 records over the window (some in clusters at one millisecond), and a few outside."""
    platform = fake.platform
    inside: list[dict[str, object]] = []
    for i in range(1, 61):
        inside += closed_record(platform, close_ms=until_ms - i * 4 * HOUR_MS)
    for at_ms in (until_ms - 5 * DAY_MS, until_ms - 2 * DAY_MS - 12 * HOUR_MS):
        for _ in range(4):  # four positions closing in the same millisecond
            inside += closed_record(platform, close_ms=at_ms)
    inside += closed_record(platform, close_ms=since_ms)  # since is inclusive
    outside = (
        closed_record(platform, close_ms=until_ms)  # until is exclusive
        + closed_record(platform, close_ms=until_ms + HOUR_MS)
        + closed_record(platform, close_ms=since_ms - HOUR_MS)
        + closed_record(platform, close_ms=since_ms - 3 * DAY_MS)
        + closed_record(platform, close_ms=until_ms - HOUR_MS, symbol="ETH")  # other symbol
    )
    fake.records += inside + outside
    return inside


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_pages_overlapping_out_of_order_records(platform: str) -> None:
    since, until = T0 - timedelta(days=10), T0
    since_ms, until_ms = T0_MS - 10 * DAY_MS, T0_MS
    async with FAKES[platform]() as fake:
        expected = _populate(fake, since_ms, until_ms)
        fake.page_overlap = 2
        fake.shuffle_pages = True
        async with open_source(fake, page_size=PAGE) as source:
            positions = (await source.fetch_closed("BTC_USDT", since, until)).records
        calls = fake.seen("closed")

    keys = [p.record_key for p in positions]
    assert sorted(keys) == sorted(record_key_of(platform, r) for r in expected)
    assert len(set(keys)) == len(keys)  # de-duplicated across pages
    assert [p.close_time for p in positions] == sorted(p.close_time for p in positions)
    assert all(since <= p.close_time < until for p in positions)
    assert {p.symbol for p in positions} == {"BTC/USDT:USDT"}
    by_key = {record_key_of(platform, r): r for r in expected}
    for p in positions:
        raw = by_key[p.record_key]
        assert p.close_time == T0 + timedelta(milliseconds=close_ms_of(platform, raw) - T0_MS)

    # several pages, every request within the exchange's limits
    assert len(calls) >= len(expected) // PAGE
    for call in calls:
        q = call.query
        assert int(q["limit"]) <= min(PAGE, MAX_LIMIT[platform])
        if platform in MAX_WINDOW_MS:
            assert int(q["endTime"]) - int(q["startTime"]) < MAX_WINDOW_MS[platform]


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_empty_window_costs_one_request(platform: str) -> None:
    async with FAKES[platform]() as fake:
        fake.records += closed_record(platform, close_ms=T0_MS - 2 * DAY_MS)
        async with open_source(fake) as source:
            window = await source.fetch_closed("BTCUSDT", T0 - timedelta(hours=1), T0)
        assert window.records == () and window.unusable == ()
        assert fake.count("closed") == 1
        assert fake.count("markets") >= 1


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_an_exchange_maximum_page_is_used_by_default(platform: str) -> None:
    async with FAKES[platform]() as fake:
        fake.records += closed_record(platform, close_ms=T0_MS - HOUR_MS)
        async with open_source(fake) as source:
            await source.fetch_closed("BTCUSDT", T0 - timedelta(days=1), T0)
        (call,) = fake.seen("closed")
    expected = {"binance": 1000, "okx": 100, "gate": 100, "bitget": 100, "bybit": 100}
    assert int(call.query["limit"]) == expected[platform]


@pytest.mark.parametrize("platform", ["binance", "bybit"])
async def test_seven_day_windows(platform: str) -> None:
    """A 30-day backfill is cut into windows the exchange accepts, oldest first."""
    async with FAKES[platform]() as fake:
        fake.records += closed_record(platform, close_ms=T0_MS - 29 * DAY_MS)
        fake.records += closed_record(platform, close_ms=T0_MS - 1)
        async with open_source(fake) as source:
            positions = (await source.fetch_closed("BTCUSDT", T0 - timedelta(days=30), T0)).records
        starts = [int(c.query["startTime"]) for c in fake.seen("closed")]
    assert len(positions) == 2
    assert len(starts) == 5  # 7 + 7 + 7 + 7 + 2 days
    assert starts == sorted(starts)
    assert starts[0] == T0_MS - 30 * DAY_MS


async def test_binance_page_cursor_advances_by_time() -> None:
    async with FAKES["binance"]() as fake:
        for i in range(10):
            fake.records += closed_record("binance", close_ms=T0_MS - (10 - i) * HOUR_MS)
        async with open_source(fake, page_size=4) as source:
            positions = (await source.fetch_closed("BTCUSDT", T0 - timedelta(days=1), T0)).records
        starts = [int(c.query["startTime"]) for c in fake.seen("closed")]
    assert len(positions) == 10
    # each next page starts at the newest fill time of the previous one (inclusive, de-duplicated)
    assert starts == [T0_MS - DAY_MS, T0_MS - 7 * HOUR_MS, T0_MS - 4 * HOUR_MS, T0_MS - HOUR_MS]


async def test_okx_pages_backwards_on_update_time() -> None:
    async with FAKES["okx"]() as fake:
        for i in range(5):
            fake.records += closed_record("okx", close_ms=T0_MS - (i + 1) * HOUR_MS)
        async with open_source(fake, page_size=2) as source:
            positions = (await source.fetch_closed("BTCUSDT", T0 - timedelta(days=1), T0)).records
        calls = fake.seen("closed")
    assert len(positions) == 5
    # the next page starts just above the oldest uTime seen, so positions closing in that same
    # millisecond but cut off by the page come again (de-duplicated) instead of being skipped
    assert [c.query["after"] for c in calls] == [
        str(T0_MS),
        *(str(T0_MS - h * HOUR_MS + 1) for h in (2, 3, 4, 5)),
    ]
    assert {c.query["before"] for c in calls} == {str(T0_MS - DAY_MS - 1)}
