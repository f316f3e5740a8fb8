"""Stage 2: preference pairs and Q targets from MCTS trees (``python -m qlib pairs``).

Levels (:func:`build_pairs`):

* ``step`` (paper, Fig. 3b): the best terminal node of each tree (highest evaluation reward; ties:
  fewer steps, then earlier found — :func:`qlib.trees.best_terminal`) gives a path from the root. At
  each depth ``t`` of that path, the path's action is *chosen*; the *rejected* action is the sibling
  with the lowest ``q`` (= Q̂, Eq. 6; ties to the earlier node). Siblings are all children of the same
  parent, rollout nodes included, that have a Q̂ estimate (terminal, or visited at least once) and
  whose env action differs from the chosen one (same action = same state, so any Q̂ gap is noise).
  The pair is skipped when ``q_rejected >= q_chosen`` or the gap is under ``pairs.margin``.
  ``variant="official"`` reproduces the official script instead: along the same path, chosen = the
  sibling with the highest Q̂ (not necessarily the path's action), rejected = the lowest.
* ``trajectory`` (ablation, Eq. 7): per tree, the best terminal trajectory against the worst one
  (lowest evaluation reward; ties to the earlier found), same skip rule.
* ``qnet`` (Q*Agent, Algorithm 4): one row per node with a Bellman target
  ``q_raw = r + gamma * max(q_raw of children)`` (``gamma = pairs.gamma``), where a terminal node's
  ``q_raw`` is its evaluation reward (environment reward, or the depth-limit reward when truncated),
  ``r`` is the step's environment reward, and children without a value (never-visited, non-terminal
  leaves) are ignored, as are nodes left without one. ``q`` is ``q_raw`` min–max normalised over the
  rows of the tree; when all rows share one value, ``q = clip(q_raw, 0, 1)``.

Prompts are the Q-model prompts: ``render(env, task_observation, history, variant=<the tree's
prompt_variant>, icl=False)`` with the history (assistant turn, observation) up to the decision, so
training and scoring prompts match.

Row schema (JSONL, conversational format read directly by trl's ``DPOTrainer``;
loadable with ``datasets.load_dataset("json", data_files=...)`` and ``pandas.read_json(lines=True)``)::

    step / trajectory rows:
    {"prompt":   [{"role": "system", "content": ...}, {"role": "user", "content": ...}, ...],
     "chosen":   [{"role": "assistant", "content": "Thought: ...\\nAction: ..."}],
     "rejected": [{"role": "assistant", "content": "Thought: ...\\nAction: ..."}],
     "env": "webshop", "task_id": 17, "depth": 2,          # depth: index of the decision (0 = first)
     "q_chosen": 0.8, "q_rejected": -0.5, "chosen_id": 9, "rejected_id": 11,
     "tree_file": "webshop_17.json", "level": "step", "variant": "paper"}

    For ``trajectory`` rows the prompt is the task only (empty history, depth 0), and chosen/rejected
    are the multi-turn message lists of the two trajectories: assistant turn, ``user`` observation,
    ..., ending with the last assistant turn (the final observation, which states the outcome, is
    left out); ``q_*`` are the terminal evaluation rewards, ``*_id`` the terminal node ids,
    ``variant`` is ``"best-vs-worst"``.

    qnet rows:
    {"prompt": [...], "completion": [{"role": "assistant", "content": ...}],
     "q": 0.73, "q_raw": 0.81, "env": "webshop", "task_id": 17, "depth": 2, "node_id": 9,
     "is_rollout": false, "tree_file": "webshop_17.json", "level": "qnet"}
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from qlib import tree as trees
from qlib.agent.base import Message
from qlib.agent.prompts import render_conversation, render_messages
from qlib.io import write_jsonl

logger = logging.getLogger(__name__)

LEVELS = ("step", "trajectory", "qnet")
VARIANTS = ("paper", "official")
Tree = dict[str, Any]


# ---------------------------------------------------------------------------------------- helpers
# Q̂ values are running means, so two actions of equal value can differ by rounding alone (13/28 summed in
# two orders: 0.4642857142857143 vs 0.46428571428571425); a gap this small is a tie, never a preference.
TIE = 1e-9


def _keep(q_chosen: float, q_rejected: float, margin: float) -> bool:
    gap = q_chosen - q_rejected
    return gap > TIE and gap >= margin


def _assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


class _TreeView:
    """A loaded tree plus the renderer settings used for its prompts."""

    def __init__(self, tree: Tree, tree_file: str, prompt_variant: str | None):
        self.tree, self.tree_file = tree, tree_file
        self.nodes: list[dict[str, Any]] = tree["nodes"]
        self.variant = prompt_variant or (tree.get("settings") or {}).get("prompt_variant", "react")

    def history(self, path: Sequence[int]) -> trees.History:
        """(assistant turn, observation) pairs of ``path[1:]`` (``path[0]`` is the root)."""
        return [(self.nodes[i]["text"], self.nodes[i]["observation"]) for i in path[1:]]

    def prompt(self, path: Sequence[int]) -> list[Message]:
        """Q-model prompt at the state reached by ``path``."""
        return render_messages(self.tree["env"], self.tree["task_observation"], self.history(path),
                               variant=self.variant, icl=False)

    def trajectory_messages(self, path: Sequence[int]) -> list[Message]:
        """assistant/user turns of ``path`` after the task prompt, ending with the last assistant turn."""
        conversation = render_conversation(self.tree["env"], self.tree["task_observation"],
                                           self.history(path[:-1]), self.nodes[path[-1]]["text"],
                                           variant=self.variant, icl=False)
        return conversation[len(self.prompt(path[:1])):]

    def meta(self) -> dict[str, Any]:
        return {"env": self.tree["env"], "task_id": self.tree["task_id"]}


# ---------------------------------------------------------------------------------------- levels
def successful(best: dict[str, Any] | None) -> bool:
    """A search that found a positive reward (its best terminal's evaluation reward is > 0)."""
    return best is not None and best["q"] > 0


def best_path(nodes: Sequence[dict[str, Any]], best: dict[str, Any], *, rollout_best_path: bool = False) -> list[int]:
    """Node ids from the root to ``best``; without ``rollout_best_path`` only its tree-node prefix
    (the path stops before the first rollout node, so every chosen action has a visit-averaged Q)."""
    path = trees.path_ids(nodes, best["id"])
    if not rollout_best_path:
        path = path[: next((i for i, n in enumerate(path) if nodes[n]["is_rollout"]), len(path))]
    return path


def step_pairs(view: _TreeView, *, variant: str = "paper", margin: float = 0.0,
               from_unsuccessful_trees: bool = False, rollout_best_path: bool = False) -> list[dict[str, Any]]:
    """Step-level pairs of one tree (see module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown pairs variant {variant!r}; expected one of {VARIANTS}")
    nodes = view.nodes
    best = trees.best_terminal(nodes)
    if best is None or not (from_unsuccessful_trees or successful(best)):
        return []
    path = best_path(nodes, best, rollout_best_path=rollout_best_path)
    rows = []
    for t in range(len(path) - 1):
        options = [nodes[c] for c in nodes[path[t]]["children"] if nodes[c]["q"] is not None]
        if variant == "paper":
            chosen = nodes[path[t + 1]]
        else:
            chosen = max(options, key=lambda n: (n["q"], -n["id"]))
        rivals = [n for n in options if n["action"] != chosen["action"]]
        rejected = min(rivals, key=lambda n: (n["q"], n["id"]), default=None)
        if rejected is None or not _keep(chosen["q"], rejected["q"], margin):
            continue
        rows.append({
            "prompt": view.prompt(path[: t + 1]),
            "chosen": _assistant(chosen["text"]), "rejected": _assistant(rejected["text"]),
            **view.meta(), "depth": t, "q_chosen": chosen["q"], "q_rejected": rejected["q"],
            "chosen_id": chosen["id"], "rejected_id": rejected["id"],
            "tree_file": view.tree_file, "level": "step", "variant": variant,
        })
    return rows


def trajectory_pairs(view: _TreeView, *, margin: float = 0.0, from_unsuccessful_trees: bool = False) -> list[dict[str, Any]]:
    """Best vs worst terminal trajectory of one tree (at most one row)."""
    best, worst = trees.best_terminal(view.nodes), trees.worst_terminal(view.nodes)
    if best is None or worst is None or best["id"] == worst["id"] or not _keep(best["q"], worst["q"], margin):
        return []
    if not (from_unsuccessful_trees or successful(best)):
        return []
    best_path, worst_path = trees.path_ids(view.nodes, best["id"]), trees.path_ids(view.nodes, worst["id"])
    return [{
        "prompt": view.prompt(best_path[:1]),
        "chosen": view.trajectory_messages(best_path), "rejected": view.trajectory_messages(worst_path),
        **view.meta(), "depth": 0, "q_chosen": best["q"], "q_rejected": worst["q"],
        "chosen_id": best["id"], "rejected_id": worst["id"],
        "tree_file": view.tree_file, "level": "trajectory", "variant": "best-vs-worst",
    }]


def bellman_q(nodes: Sequence[dict[str, Any]], gamma: float) -> list[float | None]:
    """Q*Agent Algorithm 4 (before normalisation): ``q_raw`` per node id (None = no value)."""
    q_raw: list[float | None] = [None] * len(nodes)
    for node in sorted(nodes, key=lambda n: n["id"], reverse=True):  # children have larger ids
        if node["terminal"]:
            q_raw[node["id"]] = node["q"]
            continue
        values = [q_raw[c] for c in node["children"] if q_raw[c] is not None]
        if values:
            q_raw[node["id"]] = float(node["reward"]) + gamma * max(values)
    return q_raw


def qnet_rows(view: _TreeView, *, gamma: float = 0.9) -> list[dict[str, Any]]:
    """One (state, action, Bellman Q) row per non-root node with a value, min–max normalised per tree."""
    nodes = view.nodes
    q_raw = bellman_q(nodes, gamma)
    keep = [n for n in nodes if n["parent"] is not None and q_raw[n["id"]] is not None]
    if not keep:
        return []
    low, high = min(q_raw[n["id"]] for n in keep), max(q_raw[n["id"]] for n in keep)
    rows = []
    for node in keep:
        raw = q_raw[node["id"]]
        q = (raw - low) / (high - low) if high > low else min(max(raw, 0.0), 1.0)
        rows.append({
            "prompt": view.prompt(trees.path_ids(nodes, node["parent"])),
            "completion": _assistant(node["text"]), "q": q, "q_raw": raw,
            **view.meta(), "depth": node["depth"] - 1, "node_id": node["id"],
            "is_rollout": node["is_rollout"], "tree_file": view.tree_file, "level": "qnet",
        })
    return rows


# ---------------------------------------------------------------------------------------- driver
def build_pairs(
    source: str | os.PathLike | Iterable[str | os.PathLike],
    level: str = "step",
    config: Any = None,
    *,
    variant: str | None = None,
    margin: float | None = None,
    gamma: float | None = None,
    prompt_variant: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``level`` from a tree folder or files; ``variant``/``margin``/``gamma`` and the options
    ``from_unsuccessful_trees``/``rollout_best_path`` default to ``config.pairs`` (``config`` default:
    the ``cpu`` profile); ``prompt_variant`` defaults to the tree's."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
    if config is None:
        from qlib.config import load_config

        config = load_config()
    variant = variant or config.pairs.variant
    margin = config.pairs.margin if margin is None else margin
    gamma = config.pairs.gamma if gamma is None else gamma
    rows: list[dict[str, Any]] = []
    loaded = trees.load_trees(source)
    for path, tree in loaded:
        rows += tree_rows(tree, path.name, level, variant=variant, margin=margin, gamma=gamma,
                          prompt_variant=prompt_variant,
                          from_unsuccessful_trees=config.pairs.from_unsuccessful_trees,
                          rollout_best_path=config.pairs.rollout_best_path)
    logger.info("%d %s rows from %d trees", len(rows), level, len(loaded))
    return rows


def tree_rows(tree: Tree, tree_file: str, level: str, *, variant: str = "paper", margin: float = 0.0,
              gamma: float = 0.9, prompt_variant: str | None = None, from_unsuccessful_trees: bool = False,
              rollout_best_path: bool = False) -> list[dict[str, Any]]:
    """Rows of ``level`` from one tree dict (e.g. a :func:`qlib.tree.tree_at_iteration` prefix)."""
    view = _TreeView(tree, tree_file, prompt_variant)
    if level == "step":
        return step_pairs(view, variant=variant, margin=margin, from_unsuccessful_trees=from_unsuccessful_trees,
                          rollout_best_path=rollout_best_path)
    if level == "trajectory":
        return trajectory_pairs(view, margin=margin, from_unsuccessful_trees=from_unsuccessful_trees)
    return qnet_rows(view, gamma=gamma)


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``qlib pairs`` (``--profile``/``--set`` come from the main CLI)."""
    parser.add_argument("--trees", required=True, help="folder of tree files (from qlib collect)")
    parser.add_argument("--out", default=None, help="output JSONL (default: runs/<profile>/pairs/{env}_{split}_{level}.jsonl for a tree folder {env}_{split})")
    parser.add_argument("--level", default="step", choices=LEVELS, help="pair level")


def run(args: argparse.Namespace) -> int:
    """Run ``qlib pairs``; prints a JSON summary."""
    from qlib.config import load_config, parse_overrides

    config = load_config(getattr(args, "profile", None), parse_overrides(getattr(args, "set", None)))
    rows = build_pairs(args.trees, level=args.level, config=config)
    from qlib.workbook.layout import run_paths

    env, _, split = Path(args.trees).resolve().name.partition("_")
    out = args.out or run_paths(config.profile, create=False).pairs(env, args.level, split or "train")
    path = write_jsonl(rows, out)
    with_rows = {row["tree_file"] for row in rows}
    print(json.dumps({"level": args.level, "rows": len(rows), "trees_with_rows": len(with_rows), "out": str(path)}, indent=2))
    return 0
