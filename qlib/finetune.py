"""Table 2's fine-tuning rows: the agent itself trained on the same data as the Q model (paper §5.2).

The paper's claim is that a separate Q-value model beats fine-tuning the agent on the same MCTS data. These
are the agent-side baselines, each a LoRA on the agent (the behaviour-cloned model, merged), trained with
trl + peft through the agent's own tokenisation (:mod:`qlib.qmodel.format` via :mod:`qlib.clone` and
:mod:`qlib.qmodel.dpo`), from the **training trees** the Q model learns from:

* ``rft`` — Rejection-sampling Fine-Tuning: supervised fine-tuning on the trees' successful trajectories
  (final environment reward >= ``finetune.success_threshold``; 1.0 = the paper's success, on WebShop's
  graded reward: every attribute, option and the price matched);
* ``agentevol`` — AgentEvol-style reward-weighted SFT on every *finished* trajectory (the environment ended
  it; a depth-limit cut is not finished) whose reward is > ``finetune.agentevol_min_reward``: each
  sequence's loss is multiplied by its trajectory's reward (:class:`qlib.clone.WeightedSFTTrainer`, a
  small ``SFTTrainer`` subclass; one sequence per micro-batch, so the weight is exact);
* ``eto`` — ETO: trajectory-level DPO on the agent (win = the tree's best trajectory, lose = its worst
  one when that failed, i.e. the trajectory-level pairs of :mod:`qlib.pairs` whose rejected reward is below
  the success threshold); the reference is the agent before this step (the LoRA disabled);
* ``qstar_st`` — Q*Agent's Q-guided self-training: the agent explores the **training** tasks picking among
  ``eval.n_candidates`` sampled turns with a trained Q model (``finetune.st_q_model``), and is fine-tuned
  like RFT on the successful episodes (:func:`explore`, :func:`episode_demos`).

A trajectory is the conversation the agent saw (``render_conversation(..., icl=False)``: the fine-tuned
agent runs without in-context examples, like the cloned one), so train and test prompts match.

Output folder of each row (the clone layout, so :func:`qlib.export.export_gguf` and every backend run it;
``base_model`` is the agent's merged folder)::

    <out>/data.jsonl          the training rows (demos with ``weight``, or trajectory pairs)
    <out>/adapter/ tokenizer/ qlib_config.json metrics.csv   as written by the clone / DPO trainers
    qlib_config.json          + {"finetune": row, "data_rows", "data_tokens", "train_tokens", "train_seconds"}
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

from qlib import tree as trees
from qlib.agent.base import Message
from qlib.config import Config, with_overrides
from qlib.io import atomic_write_text, read_jsonl, write_jsonl
from qlib.pairs import _TreeView, build_pairs

log = logging.getLogger(__name__)

ROWS = ("rft", "agentevol", "eto", "qstar_st")  # Table 2 names of the fine-tuned agents
DATA_FILE = "data.jsonl"


# ----------------------------------------------------------------------------- data from trees
def tree_trajectories(source: Any, prompt_variant: str | None = None) -> list[dict[str, Any]]:
    """Every distinct terminal trajectory of the trees in ``source`` (a folder or files) as a demo row:
    ``{"messages", "reward", "finished", "env", "task_id", "tree_file", "node_id"}``. ``reward`` is the
    last step's environment reward; ``finished``: the environment ended it (not the depth limit). The same
    turns of the same task (a tree file given twice) count once."""
    rows, seen = [], set()
    for path, tree in trees.load_trees(source):
        view = _TreeView(tree, path.name, prompt_variant)
        for node in trees.terminal_nodes(view.nodes):
            ids = trees.path_ids(view.nodes, node["id"])
            turns = (tree["env"], tree["task_id"], *(view.nodes[i]["text"] for i in ids[1:]))
            if len(ids) < 2 or turns in seen:
                continue
            seen.add(turns)
            rows.append({"messages": view.prompt(ids[:1]) + view.trajectory_messages(ids),
                         "reward": float(node["reward"]), "finished": not node["truncated"], **view.meta(),
                         "tree_file": path.name, "node_id": node["id"]})
    return rows


def rft_rows(source: Any, config: Config) -> list[dict[str, Any]]:
    """RFT data: the trees' successful trajectories (reward >= ``finetune.success_threshold``)."""
    threshold = config.finetune.success_threshold
    return [r for r in tree_trajectories(source) if r["finished"] and r["reward"] >= threshold]


def agentevol_rows(source: Any, config: Config) -> list[dict[str, Any]]:
    """AgentEvol data: finished trajectories with reward > ``finetune.agentevol_min_reward``, ``weight`` = reward;
    at most ``finetune.agentevol_per_task`` per task (highest reward first, ties in tree order; 0 = all)."""
    low, cap = config.finetune.agentevol_min_reward, config.finetune.agentevol_per_task
    rows = [{**r, "weight": r["reward"]} for r in tree_trajectories(source) if r["finished"] and r["reward"] > low]
    if not cap:
        return rows
    kept: dict[tuple, list[int]] = {}
    for i in sorted(range(len(rows)), key=lambda i: -rows[i]["reward"]):  # stable: ties stay in tree order
        kept.setdefault((rows[i]["env"], rows[i]["task_id"]), []).append(i)
    keep = {i for ids in kept.values() for i in ids[:cap]}
    return [r for i, r in enumerate(rows) if i in keep]


def eto_pairs(source: Any, config: Config) -> list[dict[str, Any]]:
    """ETO data: per tree, best trajectory (win) vs worst (lose) when the worst failed (reward below the
    success threshold): the trajectory-level pairs of :func:`qlib.pairs.build_pairs` (same ``pairs`` settings)."""
    rows = build_pairs(source, "trajectory", config)
    return [r for r in rows if r["q_rejected"] < config.finetune.success_threshold]


# ----------------------------------------------------------------------------- data from episodes
def episode_demos(rows: Iterable[dict[str, Any]], config: Config, *, variant: str = "react") -> list[dict[str, Any]]:
    """Demo rows (as :func:`tree_trajectories`) of the successful **train** episodes among ``rows`` (episode
    rows of :mod:`qlib.evaluate`); a row of another split is an error (self-training never sees test tasks)."""
    from qlib.agent.prompts import render_conversation
    from qlib.envs import make

    demos, envs = [], {}
    for row in rows:
        if row.get("split") != "train":
            raise ValueError(f"self-training may only learn from train episodes; got split {row.get('split')!r} "
                             f"(task {row.get('task_id')})")
        if "error" in row or row["reward"] < config.finetune.success_threshold or not row["trajectory"]:
            continue
        env = envs.setdefault(row["env"], make(row["env"]))
        history = [(s["text"], s["observation"]) for s in row["trajectory"]]
        messages = render_conversation(row["env"], env.reset(row["task_id"]), history[:-1], history[-1][0],
                                       variant=variant, icl=False)
        demos.append({"messages": messages, "reward": float(row["reward"]), "finished": True, "env": row["env"],
                      "task_id": row["task_id"], "seed": row["seed"]})
    return demos


def explore(env_name: str, config: Config, *, policy: Any, q_model: Any, method: str = "q",
            out: str | Path | None = None, limit: int | None = None, qmodel_name: str | None = None,
            **kwargs: Any) -> list[dict[str, Any]]:
    """Q-guided episodes of the **train** tasks (``finetune.st_episodes`` per task, episode k with seed + k),
    the agent picking among ``eval.n_candidates`` candidates with ``q_model``; their rows."""
    from qlib.evaluate import evaluate

    rows = []
    for k in range(config.finetune.st_episodes):
        run_config = with_overrides(config, {"seed": config.seed + k})
        rows += evaluate(env_name, "train", method, config=run_config, policy=policy, q_model=q_model, out=out,
                         limit=limit, qmodel_name=qmodel_name, **kwargs)
    return rows


# ----------------------------------------------------------------------------- trainers
def sft_config(config: Config) -> Config:
    """``config`` with its ``clone`` section (the SFT trainer's) set from ``finetune``: LoRA, no curve."""
    ft = config.finetune
    return with_overrides(config, {
        "clone.lora": True, "clone.lora_r": ft.lora_r, "clone.lora_alpha": ft.lora_alpha,
        "clone.learning_rate": ft.learning_rate, "clone.batch_size": ft.batch_size, "clone.epochs": ft.epochs,
        "clone.max_length": ft.max_length, "clone.bf16": ft.bf16, "clone.curve": []})


def dpo_config(config: Config) -> Config:
    """``config`` with its ``dpo`` section (the DPO trainer's) set from ``finetune`` for ETO."""
    ft = config.finetune
    return with_overrides(config, {
        "dpo.lora": True, "dpo.lora_r": ft.lora_r, "dpo.lora_alpha": ft.lora_alpha, "dpo.beta": ft.eto_beta,
        "dpo.learning_rate": ft.eto_learning_rate, "dpo.batch_size": ft.batch_size, "dpo.epochs": ft.epochs,
        "dpo.max_length": ft.max_length, "dpo.bf16": ft.bf16, "dpo.max_pairs": 0})


def finetune(row: str, data: Sequence[dict[str, Any]], out_dir: str | Path, config: Config, *,
             agent: str | Path | None = None, max_steps: int = -1) -> Path:
    """Train Table 2 row ``row`` (one of :data:`ROWS`) on ``data`` starting from ``agent`` (a model folder;
    None = the embedded base); return ``out_dir`` (reused when it already holds a finished model)."""
    from qlib.clone import train_clone
    from qlib.qmodel.dpo import CONFIG_FILE, train_dpo

    if row not in ROWS:
        raise ValueError(f"unknown fine-tuning row {row!r}; expected one of {', '.join(ROWS)}")
    out = Path(out_dir)
    if (out / CONFIG_FILE).is_file():
        return out
    if not data:
        raise ValueError(f"no training data for {row}")
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(list(data), out / DATA_FILE)
    if row == "eto":
        train_dpo(out / DATA_FILE, out, dpo_config(config), model_path=agent, max_steps=max_steps)
    else:
        train_clone(out / DATA_FILE, out, sft_config(config), model_path=agent, max_steps=max_steps)
    meta = json.loads((out / CONFIG_FILE).read_text())
    data_tokens = meta.get("tokens") if row != "eto" else pair_tokens(out, meta)
    epochs = config.finetune.epochs
    meta.update({"finetune": row, "data_rows": len(data), "data_tokens": data_tokens, "agent_dtype": agent_dtype(agent),
                 "train_tokens": data_tokens * epochs, "finetune_config": config.finetune.model_dump(mode="json")})
    atomic_write_text(out / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def agent_dtype(agent: str | Path | None) -> str | None:
    """The dtype the starting agent was trained in (``dtype`` of the clone's ``qlib_config.json``, beside or
    above its model folder), or None (the embedded base, or no record). A clone retrained in fp32 on a CPU
    without bf16 is a twin of the released bf16 one, not the same agent turn for turn (README, Stage 0), so a
    fine-tuned row says which it started from."""
    if agent is None:
        return None
    for folder in (Path(agent), Path(agent).parent):
        if (folder / "qlib_config.json").is_file():
            return json.loads((folder / "qlib_config.json").read_text()).get("dtype")
    return None


def pair_tokens(out: Path, meta: dict[str, Any]) -> int:
    """Tokens of the (prompt, chosen, rejected) sequences of the pairs in ``out/data.jsonl`` as trained."""
    from transformers import AutoTokenizer

    from qlib.qmodel.format import encode_pair

    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    total = 0
    for row in read_jsonl(out / DATA_FILE):
        enc = encode_pair(tokenizer, row, meta["max_length"])
        total += 2 * len(enc["prompt_ids"]) + len(enc["chosen_ids"]) + len(enc["rejected_ids"])
    return total


def cost(out_dir: str | Path) -> dict[str, Any]:
    """Training cost of a fine-tuned agent: rows, tokens (data and as trained) and wall seconds."""
    meta = json.loads((Path(out_dir) / "qlib_config.json").read_text())
    return {k: meta.get(k) for k in ("finetune", "data_rows", "data_tokens", "train_tokens", "train_seconds", "steps")}
