"""hotgo's robot symbols mapped to ccxt's unified symbol of the USDT-margined perpetual swap.

``BTC_USDT``, ``BTCUSDT``, ``BTC-USDT``, ``BTC/USDT``, ``btc_usdt``, ``BTC-USDT-SWAP`` (okx),
``BTCUSDT_UMCBL`` (bitget v1) and the unified ``BTC/USDT:USDT`` itself all map to
``BTC/USDT:USDT``. USDC-quoted symbols map to the USDC-settled swap. Anything else raises
:class:`~exchange_adapters.errors.UnknownSymbol` naming the symbol.
See docs/exchanges.md.
"""

from __future__ import annotations

import re

from exchange_adapters.errors import UnknownSymbol

QUOTES: tuple[str, ...] = ("USDT", "USDC")
_SUFFIXES = ("-SWAP", "_SWAP", "_UMCBL", "_PERP", "-PERP")
_UNIFIED = re.compile(r"^([A-Z0-9]+)/([A-Z0-9]+):([A-Z0-9]+)$")
_SPLIT = re.compile(r"^([A-Z0-9]+)[_\-/]([A-Z0-9]+)$")
_ASSET = re.compile(r"^[A-Z0-9]{1,20}$")


def _fail(symbol: str) -> UnknownSymbol:
    return UnknownSymbol(
        f"cannot map robot symbol {symbol!r} to a USDT-margined swap "
        "(expected forms: BTC_USDT, BTCUSDT, BTC-USDT, BTC/USDT, BTC-USDT-SWAP, BTC/USDT:USDT)"
    )


def to_unified(symbol: str) -> str:
    """The unified ccxt symbol (``BASE/QUOTE:SETTLE``) of a robot symbol."""
    text = symbol.strip().upper()
    if m := _UNIFIED.match(text):
        base, quote, settle = m.groups()
        if quote not in QUOTES or settle != quote:
            raise _fail(symbol)
        return text
    for suffix in _SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    if m := _SPLIT.match(text):
        base, quote = m.groups()
    else:
        for quote in QUOTES:
            if text.endswith(quote) and len(text) > len(quote):
                base = text[: -len(quote)]
                break
        else:
            raise _fail(symbol)
    if quote not in QUOTES or not _ASSET.match(base) or base == quote:
        raise _fail(symbol)
    return f"{base}/{quote}:{quote}"
