"""Latency benchmark of the offline HotPotQA environment (search p50/p95, env call costs)."""
from __future__ import annotations

import random
import re
import statistics
import time
from typing import Callable

from qlib.envs.hotpotqa.env import HotPotQAEnv
from qlib.envs.hotpotqa.tasks import load_tasks
from qlib.envs.hotpotqa.wiki import load_corpus

_CAPITALISED_RUN = re.compile(r"(?:[A-Z][\w'.-]*\s?){1,4}")


def _typo(text: str, rng: random.Random) -> str:
    if len(text) < 4:
        return text + "x"
    i = rng.randrange(1, len(text) - 2)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def bench_queries(n_queries: int = 1000, seed: int = 0) -> list[str]:
    """Deterministic mix: gold titles, lower-cased titles, titles with a typo, capitalised question spans."""
    rng = random.Random(seed)
    tasks = load_tasks()
    queries: list[str] = []
    while len(queries) < n_queries:
        task = rng.choice(tasks)
        title = rng.choice(task.gold_titles)
        spans = [s.strip() for s in _CAPITALISED_RUN.findall(task.question) if s.strip()]
        kind = len(queries) % 4
        if kind == 0:
            queries.append(title)
        elif kind == 1:
            queries.append(title.lower())
        elif kind == 2:
            queries.append(_typo(title, rng))
        else:
            queries.append(rng.choice(spans) if spans else task.question.split("?")[0][:40])
    return queries


def _mean_us(fn: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(repeat):
        fn()
    return (time.perf_counter_ns() - start) / repeat / 1e3


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def bench_search(n_queries: int = 1000, seed: int = 0) -> dict[str, float]:
    """Search latency percentiles (ms) over ``n_queries`` queries, plus env call means (µs).

    Corpus loading and the BM25 index build are excluded (done before timing).
    """
    corpus = load_corpus()
    corpus.search("warm up the similar-title ranker zzqx")
    queries = bench_queries(n_queries, seed)
    times, found = [], 0
    for query in queries:
        start = time.perf_counter_ns()
        result = corpus.search(query)
        times.append((time.perf_counter_ns() - start) / 1e6)
        found += result.title is not None
    env = HotPotQAEnv(max_steps=10**6)
    task_ids = env.task_ids("test")
    env.reset(task_ids[0])
    actions = [f"search[{q}]" for q in queries[:200]] + ["lookup[the]", "think[x]", "bad action"] * 20
    start = time.perf_counter_ns()
    for action in actions:
        env.step(action)
    step_us = (time.perf_counter_ns() - start) / len(actions) / 1e3
    snap = env.snapshot()
    return {
        "n_queries": len(queries),
        "found_fraction": found / len(queries),
        "search_p50_ms": _percentile(times, 50),
        "search_p95_ms": _percentile(times, 95),
        "search_mean_ms": statistics.fmean(times),
        "search_max_ms": max(times),
        "reset_us": _mean_us(lambda: env.reset(task_ids[1]), 2000),
        "step_us": step_us,
        "snapshot_us": _mean_us(env.snapshot, 20000),
        "restore_us": _mean_us(lambda: env.restore(snap), 20000),
    }
