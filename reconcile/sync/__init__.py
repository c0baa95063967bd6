"""Sync: the exchanges' closed positions into hg_trading_order. The cycle and its schedule
(history, fleet, settings), the streams and cursors (roster), one stream's pass (window), the
matching rules (matching), a page of records into orders (upsert, record_rows, candidates),
unusable records (quarantine), API accounts and their credentials (accounts, credentials). Hands
what it closed or inserted to charging. See docs/architecture.md."""
