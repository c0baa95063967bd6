"""The core of toogo-reconcile: the rules, the database, the record types and the error tree.

Packages by job, importing one way: ``storage`` <- ``charging`` <- ``sync`` <- ``views``
(``migration`` and ``demo`` use any of them); ``records`` (the exchange port's types) and
``errors`` (the one exception tree) sit at the root and import nothing of the packages.
Imports nothing from ``daemon`` or ``exchange_adapters`` and nothing from ccxt.
See docs/architecture.md ("The folders").
"""
