"""Exchange adapters: reconcile's ``ClosedPositionSource`` port implemented with ccxt and files.

One small module per exchange (binance USDⓈ-M, okx, gate, bitget, bybit) over a common base
(``base.py``), a replay adapter for JSON Lines / CSV files (``replay.py``), one error mapping
(``errors.map_ccxt_errors``), one retry layer (``retry.py``), and a registry holding one ccxt
client per (platform, API account) (``registry.ExchangeRegistry``).

Import the modules themselves: this package imports nothing on purpose, so that commands that
never talk to an exchange (``consume``, ``sweep``) do not pay ccxt's ~1.5 s import.
"""
