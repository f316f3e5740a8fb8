"""Scripted oracle using the gold: search each supporting title, then ``finish[gold answer]``."""
from __future__ import annotations

import random

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


# ----------------------------------------------------------------------------- demonstrations

def _near_miss(env: HotPotQAEnv, title: str) -> str | None:
    """A plausible wrong search for ``title`` (its words without the last one) that the wiki does not
    resolve but whose "Similar:" list offers ``title``; None if there is no such query."""
    words = title.split()
    if len(words) < 2:
        return None
    query = " ".join(words[:-1])
    result = env.corpus.search(query)
    return query if result.title is None and repr(title) in result.observation else None


def demonstration(env: HotPotQAEnv, task_id: int, rng: random.Random, mistake: bool = False) -> list[tuple[str, str]]:
    """``[(thought, action), ...]`` of the expert: search each supporting page, then finish with the gold answer.

    ``mistake``: the first search uses a truncated title that the wiki does not find; the expert reads
    the "Similar:" list and searches the right page (only when that still fits in ``env.max_steps``)."""
    task = env.tasks[task_id]
    titles = list(task.gold_titles)[: env.max_steps - 1]
    turns: list[tuple[str, str]] = []
    wrong = _near_miss(env, titles[0]) if mistake and titles and len(titles) + 2 <= env.max_steps else None
    opener = rng.choice(["I need to search {}", "I should first find out about {}", "Let me search {} first"])
    if wrong:
        turns.append((opener.format(wrong) + ".", f"Search[{wrong}]"))
        turns.append((f"{wrong} was not found, but {titles[0]} is among the similar pages; search it.",
                       f"Search[{titles[0]}]"))
    elif titles:
        turns.append((opener.format(titles[0]) + ".", f"Search[{titles[0]}]"))
    for previous, title in zip(titles, titles[1:]):
        turns.append((f"That covers {previous}. Next I need to search {title}.", f"Search[{title}]"))
    turns.append((f"So the answer is {task.answer}.", f"Finish[{task.answer}]"))
    return turns
