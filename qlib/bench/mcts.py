"""``python -m qlib bench --only mcts``: MCTS collection speed with the embedded model."""
from __future__ import annotations

import tempfile
from typing import Any

from qlib.collect import collect
from qlib.envs.registry import env_names


def bench_mcts(n_tasks: int = 2) -> dict[str, Any]:
    """Trees per hour on the first registered environment (WebShop) with the embedded model
    (``llamacpp``) at ``cpu`` profile settings."""
    from qlib.config import load_config

    env_name = env_names()[0]
    config = load_config("cpu", {"policy.backend": "llamacpp"})
    with tempfile.TemporaryDirectory(prefix="qlib-bench-mcts-") as out:
        summary = collect(env_name, "train", config=config, out_dir=out, limit=n_tasks, workers=1)
    seconds = summary["seconds"] or float("nan")
    return {
        "env": env_name, "profile": "cpu", "backend": "llamacpp", "model": config.policy.model,
        "n_tasks": summary["done"], "failed": summary["failed"], "seconds": summary["seconds"],
        "trees_per_hour": summary["trees_per_hour"],
        "seconds_per_tree": seconds / summary["done"] if summary["done"] else None,
        "llm_calls": summary["llm_calls"], "tokens": summary["tokens"],
        "tokens_per_second": summary["tokens"] / seconds if summary["done"] else None,
        "mean_best_reward": summary["mean_best_reward"],
        "iterations": config.mcts.iterations, "n_candidates": config.mcts.n_candidates,
    }
