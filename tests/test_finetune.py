"""Table 2's fine-tuning rows (qlib.finetune): data from trees, the trainers on a tiny random model,
adapters in every backend, Q-guided self-training on train tasks only."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/llama_cpp load libgomp (see llamacpp_backend)

import json
import shutil
from pathlib import Path

import pytest
import torch

from qlib import finetune
from qlib.config import load_config
from qlib.testing.toy import RightDoorScorer, ToyEnv, ToyPolicy
from qlib.tree import write_tree
from test_pairs import hand_tree  # the hand-made toy tree of the pair tests

TRAIN = {"finetune.batch_size": 1, "finetune.epochs": 25, "finetune.learning_rate": 3e-3,
         "finetune.eto_learning_rate": 3e-3, "finetune.bf16": False, "finetune.max_length": 512,
         "clone.warmup_ratio": 0.0, "clone.lr_scheduler": "constant_with_warmup",
         "dpo.warmup_ratio": 0.0, "dpo.lr_scheduler": "constant_with_warmup"}


def write_trees(folder: Path) -> Path:
    for task in (0, 1):
        write_tree(hand_tree(task), folder)
    return folder


@pytest.fixture()
def tree_dir(tmp_path) -> Path:
    return write_trees(tmp_path / "trees")


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Path:
    """A tiny random Llama over SmolLM2's real tokenizer (llama.cpp's converter knows it), as a model folder."""
    from transformers import AutoTokenizer

    from qlib.provision import smollm2_dir
    from qlib.testing.tiny import tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    path = tmp_path_factory.mktemp("agent") / "model"
    model = tiny_llama(tokenizer, hidden=64, seed=0)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- data
def test_tree_data_of_each_row(tree_dir):
    config = load_config("smoke")
    every = finetune.tree_trajectories(tree_dir)
    # per tree: terminals 4 (1.0), 5 (0.0), 6 (truncated), 8 (1.0, rollout), 9 (0.9, rollout)
    assert sorted((r["task_id"], r["node_id"]) for r in every) == [(t, n) for t in (0, 1) for n in (4, 5, 6, 8, 9)]
    assert len(finetune.tree_trajectories([tree_dir / "toy_0.json"] * 2)) == 5  # the same turns count once
    rft = finetune.rft_rows(tree_dir, config)
    assert [(r["task_id"], r["node_id"]) for r in rft] == [(0, 4), (0, 8), (1, 4), (1, 8)]
    assert rft[0]["messages"][-1] == {"role": "assistant", "content": "Thought: t4\nAction: go[b]"}
    assert [m["role"] for m in rft[0]["messages"][-3:]] == ["assistant", "user", "assistant"]
    lenient = finetune.rft_rows(tree_dir, load_config("smoke", {"finetune.success_threshold": 0.5}))
    assert sorted(r["node_id"] for r in lenient if r["task_id"] == 0) == [4, 8, 9]
    evol = finetune.agentevol_rows(tree_dir, config)
    assert sorted((r["node_id"], r["weight"]) for r in evol if r["task_id"] == 0) == [(4, 1.0), (8, 1.0), (9, 0.9)]
    capped = finetune.agentevol_rows(tree_dir, load_config("smoke", {"finetune.agentevol_per_task": 2}))
    assert [(r["task_id"], r["node_id"]) for r in capped] == [(0, 4), (0, 8), (1, 4), (1, 8)]  # the 0.9 ones go
    eto = finetune.eto_pairs(tree_dir, config)
    assert [(r["chosen_id"], r["rejected_id"]) for r in eto] == [(4, 6), (4, 6)]
    assert eto[0]["chosen"][-1]["content"] == "Thought: t4\nAction: go[b]"


# ----------------------------------------------------------------------------- trainers
def sequence_logprob(model_dir: Path, messages: list[dict]) -> float:
    """Summed log-probability of the assistant turns of ``messages`` under the model in ``model_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlib.clone import IGNORE, encode_demo

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    [sample] = encode_demo(tokenizer, messages, 4096)
    ids, labels = torch.tensor([sample["input_ids"]]), torch.tensor(sample["labels"][1:])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logp[labels != IGNORE].sum())


@pytest.fixture(scope="module")
def rft(tmp_path_factory, agent) -> tuple[Path, list[dict]]:
    """The RFT adapter trained on the toy trees, and its rows."""
    config = load_config("smoke", TRAIN)
    rows = finetune.rft_rows(write_trees(tmp_path_factory.mktemp("trees")), config)
    return finetune.finetune("rft", rows, tmp_path_factory.mktemp("rft") / "rft", config, agent=agent), rows


def test_rft_raises_the_likelihood_of_the_successful_trajectories(rft, agent):
    from qlib.export import merged_dir

    config = load_config("smoke", TRAIN)
    out, rows = rft
    meta = json.loads((out / "qlib_config.json").read_text())
    assert meta["finetune"] == "rft" and meta["lora"] and meta["data_rows"] == 4
    assert meta["train_tokens"] == meta["data_tokens"] * 25 > 0 and meta["train_seconds"] > 0
    assert meta["agent_dtype"] == finetune.agent_dtype(agent)  # which twin of the clone it started from
    merged = merged_dir(out)
    before = sequence_logprob(agent, rows[0]["messages"])
    after = sequence_logprob(merged, rows[0]["messages"])
    assert after > before + 5, (before, after)
    assert finetune.finetune("rft", rows, out, config, agent=agent) == out  # reused, not retrained


def test_agentevol_weights_each_sequence_by_its_reward(tree_dir, agent, tmp_path):
    from qlib.export import merged_dir

    config = load_config("smoke", TRAIN)
    rows = finetune.agentevol_rows(tree_dir, config)
    zero = [dict(r, weight=0.0) for r in rows]  # weight 0: the adapter must not move
    short = load_config("smoke", {**TRAIN, "finetune.epochs": 2})
    out = finetune.finetune("agentevol", zero, tmp_path / "zero", short, agent=agent)
    messages = rows[0]["messages"]
    assert sequence_logprob(merged_dir(out), messages) == pytest.approx(sequence_logprob(agent, messages), abs=1e-3)
    out = finetune.finetune("agentevol", rows, tmp_path / "evol", config, agent=agent)
    assert sequence_logprob(merged_dir(out), messages) > sequence_logprob(agent, messages) + 5


def test_eto_grows_the_win_lose_margin_against_the_agent_before(tree_dir, agent, tmp_path):
    from qlib.export import merged_dir

    config = load_config("smoke", TRAIN)
    pairs = finetune.eto_pairs(tree_dir, config)
    out = finetune.finetune("eto", pairs, tmp_path / "eto", config, agent=agent)
    meta = json.loads((out / "qlib_config.json").read_text())
    assert meta["finetune"] == "eto" and meta["kind"] == "dpo" and meta["train_tokens"] > 0
    pair = pairs[0]

    def margin(model_dir: Path) -> float:
        return (sequence_logprob(model_dir, pair["prompt"] + pair["chosen"])
                - sequence_logprob(model_dir, pair["prompt"] + pair["rejected"]))

    assert margin(merged_dir(out)) > margin(agent) + 1.0


def test_finetune_refuses_empty_data_and_unknown_rows(tmp_path):
    config = load_config("smoke")
    with pytest.raises(ValueError, match="no training data"):
        finetune.finetune("rft", [], tmp_path / "x", config)
    with pytest.raises(ValueError, match="unknown"):
        finetune.finetune("sft", [{"messages": []}], tmp_path / "x", config)


def test_the_adapter_runs_in_every_backend_with_the_merged_weights_greedy_action(rft, agent):
    """peft adapter on the agent (hf), the merged folder (hf) and the exported GGUF (in-process llama.cpp)
    give the same greedy turn on the first toy prompt: the trained action, not the agent's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlib.agent.backends import make_policy
    from qlib.agent.prompts import render_messages
    from qlib.export import export_gguf, merged_dir

    out, rows = rft
    env = ToyEnv()
    messages = render_messages("toy", hand_tree()["task_observation"], [], icl=False)
    assert messages == rows[0]["messages"][:len(messages)]  # the trees' first state
    base = load_config("smoke", {"policy.max_tokens": 24, "policy.n_ctx": 1024}).policy
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(agent), out / "adapter")
    policies = {
        "hf adapter": make_policy(base.model_copy(update={"backend": "hf"}), "toy", model=adapter, tokenizer=tokenizer),
        "hf merged": make_policy(base.model_copy(update={"backend": "hf", "model": str(merged_dir(out))}), "toy"),
        "llamacpp": make_policy(base.model_copy(update={"backend": "llamacpp",
                                                        "model": str(export_gguf(out, "f32"))}), "toy"),
    }
    turns = {name: p.propose(messages, 1, temperature=0.0, action_space=env.valid_actions(), seed=0)[0]
             for name, p in policies.items()}
    assert {t.action for t in turns.values()} == {"go[a]"}, {k: t.raw for k, t in turns.items()}


def test_episode_rows_name_a_finetuned_agent_by_its_folder_not_its_path(rft, tmp_path):
    """Released episode rows resume in any checkout: the GGUF is recorded as finetuned/<folder>/<file>, and the
    agent's identity (its row, data and settings) tells two trainings apart."""
    from qlib.evaluate import row_meta

    out, _ = rft
    moved = tmp_path / "elsewhere" / out.name
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("merged", "*.gguf*"))

    def meta(folder):
        return row_meta("toy", "test", "greedy", 1, load_config("smoke", {"policy.model": str(folder / "model.gguf")}),
                        5, None)

    here, there = meta(out), meta(moved)
    assert here["policy"] == there["policy"] == f"finetuned/{out.name}/model.gguf"
    assert here["agent"] == there["agent"] and here["agent"].startswith("rft-")
    config = json.loads((moved / "qlib_config.json").read_text())
    (moved / "qlib_config.json").write_text(json.dumps({**config, "data_rows": config["data_rows"] + 1}))
    assert meta(moved)["agent"] != here["agent"]
    assert meta(tmp_path)["policy"] == str(tmp_path / "model.gguf")  # any other GGUF keeps its path


def test_a_finetuned_agents_gguf_is_exported_when_a_policy_first_loads_it(rft):
    from qlib.export import gguf_for

    out, _ = rft
    (out / "model.gguf").unlink(missing_ok=True)
    policy = load_config("smoke", {"policy.model": str(out / "model.gguf")}).policy
    assert gguf_for(policy) == out / "model.gguf" and (out / "model.gguf").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="neither"):
        gguf_for(load_config("smoke", {"policy.model": str(out / "other.gguf")}).policy)


# ----------------------------------------------------------------------------- Q-guided self-training
def test_self_training_explores_and_learns_from_train_tasks_only(tmp_path):
    config = load_config("smoke", {"finetune.st_episodes": 2, "eval.n_candidates": 4})
    env = ToyEnv()
    rows = finetune.explore("toy", config, policy=ToyPolicy(), q_model=RightDoorScorer(), env=env,
                            out=tmp_path / "explore.jsonl", qmodel_name="right-door")
    train = set(env.task_ids("train"))
    assert len(rows) == 2 * len(train) and {r["split"] for r in rows} == {"train"}
    assert {r["task_id"] for r in rows} == train and {r["seed"] for r in rows} == {config.seed, config.seed + 1}
    demos = finetune.episode_demos(rows, config)
    assert demos and len(demos) == sum(r["success"] for r in rows)
    from qlib.agent.prompts import render_conversation

    first = next(r for r in rows if r["success"])
    history = [(s["text"], s["observation"]) for s in first["trajectory"]]
    assert demos[0]["messages"] == render_conversation("toy", env.reset(first["task_id"]), history[:-1],
                                                       history[-1][0], icl=False)
    with pytest.raises(ValueError, match="train episodes"):
        finetune.episode_demos([dict(rows[0], split="test")], config)


def test_agent_dtype_reads_the_clones_record_beside_or_above_its_model(tmp_path):
    clone = tmp_path / "clone"
    (clone / "model").mkdir(parents=True)
    assert finetune.agent_dtype(clone / "model") is None  # no record
    (clone / "qlib_config.json").write_text(json.dumps({"dtype": "fp32"}))
    assert finetune.agent_dtype(clone / "model") == "fp32"  # a full clone: model/ under the clone's folder
    (clone / "model" / "qlib_config.json").write_text(json.dumps({"dtype": "bf16"}))
    assert finetune.agent_dtype(clone / "model") == "bf16"  # the folder's own record first
    assert finetune.agent_dtype(None) is None  # the embedded base
