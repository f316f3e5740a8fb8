"""Experiment recipes: every computation of the notebooks, as named functions over all environments.

The notebooks stay thin (parameters, a call, a table or a plot); the loops, the file names and the
bookkeeping live here, on top of :mod:`qlib.collect`, :mod:`qlib.pairs`, :mod:`qlib.qmodel`,
:mod:`qlib.evaluate` and :mod:`qlib.stats`. Every recipe is resumable because the stages under it are:
trees, pair files, trained models and episode rows that already exist are reused, so changing a grid
(a notebook parameter) and re-running computes only what is missing.

Nothing here names an environment: the environments come from :mod:`qlib.envs.registry`
(``env_names()``; ``envs_with_paper("table3")`` for an experiment the paper runs on some only), and
what is specific to one (extra metrics, its scripted expert) from its :class:`~qlib.envs.registry.EnvSpec`.

Reading order: episode sets (shared between notebooks) · stage 0 behaviour cloning · stage 1 trees ·
stage 2 pairs · stage 3 Q models ·
stage 4 acting (Table 2) · ablations (Table 3, Fig. 5) · what the Q model learned (Fig. 4) · prompting (Table 4).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from qlib.config import Config, with_overrides
from qlib.envs.registry import env_names, envs_with_paper, get_spec
from qlib.export import CloneNotFoundError
from qlib.provision import CLONE_NAME, EMBEDDED_NAME
from qlib.workbook.layout import INIT_COMPARISON, RunPaths
from qlib.workbook.paper import paper_number, paper_table2

log = logging.getLogger(__name__)

PAIR_LEVELS = ("step", "trajectory", "qnet")


# ----------------------------------------------------------------------------- episode sets
@dataclass(frozen=True)
class EpisodeSet:
    """A named file of episodes that one notebook writes and others reuse.

    Its rows live in ``runs/<profile>/episodes/<tag>_<env>.jsonl`` (:meth:`RunPaths.episode_set`). The
    rows of a scored method (``q``, ``qnet``) carry ``label`` as their Q model's name, which is part of
    the fingerprint that resuming checks, so ``tag`` and ``label`` must not change once files exist.
    """

    tag: str  # file tag; ``{pairs}`` etc. are filled from the call's fields
    methods: tuple[str, ...]  # the methods it holds; () = the profile's eval.methods
    q_model: str  # Q model scoring its ``q`` rows: runs/<profile>/qmodels/<env>_<q_model>
    label: str  # the qmodel label of its scored rows
    purpose: str  # who writes it, who reads it
    overrides: Mapping[str, Any] = field(default_factory=dict)  # config overrides of its policy
    qnet: str | None = None  # Q*Agent model scoring its ``qnet`` rows
    shared: Mapping[str, str] = field(default_factory=dict)  # method -> episode set whose identical rows it reuses

    def file_tag(self, **fields: Any) -> str:
        return self.tag.format(**fields)


#: every episode file of the workbook, by name
EPISODE_SETS: dict[str, EpisodeSet] = {
    "test_methods": EpisodeSet(
        tag="table2", methods=(), q_model="step", label="step", qnet="qnet", shared={"greedy": "agent_clone"},
        purpose="04: every Table 2 method on the test tasks with the profile's policy. Reused by 05 "
                "(step-level Q at each n), 06 (sampled = 0 pairs, q = all pairs), 07 (the sampled episodes "
                "of Fig. 4b) and 08 (the ReAct rows). Its greedy rows are notebook 00's cloned greedy "
                "episodes where those match (same agent, tasks and step limit)."),
    "second_policy": EpisodeSet(
        tag="transfer", methods=("sampled", "q"), q_model="step", label="step",
        overrides={"policy.prompt": "reflection"},
        purpose="04: the step-level Q model guiding a second policy (offline: the reflection prompt). "
                "Reused by 08 as its ReAct + Reflection rows."),
    "base_agent_transfer": EpisodeSet(
        tag="transfer_base", methods=("sampled", "q"), q_model="step", label="step",
        overrides={"policy.model": EMBEDDED_NAME, "policy.icl": True},
        purpose="04: the step-level Q model (trained on the profile's agent's trees) guiding the embedded base "
                "agent with the few-shot prompt: transfer to a weaker policy."),
    "trajectory_q": EpisodeSet(
        tag="table3_trajectory", methods=("q",), q_model="trajectory", label="trajectory",
        purpose="05: Q-guided acting with the trajectory-level Q model at each n (Table 3)."),
    "sampling_temperature": EpisodeSet(
        tag="table3_t{temperature}", methods=("sampled", "bon", "q"), q_model="step", label="step",
        purpose="05: sampled, bon and q with the candidates sampled at temperature {temperature} instead of the "
                "profile's (the paper samples at T=1): the candidate-sampling ablation row of Table 2."),
    "pair_subset": EpisodeSet(
        tag="fig5a_{pairs}", methods=("q",), q_model="step_{pairs}pairs", label="{pairs} pairs",
        purpose="06: Q-guided acting with a Q model trained on the first {pairs} step pairs (Fig. 5a)."),
    "agent_base": EpisodeSet(
        tag="agent_base", methods=("greedy",), q_model="", label="",
        overrides={"policy.model": EMBEDDED_NAME, "policy.icl": True},
        purpose="00: the embedded base agent with the few-shot prompt (the agent before cloning)."),
    "agent_curve": EpisodeSet(
        tag="agent_curve_{demos}", methods=("greedy",), q_model="", label="", overrides={"policy.icl": False},
        purpose="00: greedy episodes of the cloned agent's learning-curve checkpoint after {demos} demos."),
    "agent_clone": EpisodeSet(
        tag="agent_clone", methods=("greedy", "bon"), q_model="", label="",
        overrides={"policy.model": CLONE_NAME, "policy.icl": False, "policy.temperature": 1.0},
        purpose="00: the behaviour-cloned agent without few-shot examples: greedy and pass@n (bon at the paper's "
                "T=1, whatever the profile samples q's candidates at)."),
    "clone_twin": EpisodeSet(
        tag="twin_{dtype}_greedy", methods=("greedy",), q_model="", label="",
        overrides={"policy.model": CLONE_NAME, "policy.icl": False},
        purpose="00 (optional): greedy episodes of this machine's clone (trained in {dtype}) in a file of their own, "
                "to compare with agent_clone's released greedy rows (:func:`clone_twin_check`)."),
    "agent_sampling": EpisodeSet(
        tag="agent_sampling_t{temperature}_p{top_p}", methods=("bon",), q_model="", label="",
        overrides={"policy.model": CLONE_NAME, "policy.icl": False},
        purpose="00: pass@n of the cloned agent on valid tasks at one candidate-sampling setting (temperature, "
                "top_p): the headroom a selection method has, which chooses the sampling of q and its controls."),
    "finetuned": EpisodeSet(
        tag="finetuned_{row}", methods=("greedy",), q_model="", label="", overrides={"policy.icl": False},
        purpose="04: the agent fine-tuned as Table 2 row {row} (rft, agentevol, eto, qstar_st) on the test tasks; "
                "policy.model is its exported GGUF."),
    "self_train_explore": EpisodeSet(
        tag="self_train_{scorer}", methods=("q",), q_model="step", label="step", qnet="qnet",
        purpose="04: Q*Agent self-training's exploration: the profile's agent, Q-guided by the {scorer} model, "
                "on the train tasks (split train); its successful episodes are qstar_st's data."),
}


# ----------------------------------------------------------------------------- stage 0: behaviour cloning
def expert_demos(config: Config, paths: RunPaths, *, envs: Sequence[str] | None = None) -> pd.DataFrame:
    """Write (or reuse) each environment's expert demonstrations; one summary row per environment.

    The expert plays under the paper's step limit (the registry's), whatever the profile's limit."""
    from qlib.expert import manifest_path, write_demos

    rows = []
    for env_name in envs or env_names():
        out, n = paths.demos(env_name), config.envs[env_name].clone_demos
        settings = {"thoughts": config.clone.thoughts, "mistake_rate": config.clone.mistake_rate}
        manifest = json.loads(manifest_path(out).read_text()) if manifest_path(out).is_file() else {}
        if not out.is_file() or manifest.get("requested") != n or any(manifest.get(k) != v for k, v in settings.items()):
            manifest = write_demos(out, env_name, n, seed=config.seed, **settings)
        rows.append({"env": env_name, "demos": manifest["n"], "skipped": len(manifest["skipped"]),
                     "with mistake": manifest["mistakes"], "steps": round(manifest["steps_mean"], 2),
                     "tokens/demo": round(manifest["tokens"]["mean"]), "max tokens": manifest["tokens"]["max"],
                     "max turn tokens": manifest["turn_tokens"]["max"]})
    return pd.DataFrame(rows)


def clone_agents(config: Config, paths: RunPaths, *, envs: Sequence[str] | None = None,
                 max_steps: int = -1) -> pd.DataFrame:
    """Train (or reuse) each environment's behaviour-cloned agent; one row per environment.

    A clone released in ``results/artifacts`` with the same settings is restored instead of retrained;
    a newly trained LoRA clone is released there."""
    from qlib.clone import release, restore, train_clone
    from qlib.qmodel.dpo import CONFIG_FILE

    rows = []
    for env_name in envs or env_names():
        out, released = paths.clones(env_name), paths.artifacts / "clones" / env_name
        settings, demos = config.clone.model_dump(mode="json"), config.envs[env_name].clone_demos
        if not (out / CONFIG_FILE).is_file() and not restore(released, out, settings, demos):
            train_clone(paths.demos(env_name), out, config, max_steps=max_steps)
            release(out, released)
        meta = json.loads((out / CONFIG_FILE).read_text())
        rows.append({"env": env_name, **{k: meta[k] for k in ("demos", "sequences", "tokens", "steps",
                                                               "train_loss", "train_seconds", "dtype")}})
    return pd.DataFrame(rows)


def agent_episodes(config: Config, paths: RunPaths, *, tasks: int | Mapping[str, int], pass_n: int = 5,
                   envs: Sequence[str] | None = None, base_tasks: int | Mapping[str, int] | None = None,
                   pass_tasks: int | Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Episodes of the base agent (greedy, few-shot prompt) and the cloned agent (greedy, and best-of-
    ``pass_n`` samples at T=1 = pass@n) on the first test tasks, under the paper's step
    limit; rows with the environment's extra metrics. Task counts are one number or one per environment;
    the base agent's and pass@n's default to ``tasks``."""
    rows: list[dict[str, Any]] = []
    for env_name in envs or env_names():
        limit = per_env(tasks, env_name)
        run_config = paper_step_limit(config, env_name)
        rows += run_episodes(run_config, paths, env_name, "agent_base", limit=per_env(base_tasks, env_name) or limit)
        rows += run_episodes(run_config, paths, env_name, "agent_clone", ["greedy"], limit=limit)
        rows += run_episodes(run_config, paths, env_name, "agent_clone", ["bon"], n=pass_n,
                             limit=per_env(pass_tasks, env_name) or limit)
    return rows


def clone_twin_check(config: Config, paths: RunPaths, *, tasks: int | Mapping[str, int] = 100,
                     envs: Sequence[str] | None = None) -> pd.DataFrame:
    """How close this machine's clone is to the one that played the released rows; one row per environment.

    A retrained clone is a near twin, not a copy: CPU training is not deterministic across machines, and a CPU
    without bf16 trains in fp32 under the same ``agent`` identity. This plays greedy with the local clone on the
    first ``tasks`` test tasks into a file of its own (``episodes/twin_<dtype>_greedy_<env>.jsonl``: no rows
    shared with the released ones) and compares it task by task with ``agent_clone``'s greedy rows
    (:func:`qlib.stats.action_agreement`). Run :func:`clone_agents` first."""
    from qlib.io import read_jsonl
    from qlib.qmodel.dpo import CONFIG_FILE
    from qlib.stats import action_agreement

    lines = []
    for env_name in envs or env_names():
        dtype = json.loads((paths.clones(env_name) / CONFIG_FILE).read_text()).get("dtype", "unknown")
        dtype = dtype.split("-")[0]  # "bf16-autocast" -> "bf16"
        twin = run_episodes(paper_step_limit(config, env_name), paths, env_name, "clone_twin",
                            limit=per_env(tasks, env_name), dtype=dtype)
        released = paths.episode_set("agent_clone", env_name)
        reference = [r for r in read_jsonl(released) if r.get("method") == "greedy" and r.get("split") == "test"] \
            if released.is_file() else []
        lines.append({"env": env_name, "local clone": dtype,
                      **action_agreement(reference, twin, resamples=config.eval.bootstrap_resamples,
                                         seed=config.seed)})
    return pd.DataFrame(lines)


def paper_step_limit(config: Config, env_name: str) -> Config:
    """``config`` with ``env_name``'s step limit set to the paper's (its registry default)."""
    return with_overrides(config, {f"{env_name}.max_steps": get_spec(env_name).settings["max_steps"]})


def per_env(value: int | Mapping[str, int] | None, env_name: str) -> int | None:
    """A notebook parameter given as one number or as ``{env: number}``, for ``env_name``."""
    return value.get(env_name) if isinstance(value, Mapping) else value


def agent_table(rows: list[dict[str, Any]], config: Config) -> pd.DataFrame:
    """Per env, agent and method: mean reward and success with 95% bootstrap CIs, the env's extra metrics,
    valid-action rate, mean steps, seconds and generated tokens per episode (``bon@n`` = pass@n)."""
    done = [{**r, "method": f"{agent_label(r)} " + (f"pass@{r['n']}" if r["method"] == "bon" else r["method"])}
            for r in rows if "error" not in r]
    if not done:
        return pd.DataFrame()
    summary = summary_of(done, config)
    frame = pd.DataFrame([{
        "env": r["env"], "method": r["method"], "n": r["n"],
        "valid": sum(s["valid"] for s in r["trajectory"]) / max(len(r["trajectory"]), 1), "steps": r["steps"],
        "seconds": r["wall_s"], "tokens": r["tokens_generated"]} for r in done])
    costs = frame.groupby(["env", "method", "n"], sort=False).agg(
        valid_actions=("valid", "mean"), steps=("steps", "mean"), seconds=("seconds", "mean"),
        tokens=("tokens", "mean")).reset_index()
    table = summary.drop(columns=["split", "oracle"]).merge(costs, on=["env", "method", "n"])
    return table.round(3)


def clone_curve(config: Config, paths: RunPaths, *, tasks: int | Mapping[str, int],
                envs: Sequence[str] | None = None) -> pd.DataFrame:
    """Greedy reward of each learning-curve checkpoint (``clone.curve``) and of the final clone on the first
    ``tasks`` test tasks, under the paper's step limit: one row per env and number of demonstrations seen."""
    from qlib.export import export_gguf

    lines = []
    for env_name in envs or env_names():
        final = json.loads((paths.clones(env_name) / "qlib_config.json").read_text())
        points = {int(p.name): p for p in (paths.clones(env_name) / "curve").glob("*") if p.name.isdigit()}
        points[final["demos"]] = None  # the final clone: the agent_clone episodes
        run_config = paper_step_limit(config, env_name)
        limit = per_env(tasks, env_name)
        for k, folder in sorted(points.items()):
            if folder is None:
                rows = run_episodes(run_config, paths, env_name, "agent_clone", ["greedy"], limit=limit)
            else:
                model = {"policy.model": str(export_gguf(folder)), "policy.icl": False}
                rows = run_episodes(run_config, paths, env_name, "agent_curve", limit=limit, overrides=model, demos=k)
            done = [r for r in rows if "error" not in r]
            model_name = CLONE_NAME if folder is None else f"curve/{folder.name}"
            lines.append({"env": env_name, "demos": k, "tasks": len(done), "model": model_name,
                          "reward": sum(r["reward"] for r in done) / max(len(done), 1),
                          "success": sum(r["success"] for r in done) / max(len(done), 1)})
    return pd.DataFrame(lines)


def candidate_sampling(config: Config, paths: RunPaths, *, settings: Sequence[tuple[float, float]],
                       tasks: int | Mapping[str, int], n: int = 5, envs: Sequence[str] | None = None,
                       split: str = "valid") -> pd.DataFrame:
    """pass@``n`` of the cloned agent at each candidate-sampling setting ``(temperature, top_p)`` on the first
    ``tasks`` tasks of ``split`` (valid: the choice must not look at test tasks), beside greedy on the same
    tasks, under the paper's step limit. One row per env and setting:

    * ``pass_success`` — share of tasks where one of ``n`` sampled trajectories succeeds (bon's success);
    * ``pass_reward`` — mean best reward of the ``n`` (bon's reward);
    * ``sample_reward`` / ``sample_success`` — one sampled trajectory (bon's first; = the ``sampled`` agent);
    * ``headroom`` — ``pass_success`` minus greedy success: what an ideal selector could add.
    """
    lines = []
    for env_name in envs or env_names():
        run_config, limit = paper_step_limit(config, env_name), per_env(tasks, env_name)
        greedy = [r for r in run_episodes(run_config, paths, env_name, "agent_clone", ["greedy"], limit=limit,
                                          split=split) if "error" not in r]
        base = {"env": env_name, "split": split, "n": 1, "tasks": len(greedy)}
        greedy_success = mean(r["success"] for r in greedy)
        lines.append({**base, "temperature": 0.0, "top_p": 1.0, "pass_success": greedy_success,
                      "pass_reward": mean(r["reward"] for r in greedy), "sample_success": greedy_success,
                      "sample_reward": mean(r["reward"] for r in greedy), "headroom": 0.0})
        for temperature, top_p in settings:
            overrides = {**EPISODE_SETS["agent_sampling"].overrides, "policy.temperature": temperature,
                         "policy.top_p": top_p}
            rows = [r for r in run_episodes(run_config, paths, env_name, "agent_sampling", n=n, limit=limit,
                                            split=split, overrides=overrides, temperature=temperature, top_p=top_p)
                    if "error" not in r]
            first = [r["bon_rewards"][0] for r in rows]
            lines.append({**base, "n": n, "tasks": len(rows), "temperature": temperature, "top_p": top_p,
                          "pass_success": mean(r["success"] for r in rows), "pass_reward": mean(r["reward"] for r in rows),
                          "sample_success": mean(x >= 1.0 for x in first), "sample_reward": mean(first),
                          "headroom": mean(r["success"] for r in rows) - greedy_success})
    return pd.DataFrame(lines).round(3)


def mean(values: Iterable[float]) -> float:
    """Mean of ``values`` (nan when empty)."""
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


def agent_label(row: dict[str, Any]) -> str:
    """``cloned`` for the behaviour-cloned agent, else the model name (+ ``few-shot`` with the examples)."""
    name = "cloned" if row.get("policy") == CLONE_NAME else str(row.get("policy"))
    return f"{name} few-shot" if row.get("icl") else name


def clone_curves(paths: RunPaths, *, envs: Sequence[str] | None = None) -> pd.DataFrame:
    """The cloning runs' ``metrics.csv`` (loss, token accuracy per step), stacked with an ``env`` column."""
    frames = [pd.read_csv(paths.clones(e) / "metrics.csv").assign(env=e) for e in envs or env_names()
              if (paths.clones(e) / "metrics.csv").is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ----------------------------------------------------------------------------- stage 1: trees
def collect_trees(config: Config, paths: RunPaths, *, envs: Sequence[str] | None = None,
                  splits: Sequence[str] = ("train", "valid"), tag: str = "",
                  limits: dict[str, int] | None = None, policy_overrides: dict[str, Any] | None = None) -> pd.DataFrame:
    """MCTS trees for every (env, split); returns one summary row each.

    ``done``/``skipped``/``failed`` count this call's tasks (skipped = already on disk); ``trees`` and the
    cost and reward columns describe every tree in the folder, so a resumed run reports the whole collection.
    """
    from qlib.collect import collect

    run_config = with_overrides(config, policy_overrides or {})
    rows = []
    for env_name in envs or env_names():
        for split in splits:
            out_dir = paths.trees(env_name, split, tag)
            if config.eval.reuse_only:  # report the trees on disk, search none
                on_disk = len(list(out_dir.glob("*.json"))) if out_dir.is_dir() else 0
                summary = {"tasks": on_disk, "done": 0, "skipped": on_disk, "failed": 0}
            else:
                summary = collect(env_name, split, config=run_config, out_dir=out_dir, limit=(limits or {}).get(split))
            trees = tree_stats(out_dir) if out_dir.is_dir() else pd.DataFrame()
            best = pd.to_numeric(trees["best_reward"], errors="coerce") if len(trees) else pd.Series(dtype=float)
            rows.append({
                "env": env_name, "split": split + tag, "tasks": summary["tasks"], "done": summary["done"],
                "skipped": summary["skipped"], "failed": summary["failed"], "trees": len(trees),
                **{k: trees[k].sum() if len(trees) else 0 for k in ("llm_calls", "tokens", "seconds")},
                "mean_best_reward": best.mean(), "success_rate": trees["success"].mean() if len(trees) else float("nan"),
            })
    return pd.DataFrame(rows)


def collect_all_trees(config: Config, paths: RunPaths, *, second_policy: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Notebook 01: train and valid trees of the policy, and trees of the second agent on the first
    ``<env>.ood_tasks`` valid tasks (split ``valid_ood``): ``second_policy`` (policy.* overrides), by default
    the profile's ``second_agent``."""
    own = collect_trees(config, paths, splits=("train", "valid"))
    second = config.second_agent.overrides() if second_policy is None else dict(second_policy)
    ood = [collect_trees(config, paths, envs=[env], splits=("valid",), tag="_ood", policy_overrides=second,
                         limits={"valid": config.env(env).ood_tasks or config.env(env).valid_tasks})
           for env in env_names()]
    return pd.concat([own, *ood], ignore_index=True)


def tree_stats(trees_dir: Path) -> pd.DataFrame:
    """One row per tree file: task, best reward, iterations, nodes, LLM calls, seconds."""
    from qlib.tree import load_trees

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


def all_tree_stats(paths: RunPaths, split: str = "train") -> pd.DataFrame:
    """:func:`tree_stats` of every environment's ``split`` trees, stacked."""
    frames = [tree_stats(paths.trees(env, split)) for env in env_names()]
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- stage 2: pairs
def build_all_pairs(config: Config, paths: RunPaths, *, envs: Sequence[str] | None = None,
                    splits: Sequence[str] = ("train", "valid", "valid_ood")) -> pd.DataFrame:
    """Step / trajectory pairs and QNet rows for every tree folder that exists; returns counts. With
    ``eval.reuse_only`` a pairs file already on disk (e.g. restored from the release) is counted, not rebuilt."""
    from qlib.io import write_jsonl
    from qlib.pairs import build_pairs

    counts = []
    for env_name in envs or env_names():
        for split in splits:
            trees = paths.trees(env_name, split)
            if not trees.exists():
                continue
            for level in PAIR_LEVELS:
                out = paths.pairs(env_name, level, split)
                if config.eval.reuse_only and out.is_file():  # the pairs on disk, e.g. released
                    n_rows = count_rows(out)
                else:
                    rows = build_pairs(trees, level, config)
                    if kept_for_its_model(paths, env_name, level, split, rows):
                        n_rows = count_rows(out)
                    else:
                        write_jsonl(rows, out)
                        n_rows = len(rows)
                counts.append({"env": env_name, "split": split, "level": level, "rows": n_rows,
                               "trees": len(list(trees.glob("*.json")))})
    return pd.DataFrame(counts)


def kept_for_its_model(paths: RunPaths, env_name: str, level: str, split: str, rows: list[dict[str, Any]]) -> bool:
    """Whether the pairs file on disk differs from ``rows`` but a trained Q model learned from it: it then stays,
    with a warning, beside the model that is reused as is (e.g. released step pairs built before ``qlib.pairs.TIE``
    keep the tie pair their Q model learned from)."""
    from qlib.io import jsonl_text

    out = paths.pairs(env_name, level, split)
    trained = split == "train" and (paths.qmodel(env_name, level) / "qlib_config.json").is_file()
    if not (trained and out.is_file()) or out.read_text(encoding="utf-8") == jsonl_text(rows):
        return False
    log.warning("%s: this code builds %d rows, the file its trained Q model learned from holds %d: the file stays "
                "(remove %s to rebuild and retrain both)", out, len(rows), count_rows(out), paths.qmodel(env_name, level))
    return True


def example_pair(paths: RunPaths, env: str | None = None, level: str = "step") -> dict[str, Any] | None:
    """The first ``level`` training pair of ``env`` (default: the first environment), or None."""
    pair_file = paths.pairs(env or env_names()[0], level)
    if not pair_file.exists():
        return None
    return next((json.loads(line) for line in open(pair_file)), None)


def pair_gaps(paths: RunPaths) -> pd.DataFrame:
    """``Q̂(chosen) − Q̂(rejected)`` and depth of every step-level training pair, per env."""
    frames = []
    for env in env_names():
        file = paths.pairs(env, "step")
        frame = pd.read_json(file, lines=True) if file.exists() and file.stat().st_size else pd.DataFrame()
        if len(frame):
            frames.append(frame.assign(env=env, gap=frame.q_chosen - frame.q_rejected)[["env", "depth", "gap"]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["env", "depth", "gap"])


def count_rows(jsonl: Path) -> int:
    """Lines of a JSONL file (0 when it does not exist)."""
    return sum(1 for _ in open(jsonl)) if jsonl.exists() else 0


# ----------------------------------------------------------------------------- stage 3: Q models
def train_q_models(config: Config, paths: RunPaths, *, envs: Sequence[str] | None = None,
                   kinds: Iterable[tuple[str, str]] = (("step", "dpo"), ("trajectory", "dpo"), ("qnet", "qnet")),
                   trajectory_envs: Sequence[str] | None = None) -> pd.DataFrame:
    """Train (or reuse) the Q models ``{env}_{level}`` from that level's train pairs.

    The trajectory-level model is trained only on ``trajectory_envs`` (default: the environments of the
    paper's Table 3, the trajectory-level ablation).
    """
    from qlib.qmodel import train_dpo, train_qnet

    trajectory_envs = envs_with_paper("table3") if trajectory_envs is None else trajectory_envs
    rows = []
    for env_name in envs or env_names():
        for level, kind in kinds:
            if level == "trajectory" and env_name not in trajectory_envs:
                continue
            pairs = paths.pairs(env_name, level)
            out = paths.qmodel(env_name, level)
            n_rows = count_rows(pairs)
            if n_rows == 0:
                log.warning("no %s rows for %s: skipping its Q model", level, env_name)
                rows.append({"env": env_name, "model": level, "kind": kind, "rows": 0, "trained": False})
                continue
            if not (out / "qlib_config.json").exists():
                if config.eval.reuse_only:
                    log.warning("%s %s Q model not trained (eval.reuse_only)", env_name, level)
                    rows.append({"env": env_name, "model": level, "kind": kind, "rows": n_rows, "trained": False})
                    continue
                if kind == "dpo":
                    train_dpo(pairs, out, config, model_path=q_model_init(config, env_name))
                else:
                    train_qnet(pairs, out, config)
            rows.append({"env": env_name, "model": level, "kind": kind, "rows": n_rows, "trained": True,
                         "path": str(out)})
    return pd.DataFrame(rows)


def training_curves(paths: RunPaths, *, envs: Sequence[str] | None = None) -> pd.DataFrame:
    """The metrics.csv of every trained DPO model, stacked with env/model columns."""
    frames = []
    for env_name in envs or env_names():
        for level in ("step", "trajectory"):
            metrics = paths.qmodel(env_name, level) / "metrics.csv"
            if metrics.exists():
                frames.append(pd.read_csv(metrics).assign(env=env_name, model=level))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_q(paths: RunPaths, env_name: str, name: str) -> Any:
    """The trained Q model ``{env}_{name}`` (a :class:`~qlib.qmodel.api.LazyQModel`: its weights are read when it
    first scores, so a rerun whose episodes and scores are all on disk needs neither them nor the agent they were
    trained on), or None when it was not trained (no pairs)."""
    from qlib.qmodel import LazyQModel

    out = paths.qmodel(env_name, name)
    return LazyQModel(out) if (out / "qlib_config.json").exists() else None


# ----------------------------------------------------------------------------- stage 4: acting
def run_episodes(config: Config, paths: RunPaths, env_name: str, set_name: str,
                 methods: Sequence[str] | None = None, *, n: int | None = None, limit: int | None = None,
                 q_model: Any = None, overrides: Mapping[str, Any] | None = None, split: str = "test",
                 **fields: Any) -> list[dict[str, Any]]:
    """Episodes of ``methods`` (default: the set's) into episode set ``set_name`` of ``env_name``; their rows.

    The policy runs with the set's config ``overrides`` (or the given ones); ``q`` rows are scored by
    ``q_model`` (default: the set's Q model), ``qnet`` and ``qnet_lookahead`` rows by the set's QNet; a
    scored method whose model was not trained is skipped with a warning. Rows get the environment's extra metrics.
    """
    from qlib.episodes import SCORED
    from qlib.evaluate import evaluate
    from qlib.workers import worker_policy

    episode_set = EPISODE_SETS[set_name]
    run_config = with_overrides(config, episode_set.overrides if overrides is None else overrides)
    methods = list(methods or episode_set.methods or run_config.eval.methods)
    if q_model is None and "q" in methods:
        q_model = load_q(paths, env_name, episode_set.q_model.format(**fields))
    qnet_methods = ("qnet", "qnet_lookahead")  # the methods a QNet scores
    uses_qnet = any(m in qnet_methods for m in methods)
    qnet = load_q(paths, env_name, episode_set.qnet) if uses_qnet and episode_set.qnet else None
    # reuse_only runs no episode: no model is loaded (nor needed: a fresh machine has no clone)
    policy = None if run_config.eval.reuse_only else worker_policy(env_name, run_config, run_config.eval.workers)
    out = paths.episode_set(set_name, env_name, **fields)
    rows: list[dict[str, Any]] = []
    for method in methods:
        scorer = qnet if method in qnet_methods else q_model
        if method in SCORED and scorer is None:
            log.warning("%s: no Q model for %s, method skipped", env_name, method)
            continue
        shared = [paths.episode_set(episode_set.shared[method], env_name)] if method in episode_set.shared else []
        rows += evaluate(env_name, split, method, config=run_config, policy=policy, q_model=scorer, n=n,
                         limit=limit, out=out, qmodel_name=episode_set.label.format(**fields), shared=shared)
    return add_row_metrics(rows)


def add_row_metrics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their environment's extra metrics added (e.g. answer F1); error rows unchanged."""
    return [row if "error" in row else {**row, **get_spec(row["env"]).row_metrics(row)} for row in rows]


def summary_of(rows: list[dict[str, Any]], config: Config) -> pd.DataFrame:
    """:func:`qlib.stats.summarise` of ``rows`` with the config's resamples and seed (empty without rows)."""
    from qlib.stats import summarise

    if not rows:
        return pd.DataFrame(columns=["env", "split", "method", "n", "tasks", "reward", "reward_lo", "reward_hi"])
    return summarise(rows, resamples=config.eval.bootstrap_resamples, seed=config.seed)


def results_table(rows: list[dict[str, Any]], config: Config, *, baseline: str = "q",
                  others: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary with bootstrap CIs, paired differences ``baseline − other``) over all envs in ``rows``;
    ``others`` defaults to every other method present, in :data:`qlib.episodes.METHODS` order."""
    from qlib.episodes import METHODS
    from qlib.stats import paired_differences

    summary = summary_of(rows, config)
    present = {r["method"] for r in rows}
    wanted = [m for m in (others or METHODS) if m in present and m != baseline]
    if baseline in present and wanted:
        diffs = paired_differences(rows, baseline=baseline, others=wanted,
                                   resamples=config.eval.bootstrap_resamples, seed=config.seed)
    else:
        diffs = pd.DataFrame()
    return summary, diffs


def oracle_ceilings(config: Config, *, split: str = "test") -> pd.DataFrame:
    """Mean reward of each environment's scripted expert on the first ``test_tasks`` tasks of ``split``."""
    rows = []
    for env in env_names():
        settings = config.env(env)
        reward = get_spec(env).expert_reward(split, settings.test_tasks, settings.max_steps)
        rows.append({"env": env, "oracle_reward": reward})
    return pd.DataFrame(rows)


def table2(config: Config, paths: RunPaths, methods: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Notebook 04, Table 2: every method on every env's test tasks (set ``test_methods``).

    Returns (summary with the paper's number and the scripted-expert ceiling, paired ``q − other``).
    """
    rows = []
    for env in env_names():
        rows += run_episodes(config, paths, env, "test_methods", methods or config.eval.methods)
    summary, paired = results_table(rows, config)
    summary = summary.merge(pd.DataFrame(paper_table2()), on=["env", "method"], how="left")
    return summary.merge(oracle_ceilings(config), on="env", how="left"), paired


def transfer_table(config: Config, paths: RunPaths, *, label: str, overrides: Mapping[str, Any] | None = None,
                   set_name: str = "second_policy") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Notebook 04: the policy alone (``sampled``) vs guided by the step Q model (``q``), for another policy.

    The policy is the episode set ``set_name``'s (or ``overrides``), named ``label`` in the table.
    """
    rows = []
    for env in env_names():
        rows += run_episodes(config, paths, env, set_name, overrides=overrides)
    summary, paired = results_table(rows, config, others=("sampled",))
    summary.insert(0, "policy", label)
    return summary, paired


# ----------------------------------------------------------------------------- ablations
def candidates_grid(config: Config, paths: RunPaths, candidates: Sequence[int], *, env: str | None = None,
                    tasks: int | None = None) -> pd.DataFrame:
    """Notebook 05, Table 3: reward of step- and trajectory-level Q models picking among n candidates.

    ``env`` defaults to the paper's (Table 3), ``tasks`` to the profile's ``eval.ablation_tasks``. The
    step-level rows live in the ``test_methods`` set, the trajectory-level ones in ``trajectory_q``.
    """
    env = env or envs_with_paper("table3")[0]
    tasks = tasks or config.eval.ablation_tasks or None
    rows = []
    for set_name in ("test_methods", "trajectory_q"):
        level = EPISODE_SETS[set_name].q_model
        q_model = load_q(paths, env, level)
        if q_model is None:
            log.warning("no %s-level Q model (no pairs): skipped", level)
            continue
        for n in candidates:
            episodes = run_episodes(config, paths, env, set_name, ["q"], n=n, q_model=q_model, limit=tasks)
            rows += [dict(row, method=level) for row in episodes]
    table = summary_of(rows, config).rename(columns={"method": "preference data"})
    table["paper"] = [paper_number("table3", env, (level, n)) for level, n in zip(table["preference data"], table.n)]
    return table


def temperature_ablation(config: Config, paths: RunPaths, temperatures: Sequence[float], *,
                         envs: Sequence[str] | None = None, tasks: int | Mapping[str, int] | None = None) -> pd.DataFrame:
    """Notebook 05: sampled, bon and q (step-level Q, ``eval.n_candidates``) with candidates sampled at each
    of ``temperatures``, beside the same methods at the profile's ``policy.temperature`` (notebook 04's
    rows) on the same first ``tasks`` test tasks (default: ``eval.ablation_tasks``). One row per env,
    temperature and method, with 95% bootstrap CIs."""
    rows = []
    for env_name in envs or env_names():
        limit = per_env(tasks, env_name) or config.eval.ablation_tasks or None
        q_model = load_q(paths, env_name, "step")
        if q_model is None:
            log.warning("%s: no step-level Q model (no pairs): temperature ablation skipped", env_name)
            continue
        methods = ["sampled", "bon", "q"]
        own = run_episodes(config, paths, env_name, "test_methods", methods, q_model=q_model, limit=limit)
        rows += [dict(r, temperature=config.policy.temperature) for r in own]
        for temperature in temperatures:
            if temperature == config.policy.temperature:
                continue
            overrides = {"policy.temperature": float(temperature)}
            episodes = run_episodes(config, paths, env_name, "sampling_temperature", methods, q_model=q_model,
                                    limit=limit, overrides=overrides, temperature=float(temperature))
            rows += [dict(r, temperature=float(temperature)) for r in episodes]
    done = [r for r in rows if "error" not in r]
    if not done:
        return pd.DataFrame()
    tables = []
    for temperature in sorted({r["temperature"] for r in done}):
        table = summary_of([r for r in done if r["temperature"] == temperature], config)
        table.insert(1, "temperature", temperature)
        tables.append(table)
    return pd.concat(tables, ignore_index=True).drop(columns=["oracle"], errors="ignore")


def pair_counts(total: int, fractions: Sequence[float]) -> list[int]:
    """Numbers of step pairs for ``fractions`` of ``total`` (at least 1; none without pairs), in order."""
    return [max(1, int(round(total * f))) for f in fractions] if total else []


def q_model_on_pairs(config: Config, paths: RunPaths, env: str, size: int) -> Any:
    """The step-level Q model of ``env`` trained on the first ``size`` step pairs (trained when missing; with
    ``eval.reuse_only`` None when missing, and read only if an episode needs it).

    With all the pairs it is notebook 03's model ``step``; with fewer, the ``pair_subset`` set's model.
    """
    from qlib.qmodel import LazyQModel, load_q_model, train_dpo

    pairs_file = paths.pairs(env, "step")
    full = size >= count_rows(pairs_file)
    out = paths.qmodel(env, "step" if full else EPISODE_SETS["pair_subset"].q_model.format(pairs=size))
    if not (out / "qlib_config.json").exists():
        if config.eval.reuse_only:
            return None
        train_dpo(pairs_file, out, with_overrides(config, {"dpo.max_pairs": size}), model_path=q_model_init(config, env))
    return LazyQModel(out) if config.eval.reuse_only else load_q_model(out)


def q_model_init(config: Config, env_name: str) -> Path | None:
    """The folder a step/trajectory Q model of ``env_name`` starts from (``dpo.init``): None = the embedded
    base model; with ``agent`` and the behaviour-cloned agent, its merged weights."""
    if config.dpo.init == "base" or config.policy.model == EMBEDDED_NAME:
        return None
    if config.policy.model != CLONE_NAME:
        raise ValueError(f"dpo.init='agent' needs the embedded or the behaviour-cloned agent, not {config.policy.model!r}")
    from qlib.export import clone_dir_for, merged_dir

    return merged_dir(clone_dir_for(config.policy, env_name))


def pairs_ablation(config: Config, paths: RunPaths, fractions: Sequence[float], *, env: str | None = None,
                   tasks: int | None = None) -> pd.DataFrame:
    """Notebook 06, Fig. 5a: episodes of Q-guided acting with Q models trained on growing shares of the pairs.

    One row per episode with ``n_pairs``; 0 pairs is the plain sampled agent. ``env`` defaults to the
    paper's (Fig. 5a), ``tasks`` to the profile's ``eval.ablation_tasks``.
    """
    env = env or envs_with_paper("fig5a")[0]
    tasks = tasks or config.eval.ablation_tasks or None
    total = count_rows(paths.pairs(env, "step"))
    rows = [dict(r, method="q", n_pairs=0)
            for r in run_episodes(config, paths, env, "test_methods", ["sampled"], limit=tasks)]
    for size in pair_counts(total, fractions):
        set_name = "test_methods" if size == total else "pair_subset"
        q_model = q_model_on_pairs(config, paths, env, size)
        if q_model is None:
            log.warning("%s: no Q model on %d pairs (eval.reuse_only): Fig. 5a leaves that point out", env, size)
            continue
        episodes = run_episodes(config, paths, env, set_name, ["q"], q_model=q_model, limit=tasks, pairs=size)
        rows += [dict(row, n_pairs=size) for row in episodes]
    return pd.DataFrame(rows)


def pairs_summary(episodes: pd.DataFrame) -> pd.DataFrame:
    """Per ``n_pairs``: tasks, mean reward, success rate and the mean of each extra metric."""
    from qlib.stats import EXTRA_METRICS

    if episodes.empty:
        return pd.DataFrame(columns=["n_pairs", "tasks", "reward", "success"])
    metrics = dict(tasks=("reward", "size"), reward=("reward", "mean"), success=("success", "mean"))
    metrics.update({m: (m, "mean") for m in EXTRA_METRICS if m in episodes})
    return episodes.groupby("n_pairs").agg(**metrics).reset_index()


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
            pairs += len(tree_rows(prefix, "prefix", "step", variant=config.pairs.variant, margin=config.pairs.margin,
                                   from_unsuccessful_trees=config.pairs.from_unsuccessful_trees,
                                   rollout_best_path=config.pairs.rollout_best_path))
        rows.append({"iterations": k, "successful_trajectories": successes, "step_pairs": pairs, "trees": len(trees)})
    return pd.DataFrame(rows)


def iteration_curves(config: Config, paths: RunPaths, iterations: Sequence[int] | None = None) -> pd.DataFrame:
    """Notebook 06, Fig. 5b: :func:`iteration_curve` of every env's train trees (default k = 1..mcts.iterations)."""
    ks = list(iterations or range(1, config.mcts.iterations + 1))
    frames = [iteration_curve(paths.trees(env, "train"), config, ks).assign(env=env) for env in env_names()]
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- what the Q model learned
def preference_accuracies(paths: RunPaths, *, envs: Sequence[str] | None = None, max_pairs: int = 0) -> pd.DataFrame:
    """Fig 4a: preference accuracy of each env's step Q model on train / IND (valid) / OOD pairs, with the paper's."""
    from qlib.qmodel import preference_accuracy

    rows = []
    for env_name in envs or env_names():
        q_model = load_q(paths, env_name, "step")
        if q_model is None:
            continue
        for split, label in (("train", "train"), ("valid", "in-distribution"), ("valid_ood", "out-of-distribution")):
            pairs = paths.pairs(env_name, "step", split)
            if not pairs.exists() or pairs.stat().st_size == 0:
                continue
            result = preference_accuracy(q_model, pairs, max_pairs=max_pairs, cache=score_cache(q_model, "margins", pairs.stem))
            rows.append({"env": env_name, "set": label, "accuracy": result["accuracy"],
                         "accuracy_lo": result["accuracy_lo"], "accuracy_hi": result["accuracy_hi"], "pairs": result["n"],
                         "mean_margin": result["mean_margin"],
                         "paper": paper_number("fig4a", env_name, "ind") if split == "valid" else None})
    return pd.DataFrame(rows)


def score_cache(q_model: Any, kind: str, name: str) -> Path | None:
    """Where values ``q_model`` computed are kept (:class:`qlib.qmodel.api.ScoreCache`):
    ``<model folder>/<kind>/<name>.jsonl``, released with the model (kinds: ``margins`` of a pairs file,
    ``qvalues`` of an episode file's actions); None for a model not loaded from a folder."""
    folder = getattr(q_model, "path", "")
    return Path(folder) / kind / f"{name}.jsonl" if folder else None


def q_init_comparison(config: Config, paths: RunPaths, *, max_pairs: int = 0,
                      envs: Sequence[str] | None = None) -> pd.DataFrame:
    """Notebook 03: does the step Q model learn better from the base model or from the agent (``dpo.init``)?

    Both starts are trained on the same first ``max_pairs`` step pairs (0 = all) as models
    ``step_init_<init>_<k>pairs`` and scored on the held-out in-distribution (valid) and out-of-distribution
    pairs. Environments whose agent is the base model (nothing to compare) are left out."""
    from qlib.qmodel import load_q_model, preference_accuracy, train_dpo

    rows = []
    for env_name in envs or env_names():
        pairs_file = paths.pairs(env_name, "step")
        total = count_rows(pairs_file)
        k = min(max_pairs or total, total)
        if config.eval.reuse_only and not all((paths.qmodel(env_name, f"{INIT_COMPARISON}{init}_{k}pairs") /
                                               "qlib_config.json").exists() for init in ("base", "agent")):
            log.warning("%s: the dpo.init comparison models are not on disk (eval.reuse_only): left out", env_name)
            continue
        agent_start = q_model_init(with_overrides(config, {"dpo.init": "agent"}), env_name) if total else None
        if agent_start is None:
            continue
        for init, start in (("base", None), ("agent", agent_start)):
            out = paths.qmodel(env_name, f"{INIT_COMPARISON}{init}_{k}pairs")
            if not (out / "qlib_config.json").exists():
                train_dpo(pairs_file, out, with_overrides(config, {"dpo.max_pairs": k}), model_path=start)
            q_model = load_q_model(out)
            for split, label in (("valid", "in-distribution"), ("valid_ood", "out-of-distribution")):
                held_out = paths.pairs(env_name, "step", split)
                if count_rows(held_out):
                    result = preference_accuracy(q_model, held_out, cache=score_cache(q_model, "margins", held_out.stem))
                    rows.append({"env": env_name, "init": init, "train_pairs": k, "set": label,
                                 "accuracy": result["accuracy"], "accuracy_lo": result["accuracy_lo"],
                                 "accuracy_hi": result["accuracy_hi"], "pairs": result["n"],
                                 "mean_margin": result["mean_margin"], "default": init == config.dpo.init})
    return pd.DataFrame(rows)


def q_values_of_episodes(q_model: Any, rows: list[dict[str, Any]], env_name: str, *, variant: str = "react",
                         max_actions: int = 200, cache: Path | None = None) -> pd.DataFrame:
    """Fig 4b: Q of each executed action, labelled by whether its episode succeeded (up to ``max_actions`` of
    each); with a ``cache`` file (:class:`qlib.qmodel.api.ScoreCache`) actions already scored are read back."""
    from qlib.agent.prompts import recorded_prompts
    from qlib.envs import make
    from qlib.qmodel.api import ScoreCache, content_key

    env = make(env_name)
    store = ScoreCache(cache, q_model)
    records = []
    for outcome in (True, False):
        taken = 0
        for row in (r for r in rows if bool(r["success"]) == outcome):
            for step, messages in recorded_prompts(env_name, env.reset(row["task_id"]), row["trajectory"], variant=variant):
                if taken >= max_actions:
                    break
                key = content_key([messages, step["text"]])
                if key not in store:
                    store.put(key, q_model.score(messages, [step["text"]])[0])
                records.append({"env": env_name, "trajectory": "successful" if outcome else "failed", "q": store[key]})
                taken += 1
    return pd.DataFrame(records)


def executed_action_q(paths: RunPaths, *, max_actions: int = 200) -> pd.DataFrame:
    """Notebook 07, Fig. 4b: Q of the actions of the ``sampled`` test episodes (set ``test_methods``), every env."""
    from qlib.episode_store import load_results

    frames = []
    for env in env_names():
        q_model = load_q(paths, env, "step")
        episodes = paths.episode_set("test_methods", env)
        if q_model is None or not episodes.exists():
            continue
        sampled = [r for r in load_results(episodes) if r["method"] == "sampled"]
        cache = score_cache(q_model, "qvalues", f"{episodes.stem}_sampled")
        try:
            frames.append(q_values_of_episodes(q_model, sampled, env, max_actions=max_actions, cache=cache))
        except CloneNotFoundError as err:  # Q values not all cached, and no clone here to score the rest
            log.warning("%s left out of Fig. 4b: %s", env, err)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["env", "trajectory", "q"])


def q_distribution(qvalues: pd.DataFrame) -> pd.DataFrame:
    """Count, mean, spread and quartiles of Q per env and trajectory outcome."""
    return qvalues.groupby(["env", "trajectory"]).q.describe().reset_index() if len(qvalues) else qvalues


def q_values_of_tree_actions(q_model: Any, qnet_rows_file: Path, env_name: str, *,
                             max_actions: int = 200, cache: Path | None = None) -> pd.DataFrame:
    """Learned Q against the MCTS Bellman value ``q_raw`` for the actions of (held-out) tree nodes.

    ``max_actions`` rows evenly spaced over the file (every k-th), so they span its trees: the first rows
    would all come from the first few trees (once three failed trees, where every MCTS value is 0).
    Siblings share their prompt, so they are scored in one call (one shared-prefix pass); with a ``cache``
    file (:class:`qlib.qmodel.api.ScoreCache`) actions already scored are read back.
    """
    from qlib.qmodel.api import ScoreCache, content_key

    if not Path(qnet_rows_file).exists():
        return pd.DataFrame(columns=["env", "task_id", "depth", "q", "q_mcts"])
    rows = [json.loads(line) for line in open(qnet_rows_file)]
    rows = rows[::max(1, len(rows) // max_actions)][:max_actions] if max_actions else rows
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(json.dumps(row["prompt"]), []).append(row)
    store = ScoreCache(cache, q_model)
    records = []
    for siblings in groups.values():
        prompt, texts = siblings[0]["prompt"], [r["completion"][0]["content"] for r in siblings]
        keys = [content_key([prompt, text]) for text in texts]
        missing = [i for i, key in enumerate(keys) if key not in store]
        if missing:
            for i, q in zip(missing, q_model.score(prompt, [texts[i] for i in missing])):
                store.put(keys[i], float(q))
        records += [{"env": env_name, "task_id": r["task_id"], "depth": r["depth"], "q": float(store[key]),
                     "q_mcts": r["q_raw"]} for r, key in zip(siblings, keys)]
    return pd.DataFrame(records)


def tree_action_q(paths: RunPaths, *, max_actions: int = 200) -> pd.DataFrame:
    """Notebook 07, Fig. 4c: :func:`q_values_of_tree_actions` on every env's held-out (valid) QNet rows."""
    frames = []
    for env in env_names():
        q_model = load_q(paths, env, "step")
        if q_model is not None:
            rows_file = paths.pairs(env, "qnet", split="valid")
            try:
                frames.append(q_values_of_tree_actions(q_model, rows_file, env, max_actions=max_actions,
                                                       cache=score_cache(q_model, "qvalues", rows_file.stem)))
            except CloneNotFoundError as err:  # Q values not all cached, and no clone here to score the rest
                log.warning("%s left out of Fig. 4c: %s", env, err)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["env", "q", "q_mcts"])


def rank_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """Per env: Spearman correlation of learned Q with the MCTS value (scipy), with its p-value."""
    from scipy.stats import spearmanr

    lines = []
    for env, group in frame.groupby("env", sort=False):
        rho, p = spearmanr(group["q"], group["q_mcts"]) if group["q_mcts"].nunique() > 1 else (float("nan"),) * 2
        lines.append({"env": env, "actions": len(group), "spearman_rho": float(rho), "p_value": float(p)})
    return pd.DataFrame(lines, columns=["env", "actions", "spearman_rho", "p_value"])


# ----------------------------------------------------------------------------- prompting strategies
def prompting_table(config: Config, paths: RunPaths, *, env: str | None = None) -> pd.DataFrame:
    """Notebook 08, Table 4: ReAct vs ReAct + Reflection, each alone (``sampled``) and with the step Q model.

    ``env`` defaults to the paper's (Table 4). The ReAct rows are the ``test_methods`` set's, the
    Reflection rows the ``second_policy`` set's, so notebook 04's episodes are reused.
    """
    env = env or envs_with_paper("table4")[0]
    q_model = load_q(paths, env, "step")
    variants = (("react", "test_methods", {"policy.prompt": "react"}), ("react+reflection", "second_policy", None))
    rows = []
    for variant, set_name, overrides in variants:
        episodes = run_episodes(config, paths, env, set_name, ["sampled", "q"], q_model=q_model, overrides=overrides)
        rows += [dict(row, method=variant + ("+q" if row["method"] == "q" else "")) for row in episodes]
    table = summary_of(rows, config)
    table["paper"] = [paper_number("table4", env, method) for method in table.method]
    return table


# ----------------------------------------------------------------------------- Table 2's fine-tuning rows
def finetune_data(config: Config, paths: RunPaths, env_name: str, row: str) -> tuple[list[dict[str, Any]], dict]:
    """The training rows of fine-tuning row ``row`` for ``env_name`` from its train trees (for ``qstar_st``, from
    Q-guided episodes of the train tasks), and the exploration cost (``qstar_st`` only)."""
    from qlib import finetune as ft

    trees = paths.trees(env_name, "train")
    if row != "qstar_st":
        if not trees.exists():
            return [], {}
        build = {"rft": ft.rft_rows, "agentevol": ft.agentevol_rows, "eto": ft.eto_pairs}[row]
        return build(trees, config), {}
    scorer = config.finetune.st_q_model
    method = "q" if scorer == "step" else "qnet"
    q_model = load_q(paths, env_name, scorer)
    if q_model is None:
        return [], {}
    from qlib.workers import worker_policy

    episodes = add_row_metrics(ft.explore(
        env_name, config, policy=worker_policy(env_name, config, config.eval.workers), q_model=q_model, method=method,
        out=paths.episode_set("self_train_explore", env_name, scorer=scorer), qmodel_name=scorer))
    return ft.episode_demos(episodes, config, variant=config.policy.prompt), exploration_cost(episodes)


def exploration_cost(episodes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What Q*Agent self-training's exploration cost: episodes, seconds (summed over episodes, so workers running
    side by side each count) and tokens (the agent's prompts and generations and the Q model's)."""
    return {"explore_episodes": len(episodes), "explore_seconds": round(sum(r["wall_s"] for r in episodes), 2),
            "explore_tokens": sum(r["tokens_generated"] + r["prompt_tokens"] + r["q_tokens"] for r in episodes)}


def stored_exploration_cost(paths: RunPaths, env_name: str, out: Path) -> dict[str, Any]:
    """The exploration cost of the trained self-training agent in ``out``, from the episodes it learned from (the
    set ``self_train_explore`` of the Q model its ``qlib_config.json`` names); {} when they are not on disk."""
    from qlib.episode_store import load_results

    scorer = json.loads((out / "qlib_config.json").read_text()).get("finetune_config", {}).get("st_q_model")
    episodes = paths.episode_set("self_train_explore", env_name, scorer=scorer) if scorer else None
    if episodes is None or not episodes.is_file():
        return {}
    return exploration_cost([r for r in load_results(episodes) if r.get("split") == "train"])


def finetune_agents(config: Config, paths: RunPaths, *, rows: Sequence[str] | None = None,
                    envs: Sequence[str] | None = None, max_steps: int = -1) -> pd.DataFrame:
    """Train (or reuse) each environment's fine-tuned agents (Table 2's rows :data:`qlib.finetune.ROWS`), each a
    LoRA on the profile's agent, in ``runs/<profile>/finetuned/<env>_<row>/``. One line per env and row with
    its data and training cost; a row without data is not trained and says why (``note``)."""
    from qlib import finetune as ft

    lines = []
    for env_name in envs or env_names():
        for row in rows or ft.ROWS:
            out = paths.runs / "finetuned" / f"{env_name}_{row}"
            trained = (out / "qlib_config.json").is_file()
            if not trained and config.eval.reuse_only:
                lines.append({"env": env_name, "row": row, "trained": False, "note": "not trained (eval.reuse_only)"})
                continue
            if not trained:
                data, spent = finetune_data(config, paths, env_name, row)
            else:  # reused; self-training's exploration is part of its cost, read from the episodes it learned from
                data, spent = [], stored_exploration_cost(paths, env_name, out) if row == "qstar_st" else {}
            if not data and not trained:
                why = "no Q model to guide the exploration" if row == "qstar_st" and not spent else "no training data"
                log.warning("%s %s: %s (no successful trajectory / failed pair in the train trees?)", env_name, row, why)
                lines.append({"env": env_name, "row": row, "trained": False, "note": why, **spent})
                continue
            # the agent's weights only for a row still to train: a released row needs no clone
            agent = None if trained else q_model_init(with_overrides(config, {"dpo.init": "agent"}), env_name)
            ft.finetune(row, data, out, config, agent=agent, max_steps=max_steps)
            lines.append({"env": env_name, "row": row, "trained": True, "note": "", **ft.cost(out), **spent,
                          "path": str(out)})
    return pd.DataFrame(lines)


def finetune_table(config: Config, paths: RunPaths, *, rows: Sequence[str] | None = None,
                   methods: Sequence[str] = ("greedy",)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2's fine-tuning rows beside ``greedy`` and ``q`` (set ``test_methods``): each trained agent's
    episodes on the same test tasks, seeds and step limit, labelled by row (``<row>`` for greedy, else
    ``<row>_<method>``). Returns (summary with the paper's number, paired differences): ``q − row`` (the
    paper's claim) and ``row − greedy`` (did fine-tuning improve the agent it started from?), one line each.

    ``greedy`` is the released clone's. A row trained from a retrained clone (its ``agent_dtype``, e.g. fp32 on
    a CPU without bf16) grew from a near twin of it (:func:`clone_twin_check`); when that twin's greedy
    episodes exist (``episodes/twin_<dtype>_greedy_<env>.jsonl``) a third line ``row − twin_<dtype>`` pairs the
    row with the agent it really started from."""
    from qlib import finetune as ft
    from qlib.export import GGUF_FILE
    from qlib.io import read_jsonl
    from qlib.stats import paired_differences

    episodes, labels, twins = [], [], []
    for env_name in env_names():
        episodes += run_episodes(config, paths, env_name, "test_methods", ["greedy", "q"])
        for row in rows or ft.ROWS:
            out = paths.runs / "finetuned" / f"{env_name}_{row}"
            if not (out / "qlib_config.json").is_file():
                continue
            dtype = (json.loads((out / "qlib_config.json").read_text()).get("agent_dtype") or "").split("-")[0]
            twin_file = paths.episode_set("clone_twin", env_name, dtype=dtype)  # as clone_twin_check names it
            if dtype and twin_file.is_file():
                twin = f"twin_{dtype}"
                twins.append((env_name, row, twin))
                if not any(e["method"] == twin and e["env"] == env_name for e in episodes):
                    episodes += [dict(r, method=twin) for r in read_jsonl(twin_file)
                                 if r.get("method") == "greedy" and r.get("split") == "test"]
            # exported when an episode needs it (qlib.export.gguf_for): released episodes rerun without the clone
            model = {**EPISODE_SETS["finetuned"].overrides, "policy.model": str(out / GGUF_FILE)}
            for got in run_episodes(config, paths, env_name, "finetuned", methods, overrides=model, row=row):
                label = row if got["method"] == "greedy" else f"{row}_{got['method']}"
                episodes.append(dict(got, method=label))
                labels.append(label)
    twin_labels = {twin for _, _, twin in twins}
    summary, paired = results_table([e for e in episodes if e["method"] not in twin_labels], config,
                                    others=list(dict.fromkeys(labels)) or None)
    gains = [paired_differences(episodes, baseline=label, others=["greedy"],
                                resamples=config.eval.bootstrap_resamples, seed=config.seed)
             for label in dict.fromkeys(labels)]
    gains += [paired_differences([e for e in episodes if e["env"] == env_name], baseline=row, others=[twin],
                                 resamples=config.eval.bootstrap_resamples, seed=config.seed)
              for env_name, row, twin in twins]
    paired = pd.concat([paired, *gains], ignore_index=True)
    return summary.merge(pd.DataFrame(paper_table2()), on=["env", "method"], how="left"), paired


def training_costs(paths: RunPaths, trained: pd.DataFrame) -> pd.DataFrame:
    """Per env: what each Table 2 row cost to train beyond the shared MCTS trees (their LLM calls, tokens and
    seconds are the first line): the Q models (step DPO, QNet) and the fine-tuned agents of ``trained``."""
    lines = []
    for env_name in env_names():
        trees = tree_stats(paths.trees(env_name, "train")) if paths.trees(env_name, "train").exists() else pd.DataFrame()
        lines.append({"env": env_name, "row": "MCTS trees (shared data)", "data_rows": len(trees),
                      "train_tokens": int(trees.tokens.sum()) if len(trees) else 0,
                      "train_seconds": float(trees.seconds.sum()) if len(trees) else 0.0})
        for name, row in (("step", "q"), ("qnet", "qnet")):
            file = paths.qmodel(env_name, name) / "qlib_config.json"
            if file.is_file():
                meta = json.loads(file.read_text())
                lines.append({"env": env_name, "row": row, "data_rows": meta.get("n_pairs", meta.get("n_rows")),
                              "train_seconds": meta.get("train_seconds")})
    frame = pd.DataFrame(lines)
    if len(trained) and "train_seconds" in trained:
        frame = pd.concat([frame, trained[trained.trained]], ignore_index=True)
    return frame
