"""A scripted oracle that reads the hidden goal: the reward ceiling of the offline WebShop.

It searches with the goal's instruction text, or with the target's title when that ranks the target
on an earlier page, pages to the target, opens it, selects each goal option value and buys.
"""
from __future__ import annotations

import random
import re

from qlib.envs.webshop.env import WebShopEnv
from qlib.envs.webshop.goals import NO_PRICE_LIMIT, Goal
from qlib.envs.webshop.pages import PRODUCTS_PER_PAGE, page_results
from qlib.envs.webshop.search import cached_search


def _route(query: str, asin: str) -> list[str] | None:
    """``search`` + ``Next >`` clicks + the product click, or None if the target is not retrieved."""
    results = cached_search(query.lower())
    if asin not in results:
        return None
    pages = results.index(asin) // PRODUCTS_PER_PAGE
    return [f"search[{query}]"] + ["click[Next >]"] * pages + [f"click[{asin}]"]


def oracle_actions(env: WebShopEnv, task_id: int) -> list[str]:
    """The oracle's action script for ``task_id`` (computed without stepping ``env``)."""
    goal = env.goals[task_id]
    product = env.catalogue.by_asin[goal.asin]
    routes = [r for q in (goal.instruction_text, product["Title"]) if q.strip() and (r := _route(q, goal.asin))]
    if not routes:
        return []
    route = min(routes, key=len)
    return route + [f"click[{value}]" for value in goal.option_values()] + ["click[Buy Now]"]


def run_oracle(env: WebShopEnv, task_id: int) -> float:
    """Play the oracle script on ``env``; the episode's reward (0 if it never buys)."""
    env.reset(task_id)
    for action in oracle_actions(env, task_id):
        result = env.step(action)
        if result.done:
            return result.reward
    return 0.0


def oracle_reward(split: str = "test", limit: int | None = None, max_steps: int = 10) -> float:
    """Mean oracle reward over the first ``limit`` tasks of ``split`` (all of them by default)."""
    env = WebShopEnv(max_steps=max_steps)
    ids = env.task_ids(split)[:limit]
    return sum(run_oracle(env, i) for i in ids) / len(ids)


# ----------------------------------------------------------------------------- demonstrations
# The expert's turns for behaviour cloning (qlib.expert): the oracle's route, but searched with a query
# the agent can read off the instruction (never the hidden target's title), and with a short thought
# per turn that names what the page shows (price, matching option) — not one fixed string.

_LEAD = re.compile(r"^(?:find me|get me|buy me|i(?: a|')?m looking for|i am looking for|i need|i want|"
                   r"looking for|show me|search for|i would like)\s+(?:an?\s+|some\s+|the\s+)?", re.IGNORECASE)
_PRICE = re.compile(r",? and price lower than [0-9.]+ dollars$", re.IGNORECASE)
MAX_QUERY_WORDS = 40  # a search turn must stay inside the policy's generation cap (96 tokens in the profiles)


def search_queries(goal: Goal, description: str) -> list[str]:
    """Queries the agent can copy from the instruction, in order of preference: the instruction's own words
    (without the lead-in and the price clause: BM25 then ranks the target first for 56% of train goals,
    against 28% for the shorter queries), its description part (before the options), and the product
    type named in it plus its attributes."""
    text = goal.instruction_text.lower()
    whole = _LEAD.sub("", _PRICE.sub("", goal.instruction_text.strip())).strip(" .")
    core = _LEAD.sub("", description.strip()).strip(" .,")
    found = goal.query if goal.query and goal.query.lower() in text else ""
    candidates = [whole, core, " ".join([found, *goal.attributes]).strip() if found else "", found]
    unique: list[str] = []
    for query in candidates:
        query = " ".join(query.replace("[", " ").replace("]", " ").split()).lower()
        if query and query not in unique and len(query.split()) <= MAX_QUERY_WORDS:
            unique.append(query)
    return unique


def _segments_after(observation: str, label: str, k: int) -> list[str]:
    parts = observation.split(" [SEP] ")
    return parts[parts.index(label) + 1: parts.index(label) + 1 + k] if label in parts else []


def _short(title: str, words: int = 8) -> str:
    title = " ".join(title.replace("[", "(").replace("]", ")").split())
    cut = title.split()[:words]
    return " ".join(cut) + ("..." if len(title.split()) > words else "")


def _budget(goal: Goal) -> str:
    return f"under ${goal.price_upper:.2f}" if goal.price_upper < NO_PRICE_LIMIT else "at any price"


def demonstration(env: WebShopEnv, task_id: int, rng: random.Random, mistake: bool = False) -> list[tuple[str, str]]:
    """``[(thought, action), ...]`` of the expert for ``task_id`` ([] if no readable query finds the target).

    ``mistake``: the expert first opens another product of the results page, sees it is wrong and goes
    back (``click[< Prev]``) — only when that still fits in ``env.max_steps``. Steps ``env``."""
    goal = env.goals[task_id]
    product = env.catalogue.by_asin[goal.asin]
    routes = [(r, q) for q in search_queries(goal, product["instruction_text"] or "") if (r := _route(q, goal.asin))]
    if not routes:
        return []
    route, query = min(routes, key=lambda rq: len(rq[0]))  # fewest pages; ties: the preferred query
    values = list(goal.option_values())
    mistake = mistake and len(route) + len(values) + 3 <= env.max_steps
    turns: list[tuple[str, str]] = []
    observation = env.reset(task_id)
    what = rng.choice(["I need", "I am looking for", "I want"])
    kind = goal.query if goal.query and goal.query.lower() in goal.instruction_text.lower() else "the item"
    turns.append((f"{what} {kind}, {_budget(goal)}; let me search with the instruction's words.", route[0]))
    observation = env.step(route[0]).observation
    for page in range(1, len(route) - 1):
        turns.append((f"Nothing on page {page} fits the instruction; let me check the next page.", "click[Next >]"))
        observation = env.step("click[Next >]").observation
    if mistake:
        others = [a for a in page_results(env.snapshot()) if a != goal.asin]
        if others:
            wrong = rng.choice(others)
            title, price = (_segments_after(observation, wrong, 2) + ["", ""])[:2]
            turns.append((f"{wrong} ({_short(title)}) at {price} might fit; let me check it.", f"click[{wrong}]"))
            env.step(f"click[{wrong}]")
            turns.append((f"{_short(title, 6)} is not what the instruction asks for; back to the results.",
                          "click[< Prev]"))
            env.step("click[< Prev]")
    title, price = (_segments_after(observation, goal.asin, 2) + ["", ""])[:2]
    turns.append((f"{goal.asin} ({_short(title)}) at {price} looks right, {_budget(goal)}.", f"click[{goal.asin}]"))
    for (group, value) in goal.goal_options:
        turns.append((f"The instruction asks for {group}: {value}, and the item offers it.", f"click[{value}]"))
    chosen = ", ".join(values)
    turns.append(((f"{_short(title, 5)} in {chosen} fits the instruction; buy it." if chosen
                   else f"{_short(title, 5)} fits the instruction; buy it."), "click[Buy Now]"))
    return turns
