"""A scripted oracle that reads the hidden goal: the reward ceiling of the offline WebShop.

It searches with the goal's instruction text, or with the target's title when that ranks the target
on an earlier page, pages to the target, opens it, selects each goal option value and buys.
"""
from __future__ import annotations

from qlib.envs.webshop.env import WebShopEnv
from qlib.envs.webshop.pages import PRODUCTS_PER_PAGE
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
