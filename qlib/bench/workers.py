"""``python -m qlib bench --only workers``: one worker with all CPU threads vs one worker per thread.

The same tasks and seeds run twice with the profile's agent (the behaviour-cloned one where notebook 00
made it, else the embedded base model with its few-shot prompt): MCTS trees (``mcts.workers``) and
``sampled`` episodes (``eval.workers``), 1 worker x ``policy.n_threads`` threads vs ``workers`` workers x 1
thread. The ratios are throughputs (> 1: the workers are faster); the trees and rows are the same.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from qlib.envs.registry import env_names


def agent_config(profile: str = "cpu") -> Any:
    """The profile's config; the base model with few-shot examples where the clone is missing."""
    from qlib.config import load_config
    from qlib.export import clone_dir_for
    from qlib.provision import CLONE_NAME, EMBEDDED_NAME

    config = load_config(profile, {"policy.backend": "llamacpp"})
    env_name = env_names()[0]
    if config.policy.model == CLONE_NAME and not (clone_dir_for(config.policy, env_name) / "qlib_config.json").exists():
        config = load_config(profile, {"policy.backend": "llamacpp", "policy.model": EMBEDDED_NAME, "policy.icl": True})
    return config


def bench_workers(n_trees: int = 2, n_episodes: int = 6, workers: int = 2) -> dict[str, Any]:
    from qlib.collect import collect
    from qlib.config import with_overrides
    from qlib.evaluate import evaluate
    from qlib.tree import load_tree, strip_volatile

    env_name = env_names()[0]
    config = agent_config()
    result: dict[str, Any] = {"env": env_name, "model": config.policy.model, "threads": config.policy.n_threads,
                              "workers": workers}
    trees = {}
    for k in (1, workers):
        run_config = with_overrides(config, {"mcts.workers": k})
        with tempfile.TemporaryDirectory(prefix="qlib-bench-workers-") as out:
            summary = collect(env_name, "train", config=run_config, out_dir=out, limit=n_trees)
            trees[k] = [strip_volatile(load_tree(p)) for p in sorted(Path(out).glob("*.json"))]
        result[f"mcts_seconds_{k}w"] = summary["seconds"]
    result["mcts_trees"] = n_trees
    result["mcts_same_trees"] = all(_same_search(a, b) for a, b in zip(trees[1], trees[workers]))
    result["mcts_speedup"] = round(result["mcts_seconds_1w"] / result[f"mcts_seconds_{workers}w"], 2)
    rows = {}
    for k in (1, workers):
        run_config = with_overrides(config, {"eval.workers": k})
        start = time.perf_counter()
        rows[k] = evaluate(env_name, "test", "sampled", config=run_config, limit=n_episodes)
        result[f"eval_seconds_{k}w"] = round(time.perf_counter() - start, 2)
    result["eval_episodes"] = n_episodes
    result["eval_same_rewards"] = [r["reward"] for r in rows[1]] == [r["reward"] for r in rows[workers]]
    result["eval_speedup"] = round(result["eval_seconds_1w"] / result[f"eval_seconds_{workers}w"], 2)
    return result


def _same_search(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two trees of one task with the same nodes (the config snapshot differs in the worker count)."""
    return [(n["action"], n["q"]) for n in a["nodes"]] == [(n["action"], n["q"]) for n in b["nodes"]]
