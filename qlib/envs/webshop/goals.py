"""Goals of the 1k catalogue (spec §2): 6,910 synthetic goals (the task list) and the 13 human goals.

Goal ``i`` is ``synthetic_goals()[i]``: built in catalogue order, price bounds drawn from the
dedicated price RNG right after the hidden prices, then shuffled with ``random.Random(233)`` exactly
like the original's ``random.seed(233); random.shuffle(goals)``.
"""
from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Mapping

from qlib.envs.base import check_split
from qlib.envs.webshop.catalogue import hidden_prices, load_catalogue, price_rng

SHUFFLE_SEED = 233
PRICE_RANGE: tuple[float, ...] = tuple(10.0 * i for i in range(1, 100))
NO_PRICE_LIMIT = 1000000
#: Task-id ranges of the splits over the shuffled synthetic goals (WebShop's IL convention).
SPLIT_RANGES: dict[str, tuple[int, int | None]] = {"test": (0, 500), "valid": (500, 1500), "train": (1500, None)}


@dataclass(frozen=True)
class Goal:
    """One shopping goal. ``goal_options`` holds (name, value) pairs for synthetic goals (the original's
    dict) and plain value strings for human goals (the original's list)."""

    index: int
    asin: str
    category: str
    query: str
    name: str
    product_category: str
    instruction_text: str
    attributes: tuple[str, ...]
    price_upper: float
    goal_options: tuple[Any, ...]
    weight: float = 1.0
    synthetic: bool = True

    def option_values(self) -> tuple[str, ...]:
        """The option values to select, in goal order."""
        return tuple(v for _, v in self.goal_options) if self.synthetic else tuple(self.goal_options)

    def as_dict(self) -> dict[str, Any]:
        """The original's goal dict (``goal_options`` a dict or a list), as the reward functions expect."""
        options = dict(self.goal_options) if self.synthetic else list(self.goal_options)
        return {
            "asin": self.asin, "category": self.category, "query": self.query, "name": self.name,
            "product_category": self.product_category, "instruction_text": self.instruction_text,
            "attributes": list(self.attributes), "price_upper": self.price_upper, "goal_options": options,
            "weight": self.weight,
        }


def draw_price_clause(price: float, rng: random.Random) -> tuple[float, str]:
    """``(price_upper, clause)``: the larger of two distinct draws among the first 4 bounds above ``price``."""
    candidates = [p for p in PRICE_RANGE if p > price][:4]
    if len(candidates) < 2:
        return NO_PRICE_LIMIT, ""
    price_upper = max(rng.sample(candidates, 2))
    return price_upper, f", and price lower than {price_upper:.2f} dollars"


def option_clause(options: tuple[tuple[str, str], ...]) -> str:
    """`` with name: value, and name: value`` (empty without options)."""
    text = ", and ".join(f"{name}: {value}" for name, value in options)
    return f" with {text}" if text else ""


def _product_goals(product: Mapping[str, Any], price_upper: float, price_text: str) -> list[Goal]:
    names = sorted(product["options"])
    goals = []
    for combination in itertools.product(*(product["options"][n] for n in names)):
        options = tuple(zip(names, combination))
        goals.append(Goal(
            index=-1, asin=product["asin"], category=product["category"], query=product["query"],
            name=product["Title"], product_category=product["product_category"],
            instruction_text=f"{product['instruction_text']}{option_clause(options)}{price_text}",
            attributes=tuple(product["instruction_attributes"]), price_upper=price_upper, goal_options=options,
        ))
    return goals


def _with_weights(goals: list[Goal]) -> list[Goal]:
    counts: Counter[str] = Counter(att for goal in goals for att in goal.attributes)
    return [replace(g, weight=sum(1.0 / counts[a] for a in g.attributes) / len(g.attributes)) for g in goals]


def _shuffled(goals: list[Goal]) -> tuple[Goal, ...]:
    random.Random(SHUFFLE_SEED).shuffle(goals)
    return tuple(replace(g, index=i) for i, g in enumerate(goals))


@lru_cache(maxsize=1)
def synthetic_goals() -> tuple[Goal, ...]:
    """The 6,910 synthetic goals in goal-index order (spec §2.2, §2.3, §2.5)."""
    rng, prices = price_rng(), hidden_prices()
    goals: list[Goal] = []
    for product in load_catalogue().products:
        if product["instruction_text"] is None:
            continue
        price_upper, price_text = draw_price_clause(prices[product["asin"]], rng)
        goals += _product_goals(product, price_upper, price_text)
    return _shuffled(_with_weights(goals))


@lru_cache(maxsize=1)
def human_goals() -> tuple[Goal, ...]:
    """The 13 human goals the 1k catalogue carries (spec §2.4), drawn from the same price RNG state
    as the synthetic goals (the original builds one goal set or the other, never both)."""
    rng, prices = price_rng(), hidden_prices()
    goals: list[Goal] = []
    for product in load_catalogue().products:
        for entry in product.get("instructions") or []:
            if not entry["instruction_attributes"]:
                continue
            price_upper, price_text = draw_price_clause(prices[product["asin"]], rng)
            goals.append(Goal(
                index=-1, asin=product["asin"], category=product["category"], query=product["query"],
                name=product["name"], product_category=product["product_category"],
                instruction_text=entry["instruction"].strip(".") + price_text,
                attributes=tuple(entry["instruction_attributes"]), price_upper=price_upper,
                goal_options=tuple(entry["instruction_options"]), synthetic=False,
            ))
    return _shuffled(goals)


def split_ids(split: str, n_goals: int) -> list[int]:
    """Task ids of ``split``: test 0-499, valid 500-1499, train 1500+ (clipped to ``n_goals``)."""
    start, stop = SPLIT_RANGES[check_split(split)]
    return list(range(min(start, n_goals), n_goals if stop is None else min(stop, n_goals)))
