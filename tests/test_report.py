"""``toogo-reconcile report``: every figure against a hand count, in the three formats, filtered,
and one order's chain - on a database seeded through the real paths (a legacy install migrated
with refunds, a history sync over real ccxt against the fake binance, the sweep) plus rows
planted as upstream's engine writes them."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange_adapters.registry import ExchangeRegistry
from kits.databases import open_database
from kits.fake_exchanges import FAKES
from kits.fake_exchanges.harness import closed_record, fast_options
from kits.seed import insert_order, set_wallet
from reconcile import migration as m
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.sweep import SweepSettings, sweep
from reconcile.storage.db import Database
from reconcile.storage.schema import correction, power_consume, wallet_log
from reconcile.sync.history import HistorySync
from reconcile.sync.settings import SyncSettings
from reconcile.views.report import report as read_report
from reconcile.views.report_figures import COLUMNS, Period, Scope
from tests.history_kit import RULES, add_account, add_robot, history_sync, position, write_replay
from tests.migration_kit import legacy_database
from tests.procs import run_cli, write_config

MONEY = {"charged", "refunded", "corrected"}
ZERO = dict.fromkeys(COLUMNS, 0)


def figures(**given: Any) -> dict[str, Any]:
    out = {**ZERO, **given}
    return {k: Decimal(v) if k in MONEY else v for k, v in out.items()}


#: the hand count of what `seed` plants, for the default period (the last 7 days)
ACCOUNT_10 = figures(
    trades=5,  # E1, E2 (closed by rec2), rec3's inserted order, E5, E6: no legs among them
    closes_seen=3,
    matched=1,
    closed=1,
    inserted=1,  # rec1 -> E1, rec2 closes E2, rec3 inserted
    charges=5,
    charged="3.41",  # E2 0.98, rec3 0.98 (sync); E1 0.95, E5 0.2 (sweep); E6 0.3 (hotgo)
    skipped_duplicates=1,  # E6: charged by hotgo, flag lost
    corrections=1,
    corrected="-0.03",
    profit_mismatches=1,  # E1: 9.5 locally, 9.8 on binance
    quarantined=1,
    unseen_closes=2,  # E5, E6: closed locally, no exchange record
)
ACCOUNT_20 = figures(trades=1, charges=1, charged="0.5", refunds=1, refunded="0.5")  # L
NO_ACCOUNT = figures(trades=1, charges=1, charged="0.1")  # E8: its robot is gone
USER_7 = figures(**{**ACCOUNT_10, "trades": 6, "charges": 6, "charged": Decimal("3.51")})
USER_8 = ACCOUNT_20
TOTAL = figures(
    **{
        **ACCOUNT_10,
        "trades": 7,
        "charges": 7,
        "charged": Decimal("4.01"),
        "refunds": 1,
        "refunded": Decimal("0.5"),
    }
)
#: --since 30d --until 5d: E7's charge and its correction, 10 days old
OLD_ACCOUNT_10 = figures(trades=1, charges=1, charged="0.4", corrections=1, corrected="0.05")


@dataclass
class Seeded:
    db: Database
    config: Path
    orders: dict[str, int]


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def plant_consume(
    db: Database, order_id: int, user_id: int, robot_id: int, amount: str, at: datetime
) -> None:
    """A consume row as hotgo's engine writes it (no ledger row: its wallet writer's business)."""

    async def ins(conn: AsyncConnection) -> None:
        await conn.execute(
            power_consume.insert().values(
                user_id=user_id,
                robot_id=robot_id,
                order_id=order_id,
                order_sn=f"O{order_id}",
                profit_amount=Decimal(amount) * 10,
                consume_rate=Decimal("0.1"),
                consume_power=Decimal(amount),
                original_power=Decimal(amount),
                created_at=at,
            )
        )

    await db.transaction(ins, what="plant consume row")


async def plant_correction(
    db: Database, order_id: int, user_id: int, amount: str, at: datetime
) -> None:
    """A correction entry as reconcile.charging.corrections writes it: its ledger row (change
    ``amount``) and its toogo_reconcile_correction row (delta = -amount; the profits and charges
    here are placeholders the report does not read)."""

    async def ins(conn: AsyncConnection) -> None:
        posted = await conn.execute(
            wallet_log.insert().values(
                user_id=user_id,
                account_type="power",
                change_type="power_consume_adjust",
                change_amount=Decimal(amount),
                before_amount=Decimal(0),
                after_amount=Decimal(amount),
                related_id=order_id,
                related_type="trading_order",
                order_sn=f"O{order_id}",
                remark="correction",
                created_at=at,
            )
        )
        await conn.execute(
            correction.insert().values(
                order_id=order_id,
                user_id=user_id,
                revision=1,
                order_sn=f"O{order_id}",
                old_profit=Decimal(1),
                new_profit=Decimal(1),
                old_charge=Decimal(0),
                new_charge=-Decimal(amount),
                delta=-Decimal(amount),
                wallet_log_id=posted.inserted_primary_key[0],
                created_at=at,
            )
        )

    await db.transaction(ins, what="plant correction")


@pytest.fixture
async def seeded(server_url: str, tmp_path: Path) -> AsyncIterator[Seeded]:
    db = await legacy_database(server_url)
    now = datetime.now(UTC).replace(microsecond=0)

    def local(delta: timedelta) -> datetime:
        return db.to_db_time(now - delta)

    def closed(hours: float, profit: str, **fields: Any) -> dict[str, Any]:
        return {
            "user_id": 7,
            "robot_id": 100,
            "quantity": Decimal("0.01"),
            "realized_profit": Decimal(profit),
            "close_time": local(timedelta(hours=hours)),
            "open_time": local(timedelta(hours=hours + 0.5)),
            **fields,
        }

    orders: dict[str, int] = {}
    try:
        # a legacy install: hotgo charged order L twice; `migrate up --refund` refunds one
        await set_wallet(db, 8, Decimal("10"))
        orders["L"] = await insert_order(
            db,
            **closed(2, "5", user_id=8, robot_id=200, power_consumed=1),
            power_amount=Decimal("0.5"),
        )
        for _ in range(2):
            await plant_consume(db, orders["L"], 8, 200, "0.5", local(timedelta(hours=2)))
        assert (await m.up(db, refund_overcharge=True, dry_run=False)).ok

        async with FAKES["binance"]() as fake:
            await add_account(
                db,
                10,
                7,
                "binance",
                base_url=fake.url,
                api_key=fake.api_key,
                secret_key=fake.secret,
            )
            await add_robot(db, 100, 7, 10, exchange="binance")
            await add_account(db, 20, 8, "okx")
            await add_robot(db, 200, 8, 20, exchange="okx", status=4)  # stopped: not polled
            # the engine's orders
            orders["E1"] = await insert_order(db, **closed(3, "9.5"))
            orders["E2"] = await insert_order(
                db, **closed(5, "0", status=1, close_time=None, close_price=None)
            )
            orders["E5"] = await insert_order(db, **closed(4, "2"))
            orders["E6"] = await insert_order(db, **closed(5, "3"))
            await plant_consume(db, orders["E6"], 7, 100, "0.3", local(timedelta(hours=5)))
            orders["E7"] = await insert_order(
                db, **closed(240, "4", power_consumed=1), power_amount=Decimal("0.4")
            )
            await plant_consume(db, orders["E7"], 7, 100, "0.4", local(timedelta(days=10)))
            orders["E8"] = await insert_order(db, **closed(6, "1", robot_id=999))
            # what binance says closed: E1 (30 s later, another profit), E2's close, a trade
            # the local table never saw, and one it sends without realizedPnl
            at = now - timedelta(hours=3) + timedelta(seconds=30)
            fake.records += closed_record("binance", close_ms=ms(at), profit="10")
            fake.records += closed_record("binance", close_ms=ms(now - timedelta(hours=2)))
            fake.records += closed_record("binance", close_ms=ms(now - timedelta(hours=1)))
            (broken,) = closed_record("binance", close_ms=ms(now - timedelta(minutes=90)))
            del broken["realizedPnl"]
            fake.records.append(broken)
            consumer = PowerConsumer(db, RULES)
            async with ExchangeRegistry({"binance": fast_options()}) as registry:
                settings = SyncSettings(platforms=frozenset({"binance"}))
                sync = HistorySync(db, consumer, registry, settings)
                summary = await sync.run_cycle()
        assert (summary.matched, summary.closed, summary.inserted, summary.charged) == (1, 1, 1, 2)
        swept = await sweep(consumer, SweepSettings())
        assert (swept.charged, swept.skipped_duplicate) == (3, 1)
        # corrections of E1's charge and E7's, as reconcile.charging.corrections writes them
        await plant_correction(db, orders["E1"], 7, "-0.03", local(timedelta(hours=1)))
        await plant_correction(db, orders["E7"], 7, "0.05", local(timedelta(days=10)))
        config = write_config(tmp_path / "c.yaml", server_url)
        yield Seeded(db, config, orders)
    finally:
        await db.close()


async def report(seeded: Seeded, *args: str) -> str:
    code, out, err = await run_cli(seeded.config, "report", *args)
    assert code == 0, err
    assert "secret" not in out.lower() and "api_key" not in out
    return out


def from_json(line: dict[str, Any]) -> dict[str, Any]:
    """The figures of a JSON object or a CSV row (whose numbers are text)."""
    return {k: Decimal(line[k]) if k in MONEY else int(line[k]) for k in COLUMNS}


def parse_table(out: str) -> dict[tuple[str, str], dict[str, Any]]:
    """{(section, id): figures} of the table format; the total's id is ''."""
    parsed: dict[tuple[str, str], dict[str, Any]] = {}
    section = ""
    lines = out.splitlines()
    for i, text in enumerate(lines):
        if text in ("accounts", "users", "total"):
            section = text
            continue
        if not text.strip() or i == 0 or lines[i - 1] in ("accounts", "users", "total"):
            continue  # the period line, blank lines, header rows
        tokens = text.split()
        key, values = ("", tokens) if section == "total" else (tokens[0], tokens[-len(COLUMNS) :])
        parsed[(section, key)] = {
            k: Decimal(v) if k in MONEY else int(v) for k, v in zip(COLUMNS, values, strict=True)
        }
    return parsed


async def test_each_figure_matches_the_hand_count_in_every_format(seeded: Seeded) -> None:
    doc = json.loads(await report(seeded, "--format", "json"))
    accounts = {a["account_id"]: a for a in doc["accounts"]}
    assert {k: from_json(v) for k, v in accounts.items()} == {
        10: ACCOUNT_10,
        20: ACCOUNT_20,
        None: NO_ACCOUNT,
    }
    assert (accounts[10]["platform"], accounts[10]["user_id"]) == ("binance", 7)
    assert (accounts[20]["platform"], accounts[20]["user_id"]) == ("okx", 8)
    assert {u["user_id"]: from_json(u) for u in doc["users"]} == {7: USER_7, 8: USER_8}
    assert from_json(doc["total"]) == TOTAL
    assert set(doc["columns"]) == set(COLUMNS)

    rows = list(csv.DictReader(io.StringIO(await report(seeded, "--format", "csv"))))
    by_key = {(r["section"], r["id"]): from_json(r) for r in rows}
    assert by_key == {
        ("account", "10"): ACCOUNT_10,
        ("account", "20"): ACCOUNT_20,
        ("account", ""): NO_ACCOUNT,
        ("user", "7"): USER_7,
        ("user", "8"): USER_8,
        ("total", ""): TOTAL,
    }
    assert rows[0]["platform"] == "binance" and rows[0]["user_id"] == "7"

    assert parse_table(await report(seeded)) == {
        ("accounts", "10"): ACCOUNT_10,
        ("accounts", "20"): ACCOUNT_20,
        ("accounts", "-"): NO_ACCOUNT,
        ("users", "7"): USER_7,
        ("users", "8"): USER_8,
        ("total", ""): TOTAL,
    }


async def test_filters_narrow_the_figures(seeded: Seeded) -> None:
    async def doc(*args: str) -> dict[str, Any]:
        return dict(json.loads(await report(seeded, "--format", "json", *args)))

    only_8 = await doc("--user", "8")
    assert [(a["account_id"], from_json(a)) for a in only_8["accounts"]] == [(20, ACCOUNT_20)]
    assert [u["user_id"] for u in only_8["users"]] == [8] and from_json(only_8["total"]) == USER_8

    only_10 = await doc("--account", "10")
    assert [(a["account_id"], from_json(a)) for a in only_10["accounts"]] == [(10, ACCOUNT_10)]
    assert [(u["user_id"], from_json(u)) for u in only_10["users"]] == [(7, ACCOUNT_10)]
    assert only_10["scope"] == {"user_id": None, "account_id": 10}

    nobody = await doc("--user", "7", "--account", "20")
    assert nobody["accounts"] == [] and from_json(nobody["total"]) == ZERO

    old = await doc("--since", "30d", "--until", "5d")
    assert [(a["account_id"], from_json(a)) for a in old["accounts"]] == [(10, OLD_ACCOUNT_10)]
    since = datetime.now(UTC) - timedelta(hours=2, minutes=30)
    # the last 2.5 hours: every binding and the daemon's charges are minutes old; L's consume
    # row is 2 hours old, E6's (hotgo's) 5: out; E1's correction 1 hour old
    got = from_json((await doc("--since", since.isoformat()))["total"])
    assert (got["closes_seen"], got["charges"], got["corrections"]) == (3, 6, 1)
    assert got["unseen_closes"] == 0  # E5 and E6 closed 4 and 5 hours ago
    until = (datetime.now(UTC) - timedelta(days=1)).replace(tzinfo=None).isoformat()
    week = await doc("--until", until)  # naive: UTC
    assert from_json(week["total"]) == ZERO


async def test_order_shows_its_whole_chain(seeded: Seeded) -> None:
    e1 = seeded.orders["E1"]
    chain = json.loads(await report(seeded, "--order", str(e1), "--format", "json"))
    assert chain["order"]["id"] == e1 and Decimal(chain["order"]["realized_profit"]) == Decimal(
        "9.5"
    )
    (bound,) = chain["bindings"]
    assert (bound["kind"], bound["rule"], bound["account_id"]) == ("order", "close_time", 10)
    (record,) = chain["records"]
    assert record["record_key"] == bound["record_key"] and Decimal(record["profit"]) == Decimal(
        "9.8"
    )
    assert record["normalized"]["net_profit"] == "9.8" and record["normalized"]["fee"] == "-0.2"
    assert record["raw"]["fills"][0]["realizedPnl"] == "10"  # the exchange's own payload
    (consume,) = chain["consumes"]
    assert Decimal(consume["consume_power"]) == Decimal("0.95")
    assert [(e["change_type"], Decimal(e["change_amount"])) for e in chain["ledger"]] == [
        ("power_consume", Decimal("-0.95")),
        ("power_consume_adjust", Decimal("-0.03")),
    ]
    assert [(c["revision"], Decimal(c["delta"])) for c in chain["corrections"]] == [
        (1, Decimal("0.03"))
    ]
    assert chain["corrections"][0]["wallet_log_id"] == chain["ledger"][1]["id"]
    assert chain["skipped"] == [] and chain["refunds"] == []

    e6 = json.loads(await report(seeded, "--order", str(seeded.orders["E6"]), "--format", "json"))
    (skip,) = e6["skipped"]
    assert (skip["source"], Decimal(skip["consume_power"]), skip["repaired_flag"]) == (
        "sweep",
        Decimal("0.3"),
        1,
    )
    assert e6["bindings"] == [] and e6["records"] == [] and e6["ledger"] == []

    refunded = json.loads(
        await report(seeded, "--order", str(seeded.orders["L"]), "--format", "json")
    )
    (refund,) = refunded["refunds"]
    assert Decimal(refund["amount"]) == Decimal("0.5") and refund["reversed"] == 0
    assert [e["change_type"] for e in refunded["ledger"]] == ["power_consume_refund"]

    table = await report(seeded, "--order", str(e1))
    assert f"  id: {e1}" in table and "records (1)" in table and "corrections (1)" in table
    assert "realizedPnl" in table and "power_consume_adjust" in table
    rows = list(
        csv.DictReader(io.StringIO(await report(seeded, "--order", str(e1), "--format", "csv")))
    )
    assert {"part", "index", "field", "value"} == set(rows[0])
    assert {"part": "consumes", "index": "1", "field": "consume_power", "value": "0.95000000"} in (
        rows
    )


async def test_bad_input_is_a_clear_usage_error(
    server_db: Database, server_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", server_url)
    for args, message in (
        (("--format", "xml"), "'xml' is not one of 'table', 'json', 'csv'"),
        (("--since", "lately"), "'lately' is neither a duration"),
        (("--since", "1d", "--until", "2d"), "--since must be before --until"),
        (("--user", "0"), "--user"),
    ):
        code, out, err = await run_cli(config, "report", *args)
        assert (code, out) == (2, ""), (args, err)
        assert message in err, (args, err)
    code, out, err = await run_cli(config, "report", "--order", "424242")
    assert (code, out) == (1, "") and "order 424242 not found" in err
    code, out, _ = await run_cli(config, "report", "--help")
    assert code == 0 and all(name in out for name in COLUMNS)


async def test_the_embedded_sqlite_sums_exactly(sqlite_url: str, tmp_path: Path) -> None:
    """SQLite keeps decimals as text: the sums are the texts' exact sum, never floats."""
    db = await open_database(sqlite_url)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        await add_account(db, 10, 7)
        await add_robot(db, 100, 7, 10)
        replay = write_replay(
            tmp_path / "r.jsonl",
            [
                position(10, f"k{i}", closed=now - timedelta(hours=i), net=net)
                for i, net in enumerate(("0.1", "0.2", "0.4"), 1)
            ],
        )
        async with history_sync(db, replay) as sync:
            assert (await sync.run_cycle()).charged == 3
        period = Period(now - timedelta(days=1), now + timedelta(minutes=1))
        got = await read_report(db, period, Scope(), sync=SyncSettings())
    finally:
        await db.close()
    assert [line.id for line in got.accounts] == [10] and [u.id for u in got.users] == [7]
    assert (got.total.closes_seen, got.total.inserted, got.total.charges) == (3, 3, 3)
    assert got.total.charged == Decimal("0.07")  # 0.01 + 0.02 + 0.04, not 0.07000000000000001
