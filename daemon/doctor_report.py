"""What ``toogo-reconcile doctor`` prints: one :class:`Line` per check, marked ✓ ✗ ! or -, handed
on as soon as it is known; the :class:`Report` remembers whether any check failed. See
docs/operations.md ("Checking an installation").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Mark(StrEnum):
    OK = "✓"
    FAIL = "✗"
    WARN = "!"  # worth knowing; does not fail the run
    SKIP = "-"  # could not or need not be checked


@dataclass(frozen=True)
class Line:
    mark: Mark
    name: str
    detail: str

    def render(self) -> str:
        return f"{self.mark} {self.name:<12} {self.detail}"


Emit = Callable[[Line], None]


class Report:
    """The checks' lines, each handed to ``emit`` as soon as it is known."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self.failed = False

    def emit(self, mark: Mark, name: str, detail: str) -> None:
        self.failed |= mark is Mark.FAIL
        self._emit(Line(mark, name, detail))


def listed_ids(ids: Sequence[int]) -> str:
    """Account ids for a line: the first ten, and how many more."""
    shown = ", ".join(str(i) for i in ids[:10])
    return shown + (f" (+{len(ids) - 10})" if len(ids) > 10 else "")
