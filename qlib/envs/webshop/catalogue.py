"""The offline 1k-product catalogue (spec §1) and its hidden purchase prices (spec §1.1).

Products are the loader-processed dicts of ``webshop_1k_documents.jsonl.gz`` in file order, with
the synthetic ``instruction`` / ``instruction_attributes`` of ``items_ins_v2_1000.json`` merged in.
They are shared, cached process-wide and must be treated as read-only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Mapping

from qlib.data import iter_jsonl, read_json

DOCUMENTS_FILE = "webshop/webshop_1k_documents.jsonl.gz"
INSTRUCTIONS_FILE = "webshop/items_ins_v2_1000.json"

#: Seed of the dedicated RNG behind hidden prices and goal price bounds (spec §0.1 row 6). The
#: original used Python's unseeded global RNG, so price clauses changed from run to run.
PRICE_SEED = 0


@dataclass(frozen=True)
class Catalogue:
    """Products in catalogue order, their indexed ``contents`` and an ASIN lookup."""

    products: tuple[Mapping[str, Any], ...]
    contents: tuple[str, ...]
    by_asin: Mapping[str, Mapping[str, Any]]

    @property
    def asins(self) -> tuple[str, ...]:
        return tuple(p["asin"] for p in self.products)


@lru_cache(maxsize=1)
def load_catalogue() -> Catalogue:
    """Read the bundle once per process (sha256-checked by :mod:`qlib.data`)."""
    instructions = read_json(INSTRUCTIONS_FILE)
    products, contents = [], []
    for doc in iter_jsonl(DOCUMENTS_FILE):
        product = dict(doc["product"])
        extra = instructions.get(product["asin"], {})
        product["instruction_text"] = extra.get("instruction")
        product["instruction_attributes"] = list(extra.get("instruction_attributes") or [])
        products.append(MappingProxyType(product))
        contents.append(doc["contents"])
    by_asin = MappingProxyType({p["asin"]: p for p in products})
    return Catalogue(tuple(products), tuple(contents), by_asin)


def draw_hidden_prices(products: tuple[Mapping[str, Any], ...], rng: random.Random) -> dict[str, float]:
    """One price per product: its single price, a uniform draw inside a range, or 100.0 without price."""
    prices: dict[str, float] = {}
    for product in products:
        pricing = product.get("pricing") or []
        if not pricing:
            prices[product["asin"]] = 100.0
        elif len(pricing) == 1:
            prices[product["asin"]] = float(pricing[0])
        else:
            prices[product["asin"]] = rng.uniform(*pricing[:2])
    return prices


def price_rng() -> random.Random:
    """A fresh ``Random(PRICE_SEED)`` advanced past the hidden-price draws, ready for the goal draws."""
    rng = random.Random(PRICE_SEED)
    draw_hidden_prices(load_catalogue().products, rng)
    return rng


@lru_cache(maxsize=1)
def hidden_prices() -> Mapping[str, float]:
    """ASIN -> hidden purchase price (the first draws of ``Random(PRICE_SEED)``)."""
    return MappingProxyType(draw_hidden_prices(load_catalogue().products, random.Random(PRICE_SEED)))
