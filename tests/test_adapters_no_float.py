"""No float on a money path of the adapters: a lint over their source, and runtime checks.

The lint walks the AST of the modules that turn exchange payloads into records and forbids:
``float(...)`` calls, float literals, ``Decimal`` built from a float, ccxt's unified parsers and
calls (which return floats: ``fetch_my_trades``, ``fetch_positions_history``, ``safe_number``,
``parse_number``, ...), and reading ccxt's unified numeric fields (``amount``, ``cost``,
``contracts``, ...) with ``.get(...)`` or ``[...]``.
"""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

import pytest

from exchange_adapters.fields import RecordUnusable
from exchange_adapters.markets import MarketInfo
from exchange_adapters.okx import normalize as okx_normalize
from exchange_adapters.positions import Context

ROOT = Path(__file__).resolve().parent.parent
MONEY_MODULES = (
    "base",
    "fields",
    "positions",
    "binance",
    "okx",
    "gate",
    "bitget",
    "bybit",
    "replay",
    "registry",
)
UNIFIED_CALLS = frozenset(
    {
        "fetch_my_trades",
        "fetch_positions_history",
        "fetch_positions",
        "parse_position",
        "parse_positions",
        "parse_trade",
        "parse_trades",
        "safe_number",
        "safe_number_2",
        "parse_number",
        "safe_float",
        "fetchMyTrades",
        "fetchPositionsHistory",
    }
)
UNIFIED_NUMERIC_KEYS = frozenset(
    {
        "amount",
        "cost",
        "contracts",
        "entryPrice",
        "markPrice",
        "notional",
        "unrealizedPnl",
        "collateral",
        "percentage",
        "initialMargin",
        "maintenanceMargin",
        "lastPrice",
    }
)


def float_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every forbidden construct in ``source``, as 'file:line: what'."""
    found: list[str] = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            report(node, f"float literal {node.value!r}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else (func.attr if isinstance(func, ast.Attribute) else None)
            )
            if name == "float":
                report(node, "float(...)")
            if name in UNIFIED_CALLS:
                report(node, f"ccxt unified call {name}()")
            if name == "Decimal" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, float):
                    report(node, "Decimal(<float literal>)")
            if name == "get" and node.args:
                key = node.args[0]
                if isinstance(key, ast.Constant) and key.value in UNIFIED_NUMERIC_KEYS:
                    report(node, f".get({key.value!r}): a ccxt unified (float) field")
        elif isinstance(node, ast.Subscript):
            key = node.slice
            if isinstance(key, ast.Constant) and key.value in UNIFIED_NUMERIC_KEYS:
                report(node, f"[{key.value!r}]: a ccxt unified (float) field")
    return found


@pytest.mark.parametrize("module", MONEY_MODULES)
def test_no_float_on_the_money_path(module: str) -> None:
    path = ROOT / "exchange_adapters" / f"{module}.py"
    assert float_uses(path.read_text(), str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "x = float(record['pnl'])",
        "fee = 0.1",
        "d = Decimal(0.1)",
        "trades = await exchange.fetch_my_trades('BTC/USDT')",
        "size = trade.get('amount')",
        "size = position['contracts']",
        "n = self.safe_number(info, 'pnl')",
    ],
)
def test_the_lint_catches_each_kind(snippet: str) -> None:
    assert float_uses(snippet) != []


MARKET = MarketInfo(
    symbol="BTC/USDT:USDT",
    id="BTC-USDT-SWAP",
    settle="USDT",
    settle_id="USDT",
    contract_size=Decimal("0.01"),
    info={},
)
RECORD = {
    "instId": "BTC-USDT-SWAP",
    "direction": "long",
    "posId": "1",
    "cTime": "1654177169995",
    "uTime": "1654177174419",
    "closeTotalPos": "1",
    "openAvgPx": "29783.9",
    "closeAvgPx": "29786.6",
    "pnl": "0.0011",
    "fee": "-0.0001",
    "fundingFee": "0",
    "liqPenalty": "0",
    "realizedPnl": "0.001",
}


def test_a_record_normalizes_to_decimals_only() -> None:
    record = okx_normalize(Context("okx", 1, MARKET), dict(RECORD))
    for name in ("size", "open_price", "close_price", "gross_pnl", "fee", "funding", "net_profit"):
        assert type(getattr(record, name)) is Decimal, name


@pytest.mark.parametrize("field", ["pnl", "fee", "closeTotalPos", "realizedPnl"])
def test_a_json_float_in_a_money_field_is_unusable_not_rounded(field: str) -> None:
    """A JSON number with a fraction arrives as a Python float: its exact text is lost, so it
    is not an amount to trust."""
    record = dict(RECORD, **{field: 0.1})
    with pytest.raises(RecordUnusable, match=field):
        okx_normalize(Context("okx", 1, MARKET), record)
