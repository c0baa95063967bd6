"""Views: read-only. The ledger invariants (audit, audit_charges, findings), the daemon's gauges
and doctor's reads (status), and `report`'s figures and an order's chain (report,
report_figures, report_queries). Writes nothing. See docs/reports.md and docs/runbook.md."""
