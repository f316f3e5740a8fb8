"""The complete, immutable state of one WebShop episode (it is also the env's snapshot value)."""
from __future__ import annotations

from dataclasses import dataclass

from qlib.envs.webshop.goals import Goal

START, RESULTS, ITEM, DONE = "start", "results", "item", "done"
SUB_PAGES = ("description", "features", "reviews", "attributes")
PAGE_KINDS = (START, RESULTS, ITEM, DONE) + SUB_PAGES


@dataclass(frozen=True)
class Session:
    """Page, search keywords, result-page number, current ASIN, selected options, visited ASINs,
    goal, step count and termination flags. Every field is an immutable value."""

    goal: Goal
    page: str = START
    keywords: tuple[str, ...] = ()
    page_num: int = 1
    asin: str | None = None
    options: tuple[tuple[str, str], ...] = ()  # (option group, value), first-selection order
    visited: frozenset[str] = frozenset()
    steps: int = 0
    done: bool = False
    truncated: bool = False
    reward: float = 0.0  # the purchase reward once bought

    @property
    def query(self) -> str:
        """The search text the keywords stand for."""
        return " ".join(self.keywords)

    def options_dict(self) -> dict[str, str]:
        return dict(self.options)

    def with_option(self, group: str, value: str) -> tuple[tuple[str, str], ...]:
        """``options`` after selecting ``value`` in ``group`` (replacing an earlier choice in place)."""
        if any(g == group for g, _ in self.options):
            return tuple((g, value if g == group else v) for g, v in self.options)
        return self.options + ((group, value),)
