"""The exchange registry as reconcile's ``SourceProvider`` port (used by the history sync)."""

from __future__ import annotations

from exchange_adapters.registry import ExchangeRegistry
from reconcile.accounts import ApiAccount
from reconcile.records import ClosedPositionSource


class RegistryProvider:
    def __init__(self, registry: ExchangeRegistry) -> None:
        self.registry = registry

    def source_for(self, account: ApiAccount) -> ClosedPositionSource:
        return self.registry.source_for(account)

    def profit_basis(self, account: ApiAccount) -> str:
        return self.registry.options_for(account).profit_basis

    def requests(self) -> int:
        return self.registry.requests()
