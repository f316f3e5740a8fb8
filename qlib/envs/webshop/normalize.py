"""Colour / size vocabularies and the normalisers of WebShop's ``normalize.py`` (spec §7.7).

Only :func:`normalize_color` is used by the reward; :func:`normalize_color_size` is an analysis helper.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

#: Colour words, in the order the original checks them (first substring hit wins).
COLOR_SET: tuple[str, ...] = tuple(
    """alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze brown burgundy camel
    camo caramel champagne charcoal cheetah chestnut chocolate christmas coffee cognac copper coral cranberry cream
    crystal dark denim eggplant elephant espresso fuchsia gold granite grape graphite grass gray green grey heather
    indigo ivory ivy khaki lavender lemon leopard light lilac lime magenta maroon mauve merlot midnight mint
    mocha multicolor mushroom mustard natural navy nude olive orange peach pewter pink plum purple rainbow red
    rose royal rust sand sapphire seashell silver skull slate steel stone stonewash sunflower tan taupe teal
    tiger turquoise violet walnut wheat white wine yellow""".split()
)

SIZE_SET: tuple[str, ...] = (
    "xx-large", "3x-large", "4x-large", "5x-large", "x-large", "x-small", "medium", "large", "small",
    "queen", "twin", "full", "king", "one size", "pack",
)

#: SIZE_SET words as literal patterns, then the original's regular expressions, in order.
SIZE_PATTERNS: tuple[str, ...] = SIZE_SET + (
    r"(.*)neck(.*)sleeve", r"(.*) women \| (.*) men", r"(.*)w x(.*)l", r"(.*)w by (.*)l", r"(.*)w x(.*)h",
    r"(.*)wide", r"(.*)x-wide", r"(.*)narrow", r"(.*)petite", r"(.*)inch", r"(.*)plus", r"(.*)mm", r"women(.*)",
    r"(.*)x(.*)", r"(.*)ft", r"(.*)feet", r"(.*)meter", r"(.*)yards", r"(.*)\*(.*)", r"(.*)\-(.*)", r'(\d+)"$',
    r"(\d+)f$", r"(\d+)m$", r"(\d+)cm$", r"(\d+)g$",
)
_SIZE_REGEXES = tuple((p, re.compile(p)) for p in SIZE_PATTERNS)
NOT_MATCHED = "not_matched"


def normalize_color(color: Any) -> Any:
    """The first COLOR_SET entry contained in ``color`` (``in`` semantics), else ``color`` unchanged.

    For a string ``in`` is a substring test; for a (name, value) pair it is an *equality* test on the
    elements, which is how the original treats synthetic goal options (spec §7.3).
    """
    for norm in COLOR_SET:
        if norm in color:
            return norm
    return color


def _normalize_size(size: str) -> str:
    for pattern, regex in _SIZE_REGEXES:
        if regex.search(size):
            return pattern
    return "numeric_size" if size.replace(".", "", 1).isdigit() else NOT_MATCHED


def normalize_color_size(product_prices: Iterable[tuple[Any, str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """Map every colour and size of ``(id, colour, size)`` keys to its normal form (analysis helper)."""
    color_mapping: dict[str, str] = {"N.A.": NOT_MATCHED}
    size_mapping: dict[str, str] = {"N.A.": NOT_MATCHED}
    for _, color, size in product_prices:
        if color not in color_mapping:
            found = normalize_color(color)
            color_mapping[color] = found if found in COLOR_SET else NOT_MATCHED
        if size not in size_mapping:
            size_mapping[size] = _normalize_size(size)
    return color_mapping, size_mapping
