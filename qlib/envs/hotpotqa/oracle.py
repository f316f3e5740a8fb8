"""Scripted oracle using the gold: search each supporting title, then ``finish[gold answer]``."""
from __future__ import annotations

from qlib.envs.hotpotqa.env import HotPotQAEnv


def oracle_actions(env: HotPotQAEnv, task_id: int) -> list[str]:
    """Env-level actions for ``task_id``; the searches are cut so the finish fits in ``env.max_steps``."""
    task = env.tasks[task_id]
    searches = [f"search[{title}]" for title in task.gold_titles][: env.max_steps - 1]
    return searches + [f"finish[{task.answer}]"]


def oracle_reward(split: str, limit: int | None = None, max_steps: int = 7) -> float:
    """Mean reward of :func:`oracle_actions` over the first ``limit`` tasks of ``split``."""
    env = HotPotQAEnv(max_steps=max_steps)
    ids = env.task_ids(split)[:limit]
    total = 0.0
    for task_id in ids:
        env.reset(task_id)
        for action in oracle_actions(env, task_id):
            result = env.step(action)
            if result.done:
                total += result.reward
                break
    return total / len(ids) if ids else 0.0
