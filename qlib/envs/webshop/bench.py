"""Latency numbers of the offline WebShop: search (uncached) and the env protocol calls."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from qlib.envs.webshop.env import WebShopEnv
from qlib.envs.webshop.oracle import oracle_actions
from qlib.envs.webshop.search import default_engine


def _mean_us(fn: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def _search_ms(queries: list[str]) -> np.ndarray:
    engine = default_engine()
    times = np.empty(len(queries))
    for i, query in enumerate(queries):
        start = time.perf_counter()
        engine.search(query)
        times[i] = time.perf_counter() - start
    return times * 1e3


def bench_search(n_queries: int = 1000, repeats: int = 200) -> dict[str, float]:
    """p50/p95 ms of uncached searches over ``n_queries`` goal instructions (goal order, wrapping
    around), plus mean microseconds of ``reset``, ``step`` (oracle actions), ``snapshot`` and ``restore``."""
    env = WebShopEnv()
    queries = [env.goals[i % len(env.goals)].instruction_text.lower() for i in range(n_queries)]
    search_ms = _search_ms(queries)
    actions = oracle_actions(env, 0)
    env.reset(0)
    env.step(actions[0])
    snap = env.snapshot()

    def replay() -> None:
        env.restore(snap)
        for action in actions[1:]:
            env.step(action)

    replay()  # warm-up: loads spaCy and fills the search / title-noun caches
    replay_us = _mean_us(replay, repeats)
    restore_us = _mean_us(lambda: env.restore(snap), repeats)
    return {
        "search_p50_ms": float(np.percentile(search_ms, 50)),
        "search_p95_ms": float(np.percentile(search_ms, 95)),
        "search_mean_ms": float(search_ms.mean()),
        "reset_us": _mean_us(lambda: env.reset(0), repeats),
        "step_us": (replay_us - restore_us) / (len(actions) - 1),
        "snapshot_us": _mean_us(env.snapshot, repeats),
        "restore_us": restore_us,
        "n_queries": float(n_queries),
    }
