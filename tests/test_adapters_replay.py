"""The replay adapter (JSON Lines / CSV), the registry's replay fallback, and the JSON output."""

from __future__ import annotations

import csv
import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from exchange_adapters.options import AdapterOptions
from exchange_adapters.registry import (
    ExchangeRegistry,
    closed_positions_for_account,
    position_to_json,
)
from exchange_adapters.replay import FIELDS, ReplaySource, ReplayStore, read_file
from reconcile.errors import ConfigError
from reconcile.records import ApiAccount, ClosedPosition

T = datetime(2026, 5, 17, 6, 40, tzinfo=UTC)
SINCE, UNTIL = T - timedelta(days=7), T + timedelta(days=1)


def _record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "platform": "binance",
        "account_id": 7,
        "symbol": "BTC/USDT:USDT",
        "direction": "long",
        "size": "0.01",
        "open_price": "60000",
        "close_price": "61000",
        "gross_pnl": "10",
        "fee": "-0.2",
        "funding": "-0.1",
        "net_profit": "9.7",
        "open_time": "2026-05-17T05:40:00Z",
        "close_time": "2026-05-17T06:40:00Z",
        "record_key": "order-1",
    }
    record.update(overrides)
    return record


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _write_csv(path: Path, records: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f for f in FIELDS])
        writer.writeheader()
        for record in records:
            row = {k: ("" if v is None else v) for k, v in record.items()}
            if isinstance(row.get("raw"), dict):
                row["raw"] = json.dumps(row["raw"])
            writer.writerow(row)
    return path


async def _fetch(path: Path, account_id: int = 7, symbol: str = "BTC_USDT") -> list[ClosedPosition]:
    window = await ReplaySource(ReplayStore(path), account_id).fetch_closed(symbol, SINCE, UNTIL)
    return list(window.records)


async def test_jsonl_records_filtered_sorted_and_exact(tmp_path: Path) -> None:
    path = tmp_path / "closed.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(_record(record_key="b", close_time="2026-05-17T14:40:00+08:00")),
                "",
                # JSON numbers are read exactly (never through float); epoch ms times
                '{"platform":"okx","account_id":7,"symbol":"BTC-USDT-SWAP","direction":"short",'
                '"size":0.03,"open_price":null,"close_price":61000.1,"gross_pnl":-3.333333333333333333,'
                '"fee":-0.1,"funding":0,"open_time":null,"close_time":1778990000000,'
                '"record_key":"a","raw":{"posId":"1","pnl":"-3.3"}}',
                json.dumps(_record(account_id=8, record_key="other-account")),
                json.dumps(_record(symbol="ETH_USDT", record_key="other-symbol")),
                json.dumps(_record(record_key="late", close_time="2026-05-19T00:00:00Z")),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    first, second = await _fetch(path)
    assert first.record_key == "a" and first.platform == "okx"
    assert first.gross_pnl == Decimal("-3.333333333333333333")
    assert first.size == Decimal("0.03") and first.close_price == Decimal("61000.1")
    assert first.open_price is None and first.open_time is None
    assert first.net_profit == Decimal("-3.433333333333333333")
    assert first.raw == {"posId": "1", "pnl": "-3.3"}
    assert first.close_time == datetime(2026, 5, 17, 3, 53, 20, tzinfo=UTC)
    assert second.record_key == "b" and second.close_time == T  # +08:00 converted to UTC
    assert second.net_profit == Decimal("9.7") and second.fee == Decimal("-0.2")


async def test_csv_and_directories(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    _write_csv(
        folder / "a.csv",
        [
            _record(record_key="k1", open_price=None, open_time=None, raw={"orderId": "k1"}),
            _record(record_key="k2", close_time="2026-05-16T00:00:00Z"),
        ],
    )
    # a later file replaces a record with the same key
    _write_jsonl(folder / "b.jsonl", [_record(record_key="k1", gross_pnl="20", net_profit=None)])
    (folder / "notes.txt").write_text("ignored", encoding="utf-8")
    positions = await _fetch(folder)
    assert [p.record_key for p in positions] == ["k2", "k1"]
    assert positions[1].gross_pnl == Decimal("20") and positions[1].net_profit == Decimal("19.7")
    assert positions[0].raw == {}


async def test_files_are_reread_when_they_change(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "r.jsonl", [_record(record_key="one")])
    source = ReplaySource(ReplayStore(path), 7)
    assert len((await source.fetch_closed("BTCUSDT", SINCE, UNTIL)).records) == 1
    _write_jsonl(path, [_record(record_key="one"), _record(record_key="two")])
    os.utime(path, ns=(1, 1))
    assert len((await source.fetch_closed("BTCUSDT", SINCE, UNTIL)).records) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not JSON"),
        ("[1, 2]", "line 2: not a JSON object"),
        (json.dumps(_record(direction="net")), "line 2: direction"),
        (json.dumps(_record(record_key="")), "line 2: record_key is missing"),
        (json.dumps(_record(close_time="2026-05-17T06:40:00")), "has no time zone"),
        (json.dumps(_record(net_profit="9.8")), "net_profit differs"),
        (json.dumps(_record(size="abc")), "size: 'abc' is not a decimal"),
        (json.dumps(_record(symbol="BTC")), "cannot map robot symbol"),
        (json.dumps({**_record(), "pnl": "1"}), "unknown field(s) pnl"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record()) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.jsonl") as caught:
        read_file(path)
    assert message in str(caught.value)


async def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        await _fetch(tmp_path / "nope.jsonl")


async def test_registry_serves_accounts_of_disabled_platforms_from_replay(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "demo.jsonl", [_record(), _record(record_key="order-2")])
    platforms = {"replay": AdapterOptions(path=path)}
    account = ApiAccount(id=7, user_id=1, platform="binance")
    async with ExchangeRegistry(platforms) as registry:
        source = registry.source_for(account)
        assert isinstance(source, ReplaySource) and source.platform == "binance"
        assert registry.options_for(account) is platforms["replay"]
        assert len((await source.fetch_closed("BTCUSDT", SINCE, UNTIL)).records) == 2
    positions = await closed_positions_for_account(account, platforms, "BTC-USDT", SINCE, UNTIL)
    assert [p.record_key for p in positions.records] == ["order-1", "order-2"]


async def test_json_output_round_trips_through_replay(tmp_path: Path) -> None:
    original = await _fetch(
        _write_jsonl(
            tmp_path / "in.jsonl",
            [
                _record(
                    gross_pnl="0.00000001",
                    fee="-1E-8",
                    funding="0",
                    net_profit="0E-8",
                    raw={"orderId": 5},
                ),
                _record(record_key="k2", open_time=None, open_price=None),
            ],
        )
    )
    rendered = [position_to_json(p, include_raw=True) for p in original]
    k2, first = rendered  # same close time: ordered by record key
    assert first["record_key"] == "order-1"
    assert first["gross_pnl"] == "0.00000001" and first["fee"] == "-0.00000001"
    assert first["net_profit"] == "0.00000000"  # never exponent notation
    assert first["close_time"] == "2026-05-17T06:40:00Z"
    assert first["open_time"] == "2026-05-17T05:40:00Z"
    assert first["raw"] == {"orderId": 5} and first["account_id"] == 7
    assert k2["open_time"] is None and k2["open_price"] is None
    assert "raw" not in position_to_json(original[0])
    assert json.loads(json.dumps(rendered)) == rendered
    path = tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rendered), encoding="utf-8")
    assert await _fetch(path) == original
