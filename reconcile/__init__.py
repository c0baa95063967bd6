"""The core of toogo-reconcile: the rules, the database, the record types and the error tree.

Imports nothing from ``daemon`` or ``exchange_adapters`` and nothing from ccxt.
"""
