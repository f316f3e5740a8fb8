"""Text-mode pages (spec §4-§5): the observation text and the clickables of each page.

An observation is the page's visible text segments joined with ``" [SEP] "``. Empty field values
contribute no segment, except Features bullets (rendered with a leading space), which always do.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, NamedTuple

from qlib.envs.webshop.search import cached_search
from qlib.envs.webshop.session import ITEM, RESULTS, START, SUB_PAGES, Session

SEP = " [SEP] "
PRODUCTS_PER_PAGE = 10
BACK_TO_SEARCH, NEXT_PAGE, PREV_PAGE, BUY_NOW = "Back to Search", "Next >", "< Prev", "Buy Now"
SUB_PAGE_LABELS = {"description": "Description", "features": "Features", "reviews": "Reviews",
                   "attributes": "Attributes"}


class Clickable(NamedTuple):
    """One clickable element: ``label`` as displayed, its ``kind`` (button/asin/option) and target."""

    label: str
    kind: str
    target: str  # button key, ASIN, or option value
    group: str = ""  # option group (options only)


def _field(text: str) -> list[str]:
    """The segment of a field value: none when empty, else its stripped text."""
    return [] if text in ("", "\n") else [text.strip()]


def _head(session: Session) -> list[str]:
    return ["Instruction:", *_field(session.goal.instruction_text), BACK_TO_SEARCH]


def page_results(session: Session) -> tuple[str, ...]:
    """The ASINs shown on the current results page."""
    start = (session.page_num - 1) * PRODUCTS_PER_PAGE
    return cached_search(session.query)[start:start + PRODUCTS_PER_PAGE]


def _start_segments(session: Session) -> list[str]:
    return ["WebShop", "Instruction:", *_field(session.goal.instruction_text), "Search"]


def _results_segments(session: Session, products: Mapping[str, Mapping[str, Any]]) -> list[str]:
    total = len(cached_search(session.query))
    segments = _head(session) + [f"Page {session.page_num} (Total results: {total})"]
    segments += [PREV_PAGE] if session.page_num > 1 else []
    segments.append(NEXT_PAGE)
    for asin in page_results(session):
        product = products[asin]
        segments += [asin, *_field(product["Title"]), *_field(product["Price"])]
    return segments


def _option_segments(product: Mapping[str, Any]) -> list[str]:
    segments: list[str] = []
    for name, values in product["options"].items():
        segments += [*_field(name), *(s for v in values for s in _field(v))]
    return segments


def _item_segments(session: Session, product: Mapping[str, Any], show_attrs: bool) -> list[str]:
    segments = _head(session) + [PREV_PAGE] + _option_segments(product)
    segments += [*_field(product["Title"]), f"Price: {product['Price']}", f"Rating: {product['Rating']}"]
    segments += ["Description", "Features", "Reviews"] + (["Attributes"] if show_attrs else []) + [BUY_NOW]
    return segments


def _sub_page_segments(session: Session, product: Mapping[str, Any]) -> list[str]:
    segments = _head(session) + [PREV_PAGE]
    if session.page == "description":
        return segments + _field(product["Description"])
    if session.page == "features":
        return segments + [(" " + bullet).strip() for bullet in product["BulletPoints"]]
    if session.page == "reviews":
        return segments
    fields = [product["category"], product["query"], product["product_category"]]
    return segments + [s for text in [*product["Attributes"], *fields] for s in _field(text)]


def _tojson(options: Mapping[str, str]) -> str:
    """Flask's ``tojson``: sorted keys, ASCII escapes, HTML-safe escapes of ``< > & '``."""
    text = json.dumps(dict(options), sort_keys=True)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
        text = text.replace(char, escape)
    return text


def _done_segments(session: Session) -> list[str]:
    return [
        "Thank you for shopping with us!", "Your code:", "None", "(Paste it in your MTurk interface.)",
        "Purchased", "asin", session.asin or "", "options", _tojson(session.options_dict()),
        "attrs", "None", "category", "None", "query", "None", "product category", "None",
        "Target", "asin", "options", "attrs", "price upper", "instuction text", "category", "product category",
        "query", "Goal", "None", "Reward", "Your score (min 0.0, max 1.0)", str(float(session.reward)),
        "Reward Details", "None",
    ]


def render(session: Session, products: Mapping[str, Mapping[str, Any]], show_attrs: bool = False) -> str:
    """The observation text of the session's current page."""
    if session.page == START:
        segments = _start_segments(session)
    elif session.page == RESULTS:
        segments = _results_segments(session, products)
    elif session.page == ITEM:
        segments = _item_segments(session, products[session.asin], show_attrs)
    elif session.page in SUB_PAGES:
        segments = _sub_page_segments(session, products[session.asin])
    else:
        segments = _done_segments(session)
    return SEP.join(segments)


def _button(label: str) -> Clickable:
    return Clickable(label, "button", label.lower())


def clickables(session: Session, products: Mapping[str, Mapping[str, Any]],
               show_attrs: bool = False) -> dict[str, Clickable]:
    """Lower-cased label -> clickable, in page order. A value in two option groups maps to the later
    group; a button label always stays a button."""
    items: list[Clickable] = []
    if session.page == RESULTS:
        items = [_button(BACK_TO_SEARCH)] + ([_button(PREV_PAGE)] if session.page_num > 1 else [])
        items += [_button(NEXT_PAGE)] + [Clickable(a, "asin", a) for a in page_results(session)]
    elif session.page == ITEM:
        product = products[session.asin]
        items = [_button(BACK_TO_SEARCH), _button(PREV_PAGE)]
        items += [Clickable(v, "option", v, name) for name, values in product["options"].items() for v in values]
        labels = ["Description", "Features", "Reviews"] + (["Attributes"] if show_attrs else []) + [BUY_NOW]
        items += [_button(label) for label in labels]
    elif session.page in SUB_PAGES:
        items = [_button(BACK_TO_SEARCH), _button(PREV_PAGE)]
    table: dict[str, Clickable] = {}
    for item in items:
        key = item.label.lower()
        if key in table and table[key].kind == "button" != item.kind:
            continue  # the original dispatches button labels by name, before options
        table.pop(key, None)  # the later duplicate wins, at its own page position
        table[key] = item
    return table
