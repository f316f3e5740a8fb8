"""HotPotQA questions and the fixed train/valid/test split (spec §0.1 item 2).

The pool is the 2,058 questions of ``hotpot_dev_subset_with_context.jsonl.gz`` with
``gold_in_pool`` true (both gold paragraphs exist in the offline corpus), ordered by ``dev_index``
and shuffled with ``random.Random(SPLIT_SEED)``.

**A task id is the position in that shuffled list.** Hence test = ids 0–99, valid = 100–199,
train = 200–1199, and the remaining 858 (1200–2057) are a ``reserve`` that no stage uses.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from qlib.data import iter_jsonl
from qlib.envs.base import check_split

QUESTIONS_FILE = "hotpotqa/hotpot_dev_subset_with_context.jsonl.gz"
SPLIT_SEED = 0
#: split name -> size, in the order the shuffled pool is cut.
SPLIT_SIZES: dict[str, int] = {"test": 100, "valid": 100, "train": 1000}
RESERVE = "reserve"


@dataclass(frozen=True)
class HotPotTask:
    task_id: int
    question: str
    answer: str
    dev_index: int
    qid: str
    type: str
    gold_titles: tuple[str, ...]  # supporting-paragraph titles, in order of first mention


def _gold_titles(record: dict[str, Any]) -> tuple[str, ...]:
    if record.get("supporting_titles"):
        return tuple(dict.fromkeys(record["supporting_titles"]))
    return tuple(dict.fromkeys(title for title, _ in record["supporting_facts"] or ()))


@lru_cache(maxsize=1)
def load_tasks() -> tuple[HotPotTask, ...]:
    """All 2,058 tasks, indexed by task id (shuffled pool order)."""
    pool = sorted((r for r in iter_jsonl(QUESTIONS_FILE) if r["gold_in_pool"]), key=lambda r: r["dev_index"])
    random.Random(SPLIT_SEED).shuffle(pool)
    return tuple(
        HotPotTask(i, r["question"], r["answer"], r["dev_index"], r["_id"], r["type"], _gold_titles(r))
        for i, r in enumerate(pool)
    )


@lru_cache(maxsize=1)
def split_ranges() -> dict[str, range]:
    """Task-id range of each split, plus ``reserve`` (everything after train)."""
    ranges, start = {}, 0
    for name, size in SPLIT_SIZES.items():
        ranges[name] = range(start, start + size)
        start += size
    ranges[RESERVE] = range(start, len(load_tasks()))
    return ranges


def split_task_ids(split: str) -> list[int]:
    """Task ids of ``train`` / ``valid`` / ``test`` (or the unused ``reserve``)."""
    if split != RESERVE:
        check_split(split)
    return list(split_ranges()[split])

