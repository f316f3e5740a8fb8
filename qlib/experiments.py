"""Experiment recipes the notebooks call: each stage of the workbook as one function over both envs.

The notebooks stay thin (parameters, a call, a table or a plot); the loops, file layout and
bookkeeping live here, on top of :mod:`qlib.collect`, :mod:`qlib.pairs`, :mod:`qlib.qmodel`,
:mod:`qlib.evaluate` and :mod:`qlib.stats`. Every function is resumable because the stages under it are:
trees, pair files, trained models and episode rows that already exist are reused.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from qlib.config import Config
from qlib.workbook import RunPaths

log = logging.getLogger(__name__)

ENVS = ("webshop", "hotpotqa")
PAIR_LEVELS = ("step", "trajectory", "qnet")


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """A copy of ``config`` with dotted-key ``overrides`` applied (validated; :func:`qlib.config.with_overrides`)."""
    from qlib.config import with_overrides as apply

    return apply(config, overrides)


# ----------------------------------------------------------------------------- stage 1: trees
def collect_trees(config: Config, paths: RunPaths, *, envs: Sequence[str] = ENVS,
                  splits: Sequence[str] = ("train", "valid"), tag: str = "",
                  limits: dict[str, int] | None = None, policy_overrides: dict[str, Any] | None = None) -> pd.DataFrame:
    """MCTS trees for every (env, split); returns one summary row each.

    ``done``/``skipped``/``failed`` count this call's tasks (skipped = already on disk); ``trees`` and the
    cost and reward columns describe every tree in the folder, so a resumed run reports the whole collection.
    """
    from qlib.collect import collect

    run_config = with_overrides(config, policy_overrides or {})
    rows = []
    for env_name in envs:
        for split in splits:
            out_dir = paths.trees(env_name, split, tag)
            summary = collect(env_name, split, config=run_config, out_dir=out_dir, limit=(limits or {}).get(split))
            trees = tree_stats(out_dir)
            best = pd.to_numeric(trees["best_reward"], errors="coerce") if len(trees) else pd.Series(dtype=float)
            rows.append({
                "env": env_name, "split": split + tag, "tasks": summary["tasks"], "done": summary["done"],
                "skipped": summary["skipped"], "failed": summary["failed"], "trees": len(trees),
                **{k: trees[k].sum() if len(trees) else 0 for k in ("llm_calls", "tokens", "seconds")},
                "mean_best_reward": best.mean(), "success_rate": trees["success"].mean() if len(trees) else float("nan"),
            })
    return pd.DataFrame(rows)


def tree_stats(trees_dir: Path) -> pd.DataFrame:
    """One row per tree file: task, best reward, iterations, nodes, LLM calls, seconds."""
    from qlib.pairs import load_trees

    rows = []
    for path, tree in load_trees(trees_dir):
        stats = tree["stats"]
        rows.append({
            "env": tree["env"], "task_id": tree["task_id"], "best_reward": tree["best_reward"],
            "success": tree["best_reward"] is not None and tree["best_reward"] >= 1.0,
            "iterations": stats["iterations"], "nodes": stats["n_nodes"], "llm_calls": stats["llm_calls"],
            "tokens": stats["tokens"], "seconds": stats["seconds"], "file": path.name,
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- stage 2: pairs
def build_all_pairs(config: Config, paths: RunPaths, *, envs: Sequence[str] = ENVS,
                    splits: Sequence[str] = ("train", "valid", "valid_ood")) -> pd.DataFrame:
    """Step / trajectory pairs and QNet rows for every tree folder that exists; returns counts."""
    from qlib.pairs import build_pairs, write_jsonl

    counts = []
    for env_name in envs:
        for split in splits:
            trees = paths.trees(env_name, split)
            if not trees.exists():
                continue
            for level in PAIR_LEVELS:
                rows = build_pairs(trees, level, config)
                write_jsonl(rows, paths.pairs(env_name, level, split))
                counts.append({"env": env_name, "split": split, "level": level, "rows": len(rows),
                               "trees": len(list(trees.glob("*.json")))})
    return pd.DataFrame(counts)


# ----------------------------------------------------------------------------- stage 3: Q models
def train_q_models(config: Config, paths: RunPaths, *, envs: Sequence[str] = ENVS,
                   kinds: Iterable[tuple[str, str]] = (("step", "dpo"), ("trajectory", "dpo"), ("qnet", "qnet")),
                   only_webshop_trajectory: bool = True) -> pd.DataFrame:
    """Train (or reuse) the Q models: ``{env}_{level}`` from that level's train pairs."""
    from qlib.qmodel import train_dpo, train_qnet

    rows = []
    for env_name in envs:
        for level, kind in kinds:
            if level == "trajectory" and only_webshop_trajectory and env_name != "webshop":
                continue  # Table 3 (the trajectory-level ablation) is a WebShop experiment
            pairs = paths.pairs(env_name, level)
            out = paths.qmodel(env_name, level)
            n_rows = sum(1 for _ in open(pairs)) if pairs.exists() else 0
            if n_rows == 0:
                log.warning("no %s rows for %s: skipping its Q model", level, env_name)
                rows.append({"env": env_name, "model": level, "kind": kind, "rows": 0, "trained": False})
                continue
            if not (out / "qlib_config.json").exists():
                (train_dpo if kind == "dpo" else train_qnet)(pairs, out, config)
            rows.append({"env": env_name, "model": level, "kind": kind, "rows": n_rows, "trained": True,
                         "path": str(out)})
    return pd.DataFrame(rows)


def training_curves(paths: RunPaths, *, envs: Sequence[str] = ENVS) -> pd.DataFrame:
    """The metrics.csv of every trained DPO model, stacked with env/model columns."""
    frames = []
    for env_name in envs:
        for level in ("step", "trajectory"):
            metrics = paths.qmodel(env_name, level) / "metrics.csv"
            if metrics.exists():
                frame = pd.read_csv(metrics)
                frames.append(frame.assign(env=env_name, model=level))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ----------------------------------------------------------------------------- stage 4: acting
def load_q(paths: RunPaths, env_name: str, level: str) -> Any:
    """The trained Q model ``{env}_{level}``, or None when it was not trained (no pairs)."""
    from qlib.qmodel import load_q_model

    out = paths.qmodel(env_name, level)
    return load_q_model(out) if (out / "qlib_config.json").exists() else None


def run_methods(config: Config, paths: RunPaths, env_name: str, methods: Sequence[str], *, tag: str,
                split: str = "test", n: int | None = None, q_model: Any = None, qnet: Any = None,
                limit: int | None = None, policy: Any = None, label: str | None = None) -> list[dict[str, Any]]:
    """Episodes of each method on ``split`` into ``runs/<profile>/episodes/<tag>_<env>.jsonl``."""
    from qlib.agent.backends import make_policy
    from qlib.evaluate import evaluate

    policy = policy or make_policy(config.policy, env_name)
    out = paths.episodes(f"{tag}_{env_name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for method in methods:
        scorer = qnet if method == "qnet" else q_model
        if method in ("q", "qnet") and scorer is None:
            log.warning("%s: no Q model for %s, method skipped", env_name, method)
            continue
        result = evaluate(env_name, split, method, config=config, policy=policy, q_model=scorer, n=n,
                          limit=limit, out=out, qmodel_name=label)
        rows += result
    return add_answer_f1(rows) if env_name == "hotpotqa" else rows


def add_answer_f1(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``f1`` (token F1 of the ``finish[...]`` answer, 0 without one) to HotPotQA result rows.

    The reward is exact match (the paper's metric); F1 is a graded view of the same answers, computed
    from the stored trajectory, so older episode files get it too.
    """
    from qlib.envs.hotpotqa import f1_score
    from qlib.envs.hotpotqa.env import HotPotQAEnv, parse_action

    env = HotPotQAEnv()
    out = []
    for row in rows:
        if row.get("env") != "hotpotqa" or "error" in row:
            out.append(row)
            continue
        last = row["trajectory"][-1] if row.get("trajectory") else {}
        parsed = parse_action(last.get("action") or "") if last.get("done") else None
        gold = env.tasks[row["task_id"]].answer
        out.append({**row, "f1": f1_score(parsed[1], gold)[0] if parsed and parsed[0] == "finish" else 0.0})
    return out


def results_table(rows: list[dict[str, Any]], config: Config, *, baseline: str = "q",
                  others: Sequence[str] = ("greedy", "sampled", "bon", "random_pick")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary with bootstrap CIs, paired differences ``baseline − other``) over all envs in ``rows``."""
    from qlib.stats import paired_differences, summarise

    summary = summarise(rows, resamples=config.eval.bootstrap_resamples, seed=config.seed)
    present = {r["method"] for r in rows}
    wanted = [m for m in others if m in present]
    if baseline in present and wanted:
        diffs = paired_differences(rows, baseline=baseline, others=wanted,
                                   resamples=config.eval.bootstrap_resamples, seed=config.seed)
    else:
        diffs = pd.DataFrame()
    return summary, diffs


# ----------------------------------------------------------------------------- analyses
def iteration_curve(trees_dir: Path, config: Config, ks: Sequence[int]) -> pd.DataFrame:
    """Fig 5b: successful trajectories and step pairs available if MCTS had stopped after k iterations."""
    from qlib.tree import load_tree, tree_at_iteration
    from qlib.pairs import tree_rows

    trees = [load_tree(p) for p in sorted(Path(trees_dir).glob("*.json"))]
    rows = []
    for k in ks:
        successes = pairs = 0
        for tree in trees:
            prefix = tree_at_iteration(tree, k)
            successes += sum(1 for n in prefix["nodes"] if n["terminal"] and n["reward"] >= 1.0)
            pairs += len(tree_rows(prefix, "prefix", "step", variant=config.pairs.variant, margin=config.pairs.margin))
        rows.append({"iterations": k, "successful_trajectories": successes, "step_pairs": pairs, "trees": len(trees)})
    return pd.DataFrame(rows)


def preference_accuracies(paths: RunPaths, *, envs: Sequence[str] = ENVS, max_pairs: int = 0) -> pd.DataFrame:
    """Fig 4a: preference accuracy of each env's step Q model on train / IND (valid) / OOD pairs."""
    from qlib.qmodel import preference_accuracy

    rows = []
    for env_name in envs:
        q_model = load_q(paths, env_name, "step")
        if q_model is None:
            continue
        for split, label in (("train", "train"), ("valid", "in-distribution"), ("valid_ood", "out-of-distribution")):
            pairs = paths.pairs(env_name, "step", split)
            if not pairs.exists() or pairs.stat().st_size == 0:
                continue
            result = preference_accuracy(q_model, pairs, max_pairs=max_pairs)
            rows.append({"env": env_name, "set": label, "accuracy": result["accuracy"], "pairs": result["n"],
                         "mean_margin": result["mean_margin"]})
    return pd.DataFrame(rows)


def q_values_of_episodes(q_model: Any, rows: list[dict[str, Any]], env_name: str, *, variant: str = "react",
                         max_actions: int = 200) -> pd.DataFrame:
    """Fig 4b: Q of each executed action, labelled by whether its episode succeeded."""
    from qlib.agent.prompts import render_messages
    from qlib.envs import make

    env = make(env_name)
    records = []
    for outcome in (True, False):
        taken = 0
        for row in (r for r in rows if bool(r["success"]) == outcome):
            first = env.reset(row["task_id"])
            history: list[tuple[str, str]] = []
            for step in row["trajectory"]:
                if taken >= max_actions:
                    break
                messages = render_messages(env_name, first, history, variant=variant, icl=False)
                q = q_model.score(messages, [step["text"]])[0]
                records.append({"env": env_name, "trajectory": "successful" if outcome else "failed", "q": q})
                history.append((step["text"], step["observation"]))
                taken += 1
    return pd.DataFrame(records)


def q_values_of_tree_actions(q_model: Any, qnet_rows_file: Path, env_name: str, *,
                             max_actions: int = 200) -> pd.DataFrame:
    """Learned Q against the MCTS Bellman value ``q_raw`` for the actions of (held-out) tree nodes.

    Siblings share their prompt, so they are scored in one call (one shared-prefix pass).
    """
    import json

    if not Path(qnet_rows_file).exists():
        return pd.DataFrame(columns=["env", "task_id", "depth", "q", "q_mcts"])
    rows = [json.loads(line) for line in open(qnet_rows_file)][:max_actions]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(json.dumps(row["prompt"]), []).append(row)
    records = []
    for siblings in groups.values():
        scores = q_model.score(siblings[0]["prompt"], [r["completion"][0]["content"] for r in siblings])
        records += [{"env": env_name, "task_id": r["task_id"], "depth": r["depth"], "q": float(q),
                     "q_mcts": r["q_raw"]} for r, q in zip(siblings, scores)]
    return pd.DataFrame(records)


def rank_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """Per env: Spearman correlation of learned Q with the MCTS value (scipy), with its p-value."""
    from scipy.stats import spearmanr

    lines = []
    for env, group in frame.groupby("env", sort=False):
        rho, p = spearmanr(group["q"], group["q_mcts"]) if group["q_mcts"].nunique() > 1 else (float("nan"),) * 2
        lines.append({"env": env, "actions": len(group), "spearman_rho": float(rho), "p_value": float(p)})
    return pd.DataFrame(lines, columns=["env", "actions", "spearman_rho", "p_value"])


def oracle_ceilings(config: Config, *, split: str = "test") -> pd.DataFrame:
    """Mean reward of the scripted oracle agents on the first ``test_tasks`` tasks of each env."""
    from qlib.envs.hotpotqa import oracle_reward as hotpot_oracle
    from qlib.envs.webshop.oracle import oracle_reward as webshop_oracle

    return pd.DataFrame([
        {"env": "webshop", "oracle_reward": webshop_oracle(split, limit=config.webshop.test_tasks,
                                                            max_steps=config.webshop.max_steps)},
        {"env": "hotpotqa", "oracle_reward": hotpot_oracle(split, limit=config.hotpotqa.test_tasks,
                                                            max_steps=config.hotpotqa.max_steps)},
    ])
