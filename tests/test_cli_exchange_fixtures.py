"""``exchange closed --json`` on fixtures served byte for byte: the operator's view of them."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from kits.fake_exchanges import FAKES
from kits.fake_exchanges.harness import at
from reconcile.storage.db import Database
from tests.exchange_fixtures import MARKETS, body_of
from tests.history_kit import add_account
from tests.procs import run_cli, write_config

D = Decimal


async def closed_json(
    db: Database, url: str, tmp_path: Path, platform: str, name: str, symbol: str
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    async with FAKES[platform](markets=MARKETS) as fake:
        await add_account(
            db,
            10,
            user_id=7,
            platform=platform,
            base_url=fake.url,
            api_key=fake.api_key,
            secret_key=fake.secret,
            passphrase=fake.passphrase,
        )
        body = body_of(platform, name)
        fake.serve_body(body)
        cfg = write_config(
            tmp_path / "c.yaml",
            url,
            exchanges={
                platform: {
                    "timeout": "2s",
                    "rate_limit": "1ms",
                    "retry": {"attempts": 2, "initial": "10ms", "max": "20ms"},
                }
            },
        )
        # the fixtures are years old: a look-back long enough to hold them
        code, out, err = await run_cli(
            cfg,
            "exchange",
            "closed",
            "--account",
            "10",
            "--symbol",
            symbol,
            "--since",
            "5000d",
            "--json",
        )
        assert code == 0, err
        assert fake.served == [body]
    positions = [json.loads(line) for line in out.splitlines()]
    unusable = [json.loads(line) for line in err.splitlines() if '"unusable"' in line]
    return positions, unusable


async def test_okx_docs_example_through_the_cli(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    positions, unusable = await closed_json(
        mysql_db, mysql_url, tmp_path, "okx", "docs_positions_history", "BTC-USDT-SWAP"
    )
    (p,) = positions
    assert unusable == []
    assert p["record_key"] == "452587086133239818:1654177169995"
    assert D(str(p["net_profit"])) == D("0.0011") + D("-0.0001")  # realizedPnl = pnl + fee
    assert p["profit_basis"] == "fees+funding" and p["funding_known"] is True
    assert p["close_time"] == at(1654177174419).isoformat().replace("+00:00", "Z")  # uTime


async def test_gate_empty_pnl_pnl_through_the_cli(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    positions, _ = await closed_json(
        mysql_db, mysql_url, tmp_path, "gate", "variant_empty_pnl_pnl", "SLERF_USDT"
    )
    (p,) = positions
    assert p["net_profit"] == "-23.41702352"  # gate's pnl, not -24.11534704
    assert D(str(p["gross_pnl"])) == D("-23.41702352") - D("-0.06527125") - D("-0.63305227")


@pytest.mark.parametrize("platform", ["bitget"])
async def test_an_unusable_record_is_shown_not_hidden(
    mysql_db: Database, mysql_url: str, tmp_path: Path, platform: str
) -> None:
    positions, unusable = await closed_json(
        mysql_db, mysql_url, tmp_path, platform, "variant_empty_open_fee", "BTCUSDT"
    )
    assert positions == []
    (u,) = unusable
    assert u["record_key"] == "BTCUSDT:long:1700720651684:1700720700400"
    assert "openFee" in str(u["reason"])
