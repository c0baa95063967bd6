"""What an audit check found: how many rows break its rule, and a few of them as examples
(``toogo-reconcile audit``, docs/runbook.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXAMPLES = 10  # examples kept per check; the count is of every violation


@dataclass
class Check:
    name: str
    description: str
    violations: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def add(self, example: dict[str, Any]) -> None:
        """One more violation; its example is kept while fewer than EXAMPLES are."""
        self.violations += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


@dataclass
class AuditReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)
