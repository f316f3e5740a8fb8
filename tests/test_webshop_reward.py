"""WebShop reward: the test vectors of spec §11 plus the option-pair quirk of §7.3."""
from __future__ import annotations

import copy

import pytest

from qlib.envs.webshop.normalize import COLOR_SET, normalize_color_size
from qlib.envs.webshop.reward import (
    get_attribute_reward,
    get_option_reward,
    get_reward,
    get_type_reward,
    normalize_color,
)

DON = "Mens D.O.N. Issue 2 Gca Basketball Sneakers Shoes Casual - Off White"
PEAK = ("PEAK High Top Mens Basketball Shoes Lou Williams Streetball Master Breathable Non Slip Outdoor "
        "Sneakers")
SAIREED = "Saireed UL Listed 2 Prong Power Cord for JBL Bar 3.1 Bar 2.1 Channel 4K Ultra HD Soundbar"
SAIREED_FULL = SAIREED + " Home Theater System Subwoofer"
BRST = ("BRST AC Power Cord Outlet Socket Cable Plug Lead for Panasonic SC-HT830V DVD/VCR Combo Home Theater "
        "System")
ATTRS = ["tea tree", "essential oils", "natural ingredients"]


@pytest.mark.parametrize("given, expected", [
    ("", ""), ("black forest", "black"), ("violet lavender", "lavender"), ("steelivy fuchsia", "fuchsia"),
    ("123alabaster", "alabaster"), ("webshop", "webshop"),
])
def test_normalize_color(given, expected):
    assert normalize_color(given) == expected


def test_normalize_color_on_pairs_is_element_equality():
    assert normalize_color(("color", "grey")) == "grey"
    assert normalize_color(("color", "light blue")) == ("color", "light blue")
    assert len(COLOR_SET) == 102


def test_normalize_color_size():
    keys = [(1, "black forest", "3 meter"), (2, "violet lavender", "xx-large"),
            (3, "steelivy fuchsia", "random value"), (4, "123alabaster", "40cm plus"), (5, "webshop", "142"),
            (6, "webshopsteel", "2 petite"), (7, "leather black", "91ft walnut feet"), (8, "N.A.", "N.A.")]
    colors, sizes = normalize_color_size(keys)
    assert colors == {"black forest": "black", "violet lavender": "lavender", "steelivy fuchsia": "fuchsia",
                      "123alabaster": "alabaster", "webshop": "not_matched", "webshopsteel": "steel",
                      "leather black": "black", "N.A.": "not_matched"}
    assert sizes == {"3 meter": "(.*)meter", "xx-large": "xx-large", "random value": "not_matched",
                     "40cm plus": "(.*)plus", "142": "numeric_size", "2 petite": "(.*)petite",
                     "91ft walnut feet": "(.*)ft", "N.A.": "not_matched"}


# -- type reward ---------------------------------------------------------------------------------
@pytest.fixture
def type_pair():
    goal = {"query": "Query 1", "product_category": "a › b › c", "name": "Name 1"}
    return copy.deepcopy(goal), goal


def test_type_reward_identical(type_pair):
    purchased, goal = type_pair
    assert get_type_reward(purchased, goal) == dict(r_type=1.0, query_match=True, category_match=True,
                                                    title_score=1)


def test_type_reward_query_mismatch(type_pair):
    purchased, goal = type_pair
    purchased["query"] = "Query 2"
    assert get_type_reward(purchased, goal)["query_match"] is False


@pytest.mark.parametrize("category, match", [
    ("b › c › a", True), ("d › e › f", False), ("a › d › b", True), ("a › a › b", True), ("a › a › d", False),
])
def test_type_reward_category_match(type_pair, category, match):
    purchased, goal = type_pair
    purchased["product_category"] = category
    assert get_type_reward(purchased, goal)["category_match"] is match


# Spec §11 values come from an older en_core_web_sm; the pinned 3.8.0 mirror tags a few title words
# differently (0.4 / 0.3125 / 0.1667 / 0.0 instead of ≈0.333 / 0.30 / 0.15 / <0.05). Every score stays
# in the same r_type bracket (> 0.2, > 0.2, [0.1, 0.2], < 0.1), so rewards are unchanged.
@pytest.mark.parametrize("goal_name, purchased_name, spec_value, tolerance, low, high", [
    (DON, PEAK, 0.333, 0.07, 0.2, 1.0),
    (SAIREED_FULL, BRST, 0.30, 0.02, 0.2, 1.0),
    (SAIREED, BRST, 0.15, 0.02, 0.1, 0.2),
    ("Rusticware 921ORB Kitchen and Bath Cabinet Knob",
     "Minkissy 2pcs Stainless Steel Eyebrow Tweezers Blackhead Acne Remover Portable Makeup Tweezers (Silver)",
     0.0, 0.05, 0.0, 0.05),
])
def test_type_reward_title_score(type_pair, goal_name, purchased_name, spec_value, tolerance, low, high):
    purchased, goal = type_pair
    goal["name"], purchased["name"] = goal_name, purchased_name
    score = get_type_reward(purchased, goal)["title_score"]
    assert score == pytest.approx(spec_value, abs=tolerance)
    assert low <= score <= high


def test_type_reward_rules_order(type_pair):
    purchased, goal = type_pair
    goal["name"], purchased["name"] = SAIREED, BRST  # title_score in [0.1, 0.2]
    purchased.update(query="Query 2", product_category="d › e › f")
    assert get_type_reward(purchased, goal)["r_type"] == 0.5
    purchased["query"] = "Query 1"
    assert get_type_reward(purchased, goal)["r_type"] == 1.0
    goal["name"] = "Rusticware 921ORB Kitchen and Bath Cabinet Knob"  # no shared noun: rule 4 wins
    assert get_type_reward(purchased, goal)["r_type"] == 0.0


# -- attribute and option rewards ----------------------------------------------------------------
@pytest.mark.parametrize("purchased, expected", [
    ({"Attributes": ["tea tree", "essential oil", "natural ingredients"]}, (1, 3)),
    ({"Attributes": ["essential oil", "natural ingredients"], "Title": "", "BulletPoints": [], "Description": ""},
     (2 / 3, 2)),
    ({"Attributes": [], "Title": "", "BulletPoints": ["This shampoo has essential oils and smells like lemons"],
      "Description": "Best shampoo on the market, made with natural ingredients"}, (2 / 3, 2)),
    ({"Attributes": ["tea bag", "earl gray", "lipton"], "Title": "English tea for breakfast",
      "BulletPoints": ["Soothing aroma", "Calming, great feeling"],
      "Description": "Best tea made by Lipton, great to pair with breakfast"}, (0, 0)),
])
def test_attribute_reward(purchased, expected):
    r_attr, matches = get_attribute_reward(purchased, {"attributes": ATTRS})
    assert (r_attr, matches) == (pytest.approx(expected[0]), expected[1])


@pytest.mark.parametrize("goal, purchased, expected", [
    (["grey", "XL", "pack of 12"], ["pack of 12", "grey", "XL"], (1, 3)),
    (["grey", "XL", "pack of 12"], ["pack of 12", "blue", "XL"], (2 / 3, 2)),
    (["cool powder snow", "XL", "pack of 12"], ["pack of 12", "powder snow", "XL"], (1, 3)),
    ([], ["goal 1", "goal 2"], (None, 0)),
    (["goal 1", "goal 2"], [], (0, 0)),
])
def test_option_reward(goal, purchased, expected):
    r_option, matches = get_option_reward(purchased, goal)
    assert matches == expected[1]
    assert r_option == (None if expected[0] is None else pytest.approx(expected[0]))


def test_option_reward_compares_goal_pairs_as_text():
    pairs = {"size": "x-small", "color": "light blue"}.items()
    assert get_option_reward(["small", "light blue"], pairs) == (1.0, 2)  # {small} ⊂ {size, x, small}
    assert get_option_reward(["large"], {"size": "x-small"}.items()) == (0.0, 0)
    assert get_option_reward(["fashion black woman"], {"color": "fashion black woman"}.items()) == (0.0, 0)


# -- total reward --------------------------------------------------------------------------------
@pytest.fixture
def reward_case():
    goal = {"query": "Query 1", "product_category": "a › b › c", "name": DON, "attributes": list(ATTRS),
            "goal_options": {"color": "grey", "size": "XL"}, "price_upper": 40.0}
    purchased = {"query": "Query 1", "product_category": "a › b › c", "name": DON,
                 "Attributes": ["tea tree", "essential oil", "natural ingredients"], "Title": "",
                 "BulletPoints": [], "Description": ""}
    return purchased, goal, {"color": "grey", "size": "XL"}


def test_get_reward_table(reward_case):
    purchased, goal, options = reward_case
    assert get_reward(purchased, goal, 35, options) == 1.0
    purchased.update(Attributes=[], BulletPoints="This shampoo has essential oils and smells like lemons",
                     Description="Best shampoo on the market, made with natural ingredients")
    assert get_reward(purchased, goal, 35, options) == pytest.approx(4 / 6)
    goal["goal_options"] = {"color": "grey", "size": "XL", "amount": "pack of 12"}
    assert get_reward(purchased, goal, 35, options) == pytest.approx(4 / 7)
    goal["name"], purchased["name"] = SAIREED, BRST
    purchased.update(query="Query 2", product_category="a › d › e")
    total, info = get_reward(purchased, goal, 35, options, verbose=True)
    assert total == pytest.approx(0.5 * 4 / 7)
    assert info["r_type"] == 0.5 and info["option_matches"] == 2 and info["attribute_matches"] == 1


def test_get_reward_price_and_missing_options(reward_case):
    purchased, goal, options = reward_case
    assert get_reward(purchased, goal, 40.01, options) == pytest.approx(5 / 6)
    assert get_reward(purchased, goal, 35, {}) == pytest.approx(4 / 6)
    goal["goal_options"] = {}
    assert get_reward(purchased, goal, 35, {}) == 1.0
