"""Offline HotPotQA ReAct environment (spec ``shared/specs/hotpotqa.md``).

* ``spec`` — the registry entry;
* :class:`HotPotQAEnv` — the env (``search[...]`` / ``lookup[...]`` / ``finish[...]``; see :mod:`.env`);
* :mod:`.wiki` — the offline Wikipedia (25,433 intro paragraphs) and its search emulation;
* :mod:`.tasks` — questions and the seeded split (task id = index into the shuffled pool);
* :mod:`.metrics` — official ``normalize_answer`` / ``exact_match_score`` / ``f1_score``;
* :func:`oracle_actions`, :func:`oracle_reward`, :func:`bench_search`.

Names are imported lazily, so reading the registry entry loads no data.
"""
import importlib

_EXPORTS = {
    "bench_search": "bench", "HotPotQAEnv": "env", "HotPotState": "env", "parse_action": "env",
    "exact_match_score": "metrics", "f1_score": "metrics", "normalize_answer": "metrics",
    "oracle_actions": "oracle", "oracle_reward": "oracle", "RESERVE": "tasks", "HotPotTask": "tasks",
    "load_tasks": "tasks", "split_task_ids": "tasks", "SearchResult": "wiki", "WikiCorpus": "wiki",
    "load_corpus": "wiki", "split_sentences": "wiki", "tokenize": "wiki",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
