"""Offline HotPotQA ReAct environment (spec ``shared/specs/hotpotqa.md``).

* :class:`HotPotQAEnv` — the env (``search[...]`` / ``lookup[...]`` / ``finish[...]``; see :mod:`.env`);
* :mod:`.wiki` — the offline Wikipedia (25,433 intro paragraphs) and its search emulation;
* :mod:`.tasks` — questions and the seeded split (task id = index into the shuffled pool);
* :mod:`.metrics` — official ``normalize_answer`` / ``exact_match_score`` / ``f1_score``;
* :func:`oracle_actions`, :func:`oracle_reward`, :func:`bench_search`.
"""
from __future__ import annotations

from qlib.envs.hotpotqa.bench import bench_search
from qlib.envs.hotpotqa.env import HotPotQAEnv, HotPotState, parse_action
from qlib.envs.hotpotqa.metrics import exact_match_score, f1_score, normalize_answer
from qlib.envs.hotpotqa.oracle import oracle_actions, oracle_reward
from qlib.envs.hotpotqa.tasks import RESERVE, HotPotTask, load_tasks, split_task_ids
from qlib.envs.hotpotqa.wiki import SearchResult, WikiCorpus, load_corpus, split_sentences, tokenize

__all__ = [
    "HotPotQAEnv", "HotPotState", "HotPotTask", "RESERVE", "SearchResult", "WikiCorpus",
    "bench_search", "exact_match_score", "f1_score", "load_corpus", "load_tasks", "normalize_answer",
    "oracle_actions", "oracle_reward", "parse_action", "split_sentences", "split_task_ids", "tokenize",
]
