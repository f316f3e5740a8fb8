"""MCTS tree files: the schema, queries (best/worst terminal, paths), replay of the first k
iterations, and loading/saving. The search that produces them is :mod:`qlib.mcts`.

Tree file schema (``{env}_{task_id}.json``, one per task, written atomically)::

    {
      "schema_version": 1,
      "env": "webshop", "task_id": 17, "split": "train",     # split: added by qlib.collect
      "task_observation": "<observation returned by env.reset(task_id)>",
      "root": 0,
      "nodes": [                                              # node ids = creation order = list index
        {"id": 0, "parent": null, "children": [1, 2], "depth": 0,
         "thought": "", "action": "", "text": "", "observation": "<task observation>",
         "reward": 0.0, "N": 30, "V": 0.41, "q": null,
         "terminal": false, "truncated": false, "invalid": false, "parsed": true,
         "count": 1, "is_rollout": false, "iteration": 0},
        {"id": 1, "parent": 0, "children": [3, 7], "depth": 1,
         "thought": "...", "action": "search[red shoes]",     # env-ready action string
         "text": "Thought: ...\\nAction: search[red shoes]",  # canonical assistant turn
         "observation": "<raw env observation after the action>",
         "reward": 0.0,                                       # environment reward of this step
         "N": 12, "V": 0.55, "q": 0.55,                       # q = Q̂(parent, action) (Eq. 6)
         "terminal": false, "truncated": false,               # truncated: depth limit hit (terminal)
         "invalid": false,                                    # env reported an invalid action
         "parsed": true,                                      # Candidate.valid from the parser
         "count": 2,                                          # sampled candidates merged here
         "is_rollout": false, "iteration": 1},                # iteration that created the node
        ...
      ],
      "best_path": [0, 1, 3, 9],     # root → highest-reward terminal node ([] if none)
      "best_reward": 1.0,            # environment reward of that node (null if none)
      "stats": {"iterations": 7, "llm_calls": 19, "tokens": 2310, "prompt_tokens": 51200,
                "seconds": 41.2, "best_reward": 1.0, "seed": 123456789, "early_stopped": true, "expansions": 7, "exhausted": false,
                "n_nodes": 40, "n_rollout_nodes": 12, "n_terminal": 9},
      "settings": {"iterations": 30, "n_candidates": 5, "eta": 2.0, "temperature": 1.0,
                   "early_stop": true, "depth_limit_reward": -0.5, "max_depth": 10,
                   "prompt_variant": "react", "backup_expansion_terminals": true, "select_terminals": false},
      "config": {...},               # Config.to_dict() of the run (null when not given)
      "agent": "full-157a0df8"       # added by qlib.collect: the behaviour-cloned agent's identity
    }                                # (qlib.export.agent_identity; null for other policies)

Best terminal node: the terminal node (search or rollout) with the highest evaluation reward ``q``
(so a finished episode with reward 0 ranks above a truncated one); ties go to the shorter trajectory,
then to the earlier found node (lower id). Worst terminal node (trajectory-level pairs): lowest
``q``, ties to the earlier found node. ``stats.seconds`` is the only field that differs between two
runs with the same seed (see :func:`strip_volatile`).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from qlib.io import atomic_write_text

SCHEMA_VERSION = 1
Tree = dict[str, Any]
History = list[tuple[str, str]]  # (assistant turn, observation) pairs


# ---------------------------------------------------------------------------------------- tree dicts
def terminal_nodes(nodes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for n in nodes if n["terminal"] and n["q"] is not None]


def best_terminal(nodes: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Highest evaluation reward; ties: fewer steps, then earlier found (see module docstring)."""
    return min(terminal_nodes(nodes), key=lambda n: (-n["q"], n["depth"], n["id"]), default=None)


def worst_terminal(nodes: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Lowest evaluation reward; ties: earlier found."""
    return min(terminal_nodes(nodes), key=lambda n: (n["q"], n["id"]), default=None)


def path_ids(nodes: Sequence[dict[str, Any]], node_id: int) -> list[int]:
    """Node ids from the root to ``node_id`` (ids are list indices)."""
    path = [node_id]
    while nodes[path[-1]]["parent"] is not None:
        path.append(nodes[path[-1]]["parent"])
    return path[::-1]


def strip_volatile(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy without wall-clock fields, for comparing trees of two runs."""
    tree = copy.deepcopy(tree)
    tree.get("stats", {}).pop("seconds", None)
    return tree


# ---------------------------------------------------------------------------------------- files
def tree_path(out_dir: str | os.PathLike, env_name: str, task_id: Any) -> Path:
    return Path(out_dir) / f"{env_name}_{task_id}.json"


def write_tree(tree: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``tree`` atomically to ``{out_dir}/{env}_{task_id}.json``."""
    path = tree_path(out_dir, tree["env"], tree["task_id"])
    return atomic_write_text(path, json.dumps(tree, ensure_ascii=False, indent=1) + "\n")


def tree_at_iteration(tree: dict[str, Any], k: int) -> dict[str, Any]:
    """The tree as it stood after ``k`` iterations: nodes created by then, N/V/q recomputed from the
    ``backups`` log. Seeds depend only on the call index, so this equals a run with ``iterations=k``
    (up to early stopping, which the log reproduces)."""
    keep = [dict(n, N=0, V=0.0) for n in tree["nodes"] if n["iteration"] <= k]
    kept = {n["id"] for n in keep}
    by_id = {n["id"]: n for n in keep}
    for n in keep:
        n["children"] = [c for c in n["children"] if c in kept]
    for iteration, leaf, value in tree.get("backups", []):
        if iteration > k:
            break
        node_id = leaf
        while node_id is not None:
            node = by_id[node_id]
            node["N"] += 1
            node["V"] += (value - node["V"]) / node["N"]
            node_id = node["parent"]
    for n in keep:
        if n["parent"] is not None and not n["terminal"]:
            n["q"] = n["V"] if n["N"] > 0 else None
    best = best_terminal(keep)
    return dict(
        tree, nodes=keep, backups=[b for b in tree.get("backups", []) if b[0] <= k],
        best_path=[] if best is None else path_ids(keep, best["id"]),
        best_reward=None if best is None else best["reward"],
    )


def load_tree(path: str | os.PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def iter_tree_files(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Tree files of a folder (``*.json``, sorted) or the given files."""
    if isinstance(source, (str, os.PathLike)):
        source = Path(source)
        if source.is_dir():
            return sorted(p for p in source.glob("*.json") if not p.name.startswith("."))
        return [source]
    return [Path(p) for p in source]




def _task_key(task_id: Any) -> tuple[int, Any]:
    try:
        return 0, int(task_id)
    except (TypeError, ValueError):
        return 1, str(task_id)


def load_trees(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[tuple[Path, Tree]]:
    """Tree files of a folder or a list of files, ordered by (env, task id, file name)."""
    trees = [(path, load_tree(path)) for path in iter_tree_files(source)]
    return sorted(trees, key=lambda item: (item[1]["env"], _task_key(item[1]["task_id"]), item[0].name))
