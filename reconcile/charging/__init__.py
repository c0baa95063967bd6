"""Charging: where an order is charged, once. Whether an order is charged (orders), the price
(pricing, price_inputs), the consumer and its outcomes (consumer, row_charger, debits, outcomes),
the only writer of wallets and the wallet log (ledger), trades and their closing legs (trades,
trade_rows, verdicts, held), shadow mode, corrections, the sweep, and the audit lines (lines).
Imports storage only. See docs/charging.md."""
