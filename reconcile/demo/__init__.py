"""The demo's data: its cast, trades and database writes for ``toogo-reconcile demo`` on the
embedded SQLite default. Never used on a production database. See docs/demo.md."""
