"""Behaviour cloning (stage 0): expert demonstrations and the SFT trainer.

The demonstrations come from the real environments' scripted experts; the trainer runs on a tiny random
Llama (over SmolLM2's real tokenizer, so the demonstrations tokenise as they do for the real model).
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from qlib.agent.backends import make_policy
from qlib.agent.parse import parse_turn
from qlib.agent.prompts import render_conversation, render_messages
from qlib.config import PolicyConfig, load_config
from qlib.envs.registry import get_spec, make
from qlib.expert import demonstrations, manifest_path, play, write_demos
from qlib.io import read_jsonl

ENVS = ("webshop", "hotpotqa")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from qlib.provision import smollm2_dir

    return AutoTokenizer.from_pretrained(smollm2_dir())


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory, tokenizer) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("demos")
    files = {}
    for env in ENVS:
        files[env] = folder / f"{env}.jsonl"
        write_demos(files[env], env, 6, seed=1, mistake_rate=0.5, tokenizer=tokenizer)
    return files


# ----------------------------------------------------------------------------- demonstrations
@pytest.mark.parametrize("env_name", ENVS)
def test_demos_come_from_train_tasks_only(env_name, demo_files):
    env = make(env_name)
    train = set(env.task_ids("train"))
    held_out = set(env.task_ids("test")) | set(env.task_ids("valid"))
    rows = list(read_jsonl(demo_files[env_name]))
    manifest = json.loads(manifest_path(demo_files[env_name]).read_text())
    ids = [r["task_id"] for r in rows] + manifest["task_ids"] + [s["task_id"] for s in manifest["skipped"]]
    assert len(rows) == manifest["n"] == 6
    assert set(ids) <= train and not set(ids) & held_out
    with pytest.raises(ValueError, match="train"):
        write_demos(demo_files[env_name].with_name("x.jsonl"), env_name, 1, split="test")


@pytest.mark.parametrize("env_name", ENVS)
def test_every_demo_replays_to_its_recorded_reward(env_name, demo_files):
    env = make(env_name)
    for row in read_jsonl(demo_files[env_name]):
        env.reset(row["task_id"])
        result = None
        for action in row["actions"]:
            result = env.step(action)
        assert result is not None and result.done and result.reward == row["reward"] == 1.0


@pytest.mark.parametrize("env_name", ENVS)
def test_demos_are_live_episode_chats_with_canonical_informative_turns(env_name, demo_files):
    env = make(env_name)
    rows = list(read_jsonl(demo_files[env_name]))
    for row in rows:
        obs0 = env.reset(row["task_id"])
        history = []
        turns = [m["content"] for m in row["messages"][3:] if m["role"] == "assistant"]
        for turn, action in zip(turns, row["actions"]):
            parsed = parse_turn(turn, env_name)
            assert parsed.valid and parsed.text == turn and parsed.action == action and parsed.thought
            history.append((turn, env.step(action).observation))
        assert row["messages"] == render_conversation(env_name, obs0, history[:-1], history[-1][0], icl=False)
    thoughts = {parse_turn(m["content"], env_name).thought for r in rows for m in r["messages"][3:]
                if m["role"] == "assistant"}
    assert len(thoughts) > len(rows)  # not one fixed string
    assert any(r["mistake"] for r in rows) and not all(r["mistake"] for r in rows)


def test_mistake_demos_recover_and_thought_free_turns(tokenizer):
    env = make("webshop")
    spec = get_spec("webshop")
    task = env.task_ids("train")[0]
    clean = spec.demonstration(env, task, random.Random(0))
    wrong = spec.demonstration(env, task, random.Random(0), mistake=True)
    assert len(wrong) == len(clean) + 2 and wrong[-1] == clean[-1]
    assert [a for _, a in wrong].count("click[< Prev]") == 1
    row = play("webshop", env, task, wrong, thoughts=False)
    assert row["reward"] == 1.0
    assert all(m["content"].startswith("Thought:\nAction: ") for m in row["messages"][3:] if m["role"] == "assistant")


def test_demonstrations_are_reproducible():
    first = [r for r in demonstrations("hotpotqa", 4, seed=3, mistake_rate=0.5)]
    second = [r for r in demonstrations("hotpotqa", 4, seed=3, mistake_rate=0.5)]
    assert first == second


def test_webshop_expert_searches_with_words_of_the_instruction():
    env = make("webshop")
    rows = [r for r in demonstrations("webshop", 8) if "skipped" not in r]
    for row in rows:
        query = row["actions"][0][len("search["):-1]
        instruction = env.goals[row["task_id"]].instruction_text.lower()
        assert set(query.replace(",", " ").split()) <= set(instruction.replace(",", " ").split())
        assert "price lower than" not in query and len(query.split()) <= 40


# ----------------------------------------------------------------------------- tokenisation
def test_loss_mask_covers_exactly_the_assistant_turns(tokenizer, demo_files):
    from qlib.clone import IGNORE, encode_demo

    row = next(read_jsonl(demo_files["hotpotqa"]))
    [sample] = encode_demo(tokenizer, row["messages"], 4096)
    learned = [t for t, label in zip(sample["input_ids"], sample["labels"]) if label != IGNORE]
    assert [label for label in sample["labels"] if label != IGNORE] == learned
    expected = "".join(m["content"] + "<|im_end|>\n" for m in row["messages"][3:] if m["role"] == "assistant")
    assert tokenizer.decode(learned) == expected
    full = tokenizer.apply_chat_template(row["messages"], tokenize=False)
    assert tokenizer.decode(sample["input_ids"]) == full


def test_long_demos_are_windowed_without_cutting_a_turn(tokenizer, demo_files):
    from qlib.clone import IGNORE, encode_demo

    row = max(read_jsonl(demo_files["webshop"]), key=lambda r: len(r["messages"]))
    samples = encode_demo(tokenizer, row["messages"], 1200)
    assert len(samples) > 1
    learned = "".join(tokenizer.decode([t for t, lab in zip(s["input_ids"], s["labels"]) if lab != IGNORE])
                      for s in samples)
    expected = "".join(m["content"] + "<|im_end|>\n" for m in row["messages"][3:] if m["role"] == "assistant")
    assert learned == expected  # every turn learned exactly once, whole
    head = tokenizer.decode(samples[0]["input_ids"][:50])
    for sample in samples:
        assert len(sample["input_ids"]) <= 1200
        assert tokenizer.decode(sample["input_ids"][:50]) == head  # the instruction is never cut


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), bos_token_id=None,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_tiny_model_trained_on_a_few_demos_reproduces_their_actions(tiny_dir, demo_files, tmp_path):
    from transformers import AutoModelForCausalLM

    from qlib.clone import train_clone

    demos = tmp_path / "demos.jsonl"
    rows = [r for r in read_jsonl(demo_files["hotpotqa"]) if not r["mistake"]][:2]
    demos.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = load_config("smoke", {"clone.lora": False, "clone.learning_rate": 3e-3, "clone.batch_size": 1,
                                   "clone.epochs": 40, "clone.bf16": False, "clone.warmup_ratio": 0.0,
                                   "clone.lr_scheduler": "constant_with_warmup", "clone.curve": [1]})
    out = train_clone(demos, tmp_path / "clone", config, model_path=tiny_dir)
    meta = json.loads((out / "qlib_config.json").read_text())
    assert meta["kind"] == "sft" and meta["demos"] == 2 and not meta["lora"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "curve" / "1" / "model").is_dir()
    assert json.loads((out / "curve" / "1" / "qlib_config.json").read_text())["demos_seen"] == 1
    assert not (out / "trainer").exists()
    losses = [float(line.split(",")[2]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert losses[-1] < losses[0] / 5
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    policy = make_policy(PolicyConfig(backend="hf", max_tokens=64), "hotpotqa", model=model,
                         tokenizer=__import__("transformers").AutoTokenizer.from_pretrained(out / "tokenizer"))
    env = make("hotpotqa")
    for row in rows:
        obs0, history = env.reset(row["task_id"]), []
        for action in row["actions"]:
            messages = render_messages("hotpotqa", obs0, history, icl=False)
            [turn] = policy.propose(messages, 1, temperature=0.0, action_space=env.valid_actions())
            assert turn.action == action
            history.append((turn.text, env.step(action).observation))


def test_an_interrupted_training_resumes_from_its_last_checkpoint(tiny_dir, demo_files, tmp_path, monkeypatch):
    import qlib.clone as clone

    config = load_config("smoke", {"clone.batch_size": 1, "clone.bf16": False, "clone.lora": True})
    out = tmp_path / "clone"
    monkeypatch.setattr(clone, "CHECKPOINT_STEPS", 1)

    def crash(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(clone.CurveCallback, "on_step_end", crash)
        with pytest.raises(KeyboardInterrupt):
            clone.train_clone(demo_files["hotpotqa"], out, config, model_path=tiny_dir, limit=3)
    assert (out / "trainer" / "checkpoint-1").is_dir() and not (out / "qlib_config.json").exists()
    clone.train_clone(demo_files["hotpotqa"], out, config, model_path=tiny_dir, limit=3)
    meta = json.loads((out / "qlib_config.json").read_text())
    assert meta["resumed_from"] == "checkpoint-1" and meta["steps"] == meta["sequences"] == 3
    assert not (out / "trainer").exists()
    with open(out / "metrics.csv") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3]  # each step once
    assert meta["train_seconds"] > 0
    # a checkpoint grown from other starting weights at the same path (a fine-tuning row of a clone that was
    # retrained since, on a fresh machine) is not resumed
    import shutil

    from safetensors.torch import load_file, save_file

    base, grown = shutil.copytree(tiny_dir, tmp_path / "base"), tmp_path / "grown"
    with monkeypatch.context() as patch:
        patch.setattr(clone.CurveCallback, "on_step_end", crash)
        with pytest.raises(KeyboardInterrupt):
            clone.train_clone(demo_files["hotpotqa"], grown, config, model_path=base, limit=3)
    weights = load_file(base / "model.safetensors")
    first = next(iter(weights))
    save_file({**weights, first: weights[first] + 1e-3}, str(base / "model.safetensors"), metadata={"format": "pt"})
    clone.train_clone(demo_files["hotpotqa"], grown, config, model_path=base, limit=3)
    assert json.loads((grown / "qlib_config.json").read_text())["resumed_from"] is None
    # the released artifact: a bf16 adapter that restores into a clone folder only for the same settings
    from safetensors.torch import load_file

    released = clone.release(out, tmp_path / "release")
    tensors = load_file(released / "adapter" / "adapter_model.safetensors")
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())
    settings = config.clone.model_dump(mode="json")
    assert not clone.restore(released, tmp_path / "other", {**settings, "lora_r": 99}, 3)
    assert not clone.restore(released, tmp_path / "other", settings, 4)
    assert clone.restore(released, tmp_path / "restored", settings, 3)
    assert (tmp_path / "restored" / "tokenizer").is_dir()
    assert json.loads((tmp_path / "restored" / "qlib_config.json").read_text()) == meta
