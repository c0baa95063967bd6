"""Storage: the database under everything else. Engines and whole-transaction retries (db,
engines, retries), driver errors into the error tree (db_errors), what differs between MariaDB,
PostgreSQL and SQLite (dialect), hotgo's tables and the daemon's own (schema, hotgo_tables,
own_tables), what the live schema must have (contract), waiting between transactions (pacing),
multi-row writes (bulk), the database roles (grants), retention, and the streams still polled
(streams). Imports nothing of charging, sync or views. See docs/architecture.md."""
