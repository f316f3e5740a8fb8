"""Q-value models: formatting/truncation, the shared-prefix scorer, DPO with trl, QNet, CLI hooks.

Everything runs on a tiny random Llama over a tiny ChatML tokenizer built in code (qlib.testing.tiny).
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qlib.config import load_config
from qlib.qmodel import DPOQModel, load_q_model, preference_accuracy
from qlib.io import read_jsonl
from qlib.qmodel.format import encode, encode_pair, fit_pair
from qlib.testing.tiny import save_tiny, tiny_llama, tiny_tokenizer

INSTRUCTION = "Solve a question answering task with interleaving Thought, Action, Observation steps."
HEAD = [{"role": "user", "content": INSTRUCTION}, {"role": "assistant", "content": "OK"}]
ICL = [
    {"role": "user", "content": "Question: Were Scott Derrickson and Ed Wood of the same nationality?"},
    {"role": "assistant", "content": "Thought: I search. Action: Search[Scott Derrickson]"},
    {"role": "user", "content": "Observation: Scott Derrickson (born July 16, 1966) is an American director."},
    {"role": "assistant", "content": "Thought: done. Action: Finish[yes]"},
]


def history(task: str, steps: int) -> list[dict[str, str]]:
    """Instruction, OK, one ICL example, the task and ``steps`` (action, observation) steps."""
    messages = [*HEAD, *ICL, {"role": "user", "content": f"Question: {task}"}]
    for k in range(steps):
        messages += [
            {"role": "assistant", "content": f"Thought: step {k}. Action: Search[entity {k}]"},
            {"role": "user", "content": f"Observation: result {k}. " + "Scott Derrickson is American. " * 3},
        ]
    return messages


def pair_row(i: int, steps: int = 1, level: str = "step") -> dict:
    prompt = history(f"is item {i} blue?", steps)
    chosen = [{"role": "assistant", "content": f"Thought: check {i}. Action: Lookup[born {i}]"}]
    rejected = [{"role": "assistant", "content": "Thought: guess. Action: Finish[no]"}]
    if level == "trajectory":
        chosen = chosen + [{"role": "user", "content": "Observation: born 1966."}, chosen[0]]
        rejected = rejected + [{"role": "user", "content": "Observation: wrong."}, rejected[0]]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "env": "hotpotqa", "task_id": str(i),
            "depth": steps, "q_chosen": 1.0, "q_rejected": 0.0, "tree_file": "t.json", "level": level}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    rows = [pair_row(i, steps=i % 3) for i in range(4)]
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", rows)


def dpo_config(**overrides):
    base = {"dpo.batch_size": 2, "dpo.epochs": 3, "dpo.learning_rate": 5e-3, "dpo.max_length": 256,
            "dpo.bf16": False, "dpo.warmup_ratio": 0.0}
    return load_config("smoke", {**base, **overrides})


# --------------------------------------------------------------------------- format / truncation


def test_left_truncation_keeps_actions_instruction_and_task(tok):
    messages = history("were they both American?", steps=6)
    candidates = ["Thought: check. Action: Finish[yes]", "Thought: more. Action: Search[Ed Wood]"]
    full = encode(tok, messages, candidates, None)
    cut = encode(tok, messages, candidates, 200)
    assert len(full[0].prompt_ids) + max(len(e.completion_ids) for e in full) > 200
    for whole, short in zip(full, cut):
        assert short.completion_ids == whole.completion_ids  # every action token kept
        assert len(short.prompt_ids) + len(short.completion_ids) <= 200
    assert cut[0].dropped_messages > 0 and cut[0].cut_tokens == 0
    text = tok.decode(cut[0].prompt_ids)
    assert INSTRUCTION in text and "Question: were they both American?" in text
    assert "result 5." in text and "result 0." not in text  # newest step kept, oldest dropped
    assert "Scott Derrickson and Ed Wood" not in text  # the ICL example went first
    assert text.endswith("<|im_start|>assistant\n")


def test_token_level_cut_never_touches_completion(tok):
    messages = history("x?", steps=0)
    long_action = "Thought: " + "very long reasoning " * 10 + "Action: Finish[yes]"
    (whole,) = encode(tok, messages, [long_action], None)
    limit = len(whole.completion_ids) + 20
    (enc,) = encode(tok, messages, [long_action], limit)
    assert enc.cut_tokens > 0 and enc.completion_ids == whole.completion_ids
    assert len(enc.prompt_ids) + len(enc.completion_ids) == limit
    assert enc.prompt_ids == whole.prompt_ids[-20:] or enc.dropped_messages > 0
    assert tok.decode(enc.completion_ids).startswith(long_action)


def test_training_pair_of_long_trajectories_keeps_the_task_and_cuts_their_tails(tok):
    row = pair_row(0, steps=0, level="trajectory")
    (prompt,) = encode(tok, row["prompt"], ["x"], None)
    limit = 4 * len(prompt.prompt_ids) + 8  # a quarter of the window holds the whole task prompt
    step = [{"role": "user", "content": "Observation: " + "long page text " * 30},
            {"role": "assistant", "content": "Thought: next. Action: Search[more]"}]
    row["chosen"], row["rejected"] = row["chosen"] + step * 8, row["rejected"] + step * 12
    whole = encode(tok, row["prompt"], [row["chosen"], row["rejected"]], None)
    assert len(whole[0].completion_ids) > limit  # the old rule would have cut the prompt to MIN_PROMPT_TOKENS
    columns, cut = fit_pair(tok, row, limit)
    assert columns["prompt_ids"] == prompt.prompt_ids and "is item 0 blue?" in tok.decode(columns["prompt_ids"])
    room = limit - len(prompt.prompt_ids)
    for side, full in zip(("chosen", "rejected"), whole):
        assert columns[f"{side}_ids"] == full.completion_ids[:room]  # the trajectory's head, cut on the right
        assert columns[f"{side}_mask"] == full.completion_mask[:room]
    assert cut == sum(len(e.completion_ids) - room for e in whole) > 0
    assert encode_pair(tok, row, limit) == columns


def test_step_pairs_keep_every_action_token_under_the_pair_rule(tok):
    row = pair_row(1, steps=6)
    full = encode(tok, row["prompt"], [row["chosen"], row["rejected"]], None)
    limit = len(full[0].prompt_ids) // 2 + 40
    columns, cut = fit_pair(tok, row, limit)
    short = encode(tok, row["prompt"], [row["chosen"], row["rejected"]], limit)
    assert cut == 0 and columns["prompt_ids"] == short[0].prompt_ids  # the prompt cut from the left, as scored
    assert (columns["chosen_ids"], columns["rejected_ids"]) == (full[0].completion_ids, full[1].completion_ids)


def test_trajectory_completion_masks_observations(tok):
    completion = [{"role": "assistant", "content": "Action: Search[a]"}, {"role": "user", "content": "Observation: b"},
                  {"role": "assistant", "content": "Action: Finish[c]"}]
    (enc,) = encode(tok, history("q?", 1), [completion], None)
    scored = tok.decode([t for t, m in zip(enc.completion_ids, enc.completion_mask) if m])
    skipped = tok.decode([t for t, m in zip(enc.completion_ids, enc.completion_mask) if not m])
    assert "Search[a]" in scored and "Finish[c]" in scored and "Observation: b" in skipped
    assert scored.count("<|im_end|>") == 2


# --------------------------------------------------------------------------- scorer


CANDIDATES = ["Thought: check. Action: Finish[yes]", "Action: Search[Ed Wood]", "OK",
              "Thought: a much longer thought about the question. Action: Lookup[born]"]


@pytest.mark.parametrize("variant,normalise", [("sum", False), ("sum", True), ("official", False)])
def test_shared_prefix_scorer_equals_naive(tok, variant, normalise):
    q = DPOQModel(tiny_llama(tok, seed=1), tok, 0.1, ref=tiny_llama(tok, seed=2), variant=variant,
                  length_normalise=normalise, max_length=300)
    messages = history("is it blue?", 3)
    fast, naive = q.score(messages, CANDIDATES), q.score_naive(messages, CANDIDATES)
    assert fast == pytest.approx(naive, abs=1e-4)
    assert len(set(round(s, 6) for s in fast)) == len(CANDIDATES)
    assert q.scored_tokens > 0


def random_lora(tok):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(tok, seed=3), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(4)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.2)
    return model.eval()


def test_lora_scorer_equals_naive_with_adapter_disabled_reference(tok):
    q = DPOQModel(random_lora(tok), tok, 0.5)
    messages = history("is it red?", 2)
    fast = q.score(messages, CANDIDATES)
    assert fast == pytest.approx(q.score_naive(messages, CANDIDATES), abs=1e-4)
    assert max(abs(s) for s in fast) > 1e-3  # the adapter really changes the policy


def episode_prompts() -> list[list[dict[str, str]]]:
    """The prompts a Q model sees while acting: one episode step by step, the same prompt again, a second
    episode (another question: only the head is shared), then a step long enough to be left-truncated."""
    return ([history("is it blue?", k) for k in range(5)] + [history("is it blue?", 4)]
            + [history("who was born first?", k) for k in range(3)] + [history("who was born first?", 9)])


@pytest.mark.parametrize("lora", [False, True])
def test_kv_cache_across_episode_steps_equals_fresh_scoring(tok, lora):
    def make(reuse):
        if lora:
            return DPOQModel(random_lora(tok), tok, 0.5, max_length=400, reuse_cache=reuse)
        return DPOQModel(tiny_llama(tok, seed=1), tok, 0.1, ref=tiny_llama(tok, seed=2), max_length=400,
                         reuse_cache=reuse)

    cached, fresh = make(True), make(False)
    for messages in episode_prompts():
        scores = cached.score(messages, CANDIDATES)
        assert scores == pytest.approx(fresh.score(messages, CANDIDATES), abs=1e-4)
        assert scores == pytest.approx(cached.score_naive(messages, CANDIDATES), abs=1e-4)
    assert cached.encode(episode_prompts()[-1], CANDIDATES)[0].dropped_messages > 0  # the truncated step ran
    assert fresh.reused_tokens == 0 and cached.reused_tokens > 0
    # the tokens really run: each step's new turn and observation instead of the whole history
    assert cached.scored_tokens + cached.reused_tokens == fresh.scored_tokens
    assert cached.scored_tokens < 0.6 * fresh.scored_tokens


def test_qnet_kv_cache_across_episode_steps(tiny_dir):
    from qlib.qmodel.qnet import QNetModel, ValueHead
    from transformers import AutoModel

    torch.manual_seed(0)
    head = ValueHead(AutoModel.from_pretrained(tiny_dir).config.hidden_size, 16)
    model = QNetModel(AutoModel.from_pretrained(tiny_dir), head, tiny_tokenizer(), max_length=400)
    for messages in episode_prompts():
        with torch.inference_mode():
            fresh = model.head(model.features(messages, CANDIDATES)).tolist()
        assert model.score(messages, CANDIDATES) == pytest.approx(fresh, abs=1e-4)
    assert model.cache.reused_tokens > 0


def test_qnet_scores_the_state_a_turn_reached(tiny_dir, tok):
    """QLASS's look-ahead scores [turn, observation] with the real QNet: the features are those of the state after
    the observation, ready for the next turn (as a prompt renders it), not those of the turn alone."""
    from qlib.qmodel.format import encode
    from qlib.qmodel.qnet import QNetModel, ValueHead
    from transformers import AutoModel

    torch.manual_seed(0)
    backbone = AutoModel.from_pretrained(tiny_dir)
    model = QNetModel(backbone, ValueHead(backbone.config.hidden_size, 16), tok, max_length=400)
    messages = history("who?", 1)
    turn = {"role": "assistant", "content": CANDIDATES[0]}
    reached = [[turn, {"role": "user", "content": f"Observation: page {i}"}] for i in range(2)]
    scores = model.score_completions(messages, reached)
    assert len(scores) == 2 and scores[0] != pytest.approx(scores[1])  # the observation is read
    assert scores[0] != pytest.approx(model.score(messages, [CANDIDATES[0]])[0])
    state = tok.apply_chat_template([*messages, *reached[0]], add_generation_prompt=True, tokenize=False)
    [encoded] = encode(tok, messages, [reached[0]], None)
    assert tok.decode(encoded.prompt_ids + encoded.completion_ids) == state
    assert encoded.completion_mask[-1] == 0 and 1 in encoded.completion_mask  # only the turn is the agent's
    with pytest.raises(ValueError, match="assistant message"):
        model.score_completions(messages, [[{"role": "user", "content": "Observation: x"}]])


def test_hand_computed_implicit_q(tok):
    """β Σ (log πθ − log πref) with an explicit softmax over the full logits of prompt + action."""
    policy, ref, beta = tiny_llama(tok, seed=5), tiny_llama(tok, seed=6), 0.3
    messages = history("who?", 1)
    action = "Thought: I know. Action: Finish[Ed Wood]"
    prompt_text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    action_ids = tok(action + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + action_ids])
    total = 0.0
    with torch.no_grad():
        for sign, model in ((1.0, policy), (-1.0, ref)):
            logits = model(input_ids=ids).logits[0].double()
            for j, token in enumerate(action_ids):
                row = logits[len(prompt_ids) + j - 1]
                probs = torch.exp(row - row.max()) / torch.exp(row - row.max()).sum()
                total += sign * torch.log(probs[token]).item()
    (score,) = DPOQModel(policy, tok, beta, ref=ref).score(messages, [action])
    assert score == pytest.approx(beta * total, abs=1e-4)


# --------------------------------------------------------------------------- DPO training


def test_dpo_lora_learns_pairs_and_trl_scores_the_scorer_tokens(tok, tiny_dir, pairs_file, tmp_path):
    from qlib.qmodel.dpo import run_dpo
    from qlib.qmodel.scorer import candidate_logits

    config = dpo_config(**{"dpo.lora": True, "dpo.epochs": 3})
    out, trainer = run_dpo(pairs_file, tmp_path / "dpo", config, model_path=tiny_dir, max_steps=6)
    # trl trained on exactly the ids the scorer scores (left-truncated ones included), with the same mask,
    # and its precomputed reference log-probs equal the scorer's reference log-probs
    rows = list(read_jsonl(pairs_file))
    truncated = 0
    for index, row in enumerate(rows):
        batch = trainer.data_collator([trainer.train_dataset[index]])
        enc = encode(trainer.processing_class, row["prompt"], [row["chosen"], row["rejected"]], 256)
        truncated += enc[0].dropped_messages > 0
        for side, e in enumerate(enc):
            n = len(e.prompt_ids) + len(e.completion_ids)
            assert batch["input_ids"][side, :n].tolist() == e.prompt_ids + e.completion_ids
            assert batch["completion_mask"][side, :n].tolist() == [0] * len(e.prompt_ids) + e.completion_mask
        with trainer.model.disable_adapter():
            logits = candidate_logits(trainer.model, enc[0].prompt_ids, [e.completion_ids for e in enc])
        logp = torch.log_softmax(logits, -1)
        ref_sums = [sum(logp[i, j, t].item() for j, t in enumerate(e.completion_ids)) for i, e in enumerate(enc)]
        expected = [batch["ref_chosen_logps"].item(), batch["ref_rejected_logps"].item()]
        assert ref_sums == pytest.approx(expected, abs=1e-3)
    assert truncated == 2

    meta = json.loads((out / "qlib_config.json").read_text())
    assert meta["kind"] == "dpo" and meta["dtype"] == "fp32" and meta["beta"] == 0.1 and meta["lora"]
    assert meta["config"]["dpo"]["batch_size"] == 2 and (out / "adapter" / "adapter_model.safetensors").is_file()
    with open(out / "metrics.csv") as handle:
        metrics = list(csv.DictReader(handle))
    assert len(metrics) == 6 and {"loss", "rewards/accuracies", "rewards/margins", "rewards/chosen"} <= set(metrics[0])

    loaded = load_q_model(out)
    assert loaded.path == str(out) and loaded.kind == "dpo"
    result = preference_accuracy(loaded, pairs_file)
    assert result["accuracy"] == 1.0 and result["n"] == 4 and result["mean_margin"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "metrics.csv", "qlib_config.json", "tokenizer"]
    in_memory = DPOQModel(trainer.model, trainer.processing_class, 0.1, max_length=256)
    messages = rows[1]["prompt"]
    assert loaded.score(messages, CANDIDATES) == pytest.approx(in_memory.score(messages, CANDIDATES), abs=1e-5)


def test_an_interrupted_dpo_run_resumes_from_its_checkpoint_only_with_the_same_settings(
        tiny_dir, pairs_file, tmp_path, monkeypatch, caplog):
    from safetensors.torch import load_file

    import qlib.qmodel.dpo as dpo

    config = dpo_config(**{"dpo.lora": True, "dpo.epochs": 2})
    monkeypatch.setattr(dpo, "CHECKPOINT_STEPS", 1)

    def crash(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt

    def interrupted(out, run_config):
        with monkeypatch.context() as patch:
            patch.setattr(dpo.MetricsCallback, "on_step_end", crash, raising=False)
            with pytest.raises(KeyboardInterrupt):
                dpo.train_dpo(pairs_file, out, run_config, model_path=tiny_dir, max_steps=4)
        assert (out / "trainer" / "checkpoint-1" / dpo.TrainingClock.FILE).is_file()
        assert not (out / "qlib_config.json").exists()

    out = tmp_path / "resumed"
    interrupted(out, config)
    saved = json.loads((out / "trainer" / "checkpoint-1" / dpo.TrainingClock.FILE).read_text())
    dpo.train_dpo(pairs_file, out, config, model_path=tiny_dir, max_steps=4)
    meta = json.loads((out / "qlib_config.json").read_text())
    assert meta["resumed_from"] == "checkpoint-1" and meta["steps"] == 4
    assert meta["train_seconds"] >= saved["seconds"] > 0
    assert not (out / "trainer").exists()
    with open(out / "metrics.csv") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3, 4]  # each step once
    # the resumed run trained the same model as one that was never interrupted
    whole = dpo.train_dpo(pairs_file, tmp_path / "whole", config, model_path=tiny_dir, max_steps=4)
    resumed, straight = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (out, whole))
    assert resumed.keys() == straight.keys()
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in straight)

    # a checkpoint of other settings is never resumed: the run starts afresh
    other = tmp_path / "other"
    interrupted(other, config)
    with caplog.at_level("WARNING", logger="qlib.qmodel.dpo"):
        dpo.train_dpo(pairs_file, other, dpo_config(**{"dpo.lora": True, "dpo.epochs": 2, "dpo.beta": 0.5}),
                      model_path=tiny_dir, max_steps=4)
    assert json.loads((other / "qlib_config.json").read_text())["resumed_from"] is None
    assert "other settings or data" in caplog.text

    # nor one of other starting weights in the same folder (a clone retrained on a fresh machine)
    import shutil

    from safetensors.torch import save_file

    base = shutil.copytree(tiny_dir, tmp_path / "base")
    twin = tmp_path / "twin"
    with monkeypatch.context() as patch:
        patch.setattr(dpo.MetricsCallback, "on_step_end", crash, raising=False)
        with pytest.raises(KeyboardInterrupt):
            dpo.train_dpo(pairs_file, twin, config, model_path=base, max_steps=4)
    weights = load_file(base / "model.safetensors")
    first = next(iter(weights))
    save_file({**weights, first: weights[first] + 1e-3}, str(base / "model.safetensors"), metadata={"format": "pt"})
    dpo.train_dpo(pairs_file, twin, config, model_path=base, max_steps=4)
    assert json.loads((twin / "qlib_config.json").read_text())["resumed_from"] is None


def test_dpo_full_finetune_round_trip_and_trajectory_pairs(tok, tiny_dir, tmp_path):
    import shutil

    from qlib.qmodel import LazyQModel
    from qlib.qmodel.dpo import run_dpo

    rows = [pair_row(i, steps=1, level="trajectory") for i in range(2)] + [pair_row(9, steps=2)]
    pairs = write_jsonl(tmp_path / "traj.jsonl", rows)
    base = shutil.copytree(tiny_dir, tmp_path / "base")
    config = dpo_config(**{"dpo.lora": False, "dpo.learning_rate": 1e-3, "dpo.batch_size": 3})
    out, trainer = run_dpo(pairs, tmp_path / "full", config, model_path=base, max_steps=3)
    assert (out / "model" / "model.safetensors").is_file()
    loaded = load_q_model(out)
    cache = tmp_path / "margins.jsonl"
    result = preference_accuracy(loaded, pairs, cache=cache)
    assert result["accuracy"] == 1.0 and set(result["by_level"]) == {"step", "trajectory"}
    ref = type(trainer.model).from_pretrained(base)
    in_memory = DPOQModel(trainer.model, trainer.processing_class, 0.1, ref=ref, max_length=256)
    messages = rows[0]["prompt"]
    assert loaded.score(messages, CANDIDATES) == pytest.approx(in_memory.score(messages, CANDIDATES), abs=1e-5)

    shutil.move(base, tmp_path / "gone")  # its base gone (a fresh machine without the clone)
    with pytest.raises(FileNotFoundError, match="rebuild it first"):
        load_q_model(out)
    lazy = LazyQModel(out)  # cached margins still read back: figures rerun without the weights
    assert preference_accuracy(lazy, pairs, cache=cache) == result and not lazy.loaded
    with pytest.raises(FileNotFoundError, match="rebuild it first"):
        lazy.score(messages, CANDIDATES)
    shutil.move(tmp_path / "gone", base)  # back: the lazy model loads on first use and scores like the eager one
    assert lazy.score(messages, CANDIDATES) == pytest.approx(loaded.score(messages, CANDIDATES), abs=1e-6)
    assert lazy.loaded and lazy.kind == "dpo"
    with pytest.raises(FileNotFoundError, match="not a saved qlib Q model"):
        LazyQModel(tmp_path)


def test_bf16_detection_returns_a_bool():
    from qlib.qmodel.dpo import bf16_supported

    assert isinstance(bf16_supported(), bool)


# --------------------------------------------------------------------------- QNet


def qnet_rows() -> list[dict]:
    rows = []
    for i in range(6):
        for j, action in enumerate(["Action: Search[a]", "Action: Finish[b]"]):
            q = ((i * 2 + j) % 5) / 4
            rows.append({"prompt": history(f"task {i}?", i % 2), "completion": [{"role": "assistant", "content": action}],
                         "q": q, "q_raw": q, "env": "hotpotqa", "task_id": str(i)})
    return rows


def test_qnet_training_features_share_tree_histories_and_equal_fresh_ones(tiny_dir):
    """Rows of a tree (a child's prompt = its parent's + a turn and an observation), shuffled: the features of
    every row equal a fresh encoding of its prompt, while fewer tokens run than prompts hold."""
    import random

    from transformers import AutoModel

    from qlib.qmodel.qnet import QNetModel, ValueHead, cached_features

    rows = []
    for task in ("red?", "blue?"):
        for depth in range(3):
            for branch in range(2 if depth else 1):
                prompt = history(task, depth)
                if depth and branch:  # a sibling state: same parent, another last observation
                    prompt = prompt[:-1] + [{"role": "user", "content": f"Observation: other {depth}."}]
                for action in ("Action: Search[a]", "Action: Finish[b]"):
                    rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": action}]})
    random.Random(0).shuffle(rows)
    torch.manual_seed(0)
    backbone = AutoModel.from_pretrained(tiny_dir)
    model = QNetModel(backbone, ValueHead(backbone.config.hidden_size, 8), tiny_tokenizer(), max_length=400)
    features, _ = cached_features(model, rows)
    run = model.scored_tokens  # tokens the backbone ran for all rows
    with torch.inference_mode():
        fresh = torch.stack([model.features(r["prompt"], [r["completion"]])[0] for r in rows])
    assert torch.allclose(features, fresh, atol=1e-4)
    prompt_tokens = sum(len(model.encode(p["prompt"], ["x"])[0].prompt_ids)
                        for p in {json.dumps(r["prompt"]): r for r in rows}.values())
    completion_tokens = sum(len(model.encode(r["prompt"], [r["completion"]])[0].completion_ids) for r in rows)
    assert run < 0.6 * (prompt_tokens + completion_tokens)


def test_qnet_overfits_and_round_trips(tiny_dir, tmp_path):
    from qlib.qmodel.qnet import run_qnet

    rows = qnet_rows()
    data = write_jsonl(tmp_path / "qnet.jsonl", rows)
    config = load_config("smoke", {"qnet.epochs": 300, "qnet.hidden": 64, "qnet.learning_rate": 3e-3,
                                   "qnet.batch_size": 12, "dpo.max_length": 256})
    out, model = run_qnet(data, tmp_path / "qnet", config, model_path=tiny_dir)
    meta = json.loads((out / "qlib_config.json").read_text())
    assert meta["kind"] == "qnet" and meta["final_mse"] < 1e-3
    loaded = load_q_model(out)
    assert loaded.kind == "qnet"
    row = rows[2]
    actions = ["Action: Search[a]", "Action: Finish[b]"]
    assert loaded.score(row["prompt"], actions) == pytest.approx(model.score(row["prompt"], actions), abs=1e-6)
    predicted = [loaded.score_completions(r["prompt"], [r["completion"]])[0] for r in rows]
    assert predicted == pytest.approx([r["q"] for r in rows], abs=0.05)
    # batched shared-prefix features equal one full forward per sequence
    from qlib.qmodel.qnet import full_hidden

    with torch.no_grad():
        full = full_hidden(loaded.backbone, loaded.encode(row["prompt"], actions))
    assert torch.allclose(loaded.features(row["prompt"], actions), full, atol=1e-4)


def test_qnet_finetuned_backbone_round_trip(tiny_dir, tmp_path):
    from qlib.qmodel.qnet import run_qnet

    data = write_jsonl(tmp_path / "qnet.jsonl", qnet_rows()[:4])
    config = load_config("smoke", {"qnet.epochs": 1, "qnet.hidden": 32, "qnet.freeze_backbone": False})
    out, model = run_qnet(data, tmp_path / "qnet", config, model_path=tiny_dir)
    assert (out / "backbone" / "model.safetensors").is_file()
    messages, actions = qnet_rows()[0]["prompt"], ["Action: Search[a]", "x"]
    assert load_q_model(out).score(messages, actions) == pytest.approx(model.score(messages, actions), abs=1e-5)


# --------------------------------------------------------------------------- CLI


def test_cli_import_is_light():
    code = "import sys, qlib.qmodel.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_cli_trains_a_qnet(tiny_dir, tmp_path):
    from qlib.qmodel import cli

    data = write_jsonl(tmp_path / "rows.jsonl", qnet_rows()[:4])
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--set", action="append", default=[])
    cli.add_arguments(parser)
    args = parser.parse_args(["--pairs", str(data), "--out", str(tmp_path / "cli"), "--kind", "qnet",
                              "--model", str(tiny_dir), "--set", "qnet.hidden=16"])
    assert cli.run(args) == 0
    assert json.loads((tmp_path / "cli" / "qlib_config.json").read_text())["config"]["qnet"]["hidden"] == 16


def test_bench_scoring_runs_on_a_tiny_model(tok):
    from qlib.bench.qmodel import bench_scoring

    result = bench_scoring(tiny_llama(tok), tok, n_context=150)
    assert result["context_tokens"] >= 150 and len(result["candidate_tokens"]) == 5
    assert result["max_abs_diff_vs_naive"] < 1e-4 and result["speedup_vs_naive"] > 0


def test_bench_episode_cache_runs_on_a_tiny_model(tok):
    from qlib.bench.qmodel import bench_episode_cache

    result = bench_episode_cache(tiny_llama(tok), tok, steps=4, step_tokens=40)
    assert result["max_abs_diff"] < 1e-4 and result["tokens_run_ratio"] < 0.7 and result["speedup"] > 0


def test_bench_qnet_features_runs_on_a_tiny_model(tok):
    """The shared-history feature pass gives the features of encoding every prompt whole, row for row."""
    from qlib.bench.qmodel import bench_qnet_features

    result = bench_qnet_features(tiny_llama(tok), tok, depth=2, branching=2, step_tokens=30)
    assert result["rows"] > result["distinct_prompts"] > 1
    assert result["max_abs_diff"] < 1e-4 and result["speedup"] > 0


def test_truncation_with_system_message_and_no_instruction_head(tok):
    from qlib.qmodel.format import droppable_units

    steps = [{"role": "assistant", "content": "Action: Search[a]"}, {"role": "user", "content": "Observation: b"}] * 3
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Question: q?"}, *steps]
    assert droppable_units(messages) == [(2, 3), (4, 5)]  # (action, observation) steps; the newest one stays
    plain = [{"role": "user", "content": "Question: q?"}, *steps]
    assert droppable_units(plain) == [(1, 2), (3, 4)]


@pytest.mark.parametrize("precompute", [False, True])
def test_shared_prompt_dpo_loss_and_gradients_equal_trls_full_sequences(tiny_dir, tmp_path, precompute):
    """qlib's DPO loss encodes each pair's prompt once; trl's runs prompt + chosen and prompt + rejected as two
    full sequences. Same loss and same gradient, on step and trajectory pairs of different prompt lengths."""
    from qlib.bench.qmodel import full_sequence_trainer
    from qlib.qmodel.dpo import run_dpo

    rows = [pair_row(i, steps=i % 3) for i in range(3)] + [pair_row(7, steps=1, level="trajectory")]
    pairs = write_jsonl(tmp_path / "mixed.jsonl", rows)
    config = dpo_config(**{"dpo.lora": True, "dpo.batch_size": 4, "dpo.epochs": 1 + precompute})
    _, trainer = run_dpo(pairs, tmp_path / "dpo", config, model_path=tiny_dir, max_steps=2)  # adapter moved off zero
    assert trainer.args.precompute_ref_log_probs == precompute
    trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    losses, grads = [], []
    for full_sequences in (False, True):  # qlib's loss, then trl's (the switch `make bench` times against)
        if full_sequences:
            full_sequence_trainer(trainer)
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, batch, False)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]))
        assert ("entropy" in trainer._metrics["train"]) == full_sequences  # only trl's own loss logs entropy
    assert losses[0] == pytest.approx(losses[1], abs=1e-5) and losses[0] != pytest.approx(0.6931, abs=1e-4)
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_recorded_steps_rebuild_the_prompt_of_steps_with_a_choice():
    from qlib.bench.qmodel import recorded_steps

    first = {"text": "Thought: t1\nAction: search[a]", "observation": "OBS-ONE", "candidates": [{"text": "x"}]}
    second = {"text": "Thought: t2\nAction: click[b]", "observation": "OBS-TWO",
              "candidates": [{"text": "Thought: t2\nAction: click[b]"}, {"text": "Thought: u\nAction: click[c]"}]}
    rows = [{"task_id": 0, "trajectory": [first, second]}]
    steps = recorded_steps(rows, "webshop", limit=5)
    assert len(steps) == 1  # the first step had one candidate: no choice to compare
    messages, texts = steps[0]
    assert texts == ["Thought: t2\nAction: click[b]", "Thought: u\nAction: click[c]"]
    joined = " ".join(m["content"] for m in messages)
    assert "OBS-ONE" in joined and "search[a]" in joined and "OBS-TWO" not in joined
    assert messages[-1]["role"] == "user"
    assert recorded_steps(rows, "webshop", limit=0) == []


def test_qnet_features_resume_from_a_checkpoint_and_ignore_a_bad_one(tiny_dir, tmp_path):
    """An interrupted feature pass resumes after the prompts it saved (only the rest run again); a checkpoint
    of other rows, of other backbone weights at the same path, or a corrupt file is ignored and the features
    are computed afresh."""
    from transformers import AutoModel

    from qlib.qmodel.qnet import QNetModel, ValueHead, cached_features

    rows = qnet_rows()
    torch.manual_seed(0)
    backbone = AutoModel.from_pretrained(tiny_dir)
    model = QNetModel(backbone, ValueHead(backbone.config.hidden_size, 8), tiny_tokenizer(), max_length=400)
    whole, _ = cached_features(model, rows)
    prompts = len({json.dumps(r["prompt"]) for r in rows})
    checkpoint = tmp_path / "features.partial.pt"

    class Interrupt(Exception):
        pass

    real, calls = model.features, []

    def failing(*args, **kwargs):
        if len(calls) == 4:
            raise Interrupt
        calls.append(1)
        return real(*args, **kwargs)

    model.features = failing
    with pytest.raises(Interrupt):
        cached_features(model, rows, checkpoint=checkpoint, every=2)
    assert checkpoint.exists()
    saved_seconds = torch.load(checkpoint, weights_only=True)["seconds"]
    assert saved_seconds > 0  # the interrupted execution's feature time travels with its features
    calls.clear()
    model.features = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    resumed, seconds = cached_features(model, rows, checkpoint=checkpoint, every=2)
    assert len(calls) == prompts - 4  # the 4 saved prompts were not encoded again
    assert torch.allclose(resumed, whole, atol=1e-4)
    assert seconds > saved_seconds  # cumulative compute: the earlier execution's seconds plus this one's

    calls.clear()
    other = [dict(r, completion=[{"role": "assistant", "content": "Action: Search[z]"}]) for r in rows]
    cached_features(model, other, checkpoint=checkpoint)  # the saved features belong to other actions
    assert len(calls) == prompts
    cached_features(model, rows, checkpoint=checkpoint, every=2)  # a complete checkpoint of these rows ...
    calls.clear()
    with torch.no_grad():
        next(backbone.parameters()).view(-1)[0] += 1e-3  # ... is not this backbone's: a retrained twin, same path
    cached_features(model, rows, checkpoint=checkpoint)
    assert len(calls) == prompts
    checkpoint.write_bytes(b"not a torch file")
    with torch.no_grad():
        next(backbone.parameters()).view(-1)[0] -= 1e-3
    calls.clear()
    assert torch.allclose(cached_features(model, rows, checkpoint=checkpoint)[0], whole, atol=1e-4)
    assert len(calls) == prompts


def test_pair_margins_are_cached_per_saved_model_and_resume(tmp_path):
    """Margins are appended as they are scored (ScoreCache); the same saved model reads them back instead of scoring,
    a retrained model (another qlib_config.json) or an in-memory one scores afresh, a cut-off line is skipped."""
    from qlib.qmodel.api import pair_margins

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "qlib_config.json").write_text('{"train_seconds": 1}')

    class Counting:
        def __init__(self, path):
            self.path, self.calls = path, 0

        def score_completions(self, prompt, completions):
            self.calls += 1
            return [len(completions[0][0]["content"]), len(completions[1][0]["content"])]

    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "a" * (i + 2)}],
             "rejected": [{"role": "assistant", "content": "b"}]} for i in range(4)]
    cache = tmp_path / "margins" / "valid_step.jsonl"
    model = Counting(str(folder))
    assert pair_margins(model, rows[:2], cache=cache) == [1, 2] and model.calls == 2
    with open(cache, "a") as handle:
        handle.write('{"key": "cut off')  # a crash mid-line
    assert pair_margins(model, rows, cache=cache) == [1, 2, 3, 4] and model.calls == 4  # only the 2 new pairs
    again = Counting(str(folder))
    assert pair_margins(again, rows, cache=cache) == [1, 2, 3, 4] and again.calls == 0
    (folder / "qlib_config.json").write_text('{"train_seconds": 2}')  # retrained in the same folder
    retrained = Counting(str(folder))
    assert pair_margins(retrained, rows, cache=cache) == [1, 2, 3, 4] and retrained.calls == 4
    in_memory = Counting("")
    pair_margins(in_memory, rows, cache=tmp_path / "other.jsonl")
    assert in_memory.calls == 4 and not (tmp_path / "other.jsonl").exists()
