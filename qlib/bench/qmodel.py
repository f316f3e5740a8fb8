"""``python -m qlib bench --only qmodel``: scorer and DPO speed with the real SmolLM2-135M on this CPU.

* scoring n=5 candidates (~30 tokens) after a ~1024-token context: shared-prefix KV cache vs the naive
  per-candidate forward (target ≥ 4.5× faster) and vs one forward of the context through both models
  (target ≤ 1.2×; the candidates' full-vocabulary logits put the floor near 1.17× for this shape);
* one episode's scoring (8 steps, the history growing to ~1.5k tokens): the KV cache kept across steps
  (:class:`~qlib.qmodel.scorer.PrefixCache`) vs re-encoding the whole history at every step;
* the QNet's training features of one tree's rows: histories shared in trie order vs every prompt whole;
* DPO seconds per pair at 256 and 512 tokens, fp32 and bf16 autocast (LoRA, batch 2, a few steps).

``--only q_precision`` (:func:`bench_q_precision`) scores recorded steps of the released WebShop ``q``
episodes with the released step Q model in fp32 and in bf16: the speed ratio and how often bf16 picks
another candidate than fp32 (a precision that changes the argmax changes the method, not only its speed).
"""
from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

CANDIDATES = [
    "Thought: The paragraph says he was born in 1966, so I should check Ed Wood next. Action: Search[Ed Wood]",
    "Thought: Both men are American filmmakers, so the answer is yes. Action: Finish[yes]",
    "Thought: I need the nationality of Scott Derrickson first. Action: Lookup[nationality]",
    "Thought: Maybe the director page lists his citizenship somewhere. Action: Search[Scott Derrickson]",
    "Thought: I am not sure; the first result was ambiguous, try the film. Action: Search[Sinister film]",
]
OBSERVATION = (
    "Observation: Scott Derrickson (born July 16, 1966) is an American director, screenwriter and producer. "
    "He lives in Los Angeles, California. He is best known for directing horror films such as Sinister, "
    "The Exorcism of Emily Rose, and Deliver Us From Evil, as well as the 2016 Marvel film Doctor Strange."
)


def timed(fns: dict[str, Callable[[], Any]], repeats: int = 3) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` interleaved rounds (after one warm-up round).

    Interleaving and taking the minimum keeps the ratios fair when other processes share the CPU.
    """
    best = {name: float("inf") for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def context(tokenizer: Any, target: int) -> list[dict[str, str]]:
    """A ReAct-style chat history of ``target`` prompt tokens (give or take one): HotPotQA-like steps, the
    last observation lengthened word by word to reach the target."""
    from qlib.qmodel.format import encode

    def length(messages: list[dict[str, str]]) -> int:
        return len(encode(tokenizer, messages, ["x"], None)[0].prompt_ids)

    messages = [
        {"role": "user", "content": "Solve a question answering task with interleaving Thought, Action, Observation steps."},
        {"role": "assistant", "content": "OK"},
        {"role": "user", "content": "Question: Were Scott Derrickson and Ed Wood of the same nationality?"},
    ]
    k = 0
    while True:
        step = [{"role": "assistant", "content": f"Thought: step {k}, keep reading. Action: Lookup[born {k}]"},
                {"role": "user", "content": OBSERVATION}]
        if length(messages + step) > target:
            break
        messages += step
        k += 1
    words = iter((OBSERVATION.split() * 100)[1:])
    while length(messages) < target:
        messages[-1] = {**messages[-1], "content": messages[-1]["content"] + " " + next(words)}
    return messages


def bench_scoring(model: Any, tokenizer: Any, n_context: int = 1024) -> dict[str, Any]:
    """Shared-prefix scoring vs naive vs context-only forward (fp32, two model copies)."""
    from qlib.qmodel.scorer import DPOQModel

    ref = copy.deepcopy(model)
    q = DPOQModel(model, tokenizer, 0.1, ref=ref, max_length=None, reuse_cache=False)  # one step, timed again and again
    messages = context(tokenizer, n_context)
    encoded = q.encode(messages, CANDIDATES)
    prompt = torch.tensor([encoded[0].prompt_ids])
    with torch.inference_mode():
        times = timed({
            "shared": lambda: q.score(messages, CANDIDATES),
            "naive": lambda: q.score_naive(messages, CANDIDATES),
            "context": lambda: [m(input_ids=prompt, logits_to_keep=1) for m in (model, ref)],
            "context_full_logits": lambda: [m(input_ids=prompt) for m in (model, ref)],
        }, repeats=2)
        shared_s, naive_s, context_s, context_full_logits_s = times.values()
        diff = max(abs(a - b) for a, b in zip(q.score(messages, CANDIDATES), q.score_naive(messages, CANDIDATES)))
    return {
        "context_tokens": len(encoded[0].prompt_ids),
        "candidate_tokens": [len(e.completion_ids) for e in encoded],
        "shared_prefix_s": round(shared_s, 4),
        "naive_s": round(naive_s, 4),
        "context_forward_both_models_s": round(context_s, 4),
        "context_forward_both_models_full_logits_s": round(context_full_logits_s, 4),
        "speedup_vs_naive": round(naive_s / shared_s, 2),
        "ratio_vs_context_forward": round(shared_s / context_s, 3),
        "target_speedup_met": naive_s / shared_s >= 4.5,
        "target_context_ratio_met": shared_s / context_s <= 1.2,
        "max_abs_diff_vs_naive": diff,
    }


def episode_histories(tokenizer: Any, steps: int, step_tokens: int) -> list[list[dict[str, str]]]:
    """The prompts of one episode: a ~200-token head, then one (turn, observation) of ~``step_tokens`` per step."""
    head = context(tokenizer, 200)
    observation = " ".join((OBSERVATION.split() * 50)[: int(step_tokens * 0.6)])
    histories = []
    for k in range(steps):
        histories.append(head)
        head = head + [{"role": "assistant", "content": CANDIDATES[k % len(CANDIDATES)]},
                       {"role": "user", "content": "Observation: " + observation}]
    return histories


def bench_episode_cache(model: Any, tokenizer: Any, steps: int = 8, step_tokens: int = 180) -> dict[str, Any]:
    """Scoring every step of one episode with the KV cache kept across steps vs without (two model copies)."""
    from qlib.qmodel.scorer import DPOQModel

    ref = copy.deepcopy(model)
    histories = episode_histories(tokenizer, steps, step_tokens)

    def episode(reuse: bool) -> tuple[float, list[list[float]], int]:
        q = DPOQModel(model, tokenizer, 0.1, ref=ref, max_length=None, reuse_cache=reuse)
        start = time.perf_counter()
        scores = [q.score(messages, CANDIDATES) for messages in histories]
        return time.perf_counter() - start, scores, q.scored_tokens

    with torch.inference_mode():
        episode(True)  # warm-up
        runs = {reuse: min((episode(reuse) for _ in range(2)), key=lambda r: r[0]) for reuse in (True, False)}
    (cached_s, cached, cached_tokens), (fresh_s, fresh, fresh_tokens) = runs[True], runs[False]
    return {
        "steps": steps,
        "final_context_tokens": len(DPOQModel(model, tokenizer, 0.1, ref=ref).encode(histories[-1], ["x"])[0].prompt_ids),
        "cached_s": round(cached_s, 3),
        "recomputed_s": round(fresh_s, 3),
        "speedup": round(fresh_s / cached_s, 2),
        "tokens_run_ratio": round(cached_tokens / fresh_tokens, 3),
        "max_abs_diff": max(abs(a - b) for x, y in zip(cached, fresh) for a, b in zip(x, y)),
    }


def tree_rows(tokenizer: Any, depth: int, branching: int, step_tokens: int) -> list[dict[str, Any]]:
    """QNet rows of one search tree: every node's state (a ~200-token head, then one (turn, observation) of
    ~``step_tokens`` per level, the observation different on every branch) with two candidate actions."""
    observation = (OBSERVATION.split() * 50)[: int(step_tokens * 0.6)]
    level, rows = [context(tokenizer, 200)], []
    for d in range(depth + 1):
        for prompt in level:
            rows += [{"prompt": prompt, "completion": [{"role": "assistant", "content": c}]} for c in CANDIDATES[:2]]
        level = [prompt + [{"role": "assistant", "content": CANDIDATES[b % len(CANDIDATES)]},
                           {"role": "user", "content": f"Observation: branch {b} at {d}: " + " ".join(observation)}]
                 for prompt in level for b in range(branching)] if d < depth else []
    return rows


def bench_qnet_features(model: Any, tokenizer: Any, depth: int = 3, branching: int = 2,
                        step_tokens: int = 180) -> dict[str, Any]:
    """The QNet's training features of one tree's rows: :func:`qlib.qmodel.qnet.cached_features` (distinct
    prompts in trie order, shared histories' KV kept) vs encoding every distinct prompt whole."""
    import random

    from qlib.qmodel.qnet import QNetModel, ValueHead, cached_features

    rows = tree_rows(tokenizer, depth, branching, step_tokens)
    random.Random(0).shuffle(rows)
    qnet = QNetModel(model.model, ValueHead(model.config.hidden_size, 8), tokenizer)
    groups: dict[str, list[int]] = {}  # distinct prompt -> its rows
    for i, row in enumerate(rows):
        groups.setdefault(json.dumps(row["prompt"]), []).append(i)
    out: dict[str, torch.Tensor] = {}

    def shared() -> None:
        out["shared"] = cached_features(qnet, rows)[0]

    def whole() -> None:  # one pass per distinct prompt, no cache; rows in groups' order
        out["whole"] = torch.cat([qnet.features(rows[ix[0]]["prompt"], [rows[i]["completion"] for i in ix])
                                  for ix in groups.values()])

    with torch.inference_mode():
        best = timed({"shared": shared, "whole": whole}, repeats=1)
    order = [i for ix in groups.values() for i in ix]
    return {"distinct_prompts": len(groups), "rows": len(rows), "shared_s": round(best["shared"], 3),
            "whole_s": round(best["whole"], 3), "speedup": round(best["whole"] / best["shared"], 2),
            "max_abs_diff": float((out["shared"][order] - out["whole"]).abs().max())}


def dpo_pairs(tokenizer: Any, total_tokens: int, n: int) -> list[dict[str, Any]]:
    """``n`` pairs of about ``total_tokens`` tokens (prompt + longest completion)."""
    prompt = context(tokenizer, total_tokens - 36)
    return [{"prompt": prompt, "chosen": [{"role": "assistant", "content": CANDIDATES[i % 5]}],
             "rejected": [{"role": "assistant", "content": CANDIDATES[(i + 1) % 5]}]} for i in range(n)]


class StepTimer:
    """Trainer callback recording the wall time of each optimiser step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0.0

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter() - self.start)


def full_sequence_trainer(trainer: Any) -> Any:
    """``trainer`` switched to trl's own loss: prompt + chosen and prompt + rejected as two full sequences."""
    from trl import DPOTrainer

    def strip(inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in inputs.items() if k != "prompt_lengths"}

    trainer._compute_loss = lambda model, inputs, r: DPOTrainer._compute_loss(trainer, model, strip(inputs), r)
    trainer.compute_ref_log_probs = lambda model, inputs: DPOTrainer.compute_ref_log_probs(trainer, model, strip(inputs))
    return trainer


def bench_dpo(model_dir: str, tokenizer: Any, total_tokens: int, bf16: bool, steps: int = 3,
              shared_prompt: bool = True) -> dict[str, Any]:
    """Seconds per pair of LoRA DPO steps (batch 2) at ``total_tokens`` tokens per sequence, with qlib's
    shared-prompt loss or (``shared_prompt=False``) trl's two full sequences per pair."""
    from transformers import AutoModelForCausalLM, TrainerCallback

    from qlib.config import load_config
    from qlib.qmodel.dpo import build_dataset, longest_pair, make_trainer

    config = load_config("cpu", {"dpo.batch_size": 2, "dpo.epochs": 1, "dpo.max_length": total_tokens + 64})
    dataset, _ = build_dataset(tokenizer, dpo_pairs(tokenizer, total_tokens, 2 * steps), total_tokens)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    timer = StepTimer()
    callback = type("Timer", (TrainerCallback,), {"on_step_begin": timer.on_step_begin, "on_step_end": timer.on_step_end})
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(model, tokenizer, dataset, config, Path(tmp), bf16=bf16, max_steps=steps)
        if not shared_prompt:
            full_sequence_trainer(trainer)
        trainer.add_callback(callback())
        trainer.args.disable_tqdm = True
        trainer.train()
    per_step = min(timer.times[1:] or timer.times)
    return {"tokens": longest_pair(dataset), "dtype": "bf16-autocast" if bf16 else "fp32",
            "loss": "shared-prompt" if shared_prompt else "trl full sequences",
            "seconds_per_pair": round(per_step / 2, 3), "steps": len(timer.times)}


def bench_dpo_shared_prompt(model_dir: str, tokenizer: Any, total_tokens: int, bf16: bool) -> dict[str, Any]:
    """qlib's shared-prompt DPO step against trl's full-sequence step on the same pairs: the speed-up ratio."""
    shared = bench_dpo(model_dir, tokenizer, total_tokens, bf16, shared_prompt=True)
    full = bench_dpo(model_dir, tokenizer, total_tokens, bf16, shared_prompt=False)
    return {"tokens": shared["tokens"], "dtype": shared["dtype"], "shared_prompt_s_per_pair": shared["seconds_per_pair"],
            "trl_full_s_per_pair": full["seconds_per_pair"],
            "speedup": round(full["seconds_per_pair"] / shared["seconds_per_pair"], 2)}


def bench_qmodel(
    n_context: int = 1024, dpo_lengths: tuple[int, ...] = (256, 512), threads: int | None = None
) -> dict[str, Any]:
    """All qmodel benchmarks as one dict (indicative: timings depend on the machine's load).

    ``threads`` sets ``torch.set_num_threads`` first (on a CPU shared with other jobs, 1 thread avoids
    per-operation synchronisation stalls that penalise small batches).
    """
    from qlib.provision import load_model, smollm2_dir
    from qlib.qmodel.dpo import bf16_supported

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = load_model(torch.float32)
    result: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                              "bf16_supported": bf16_supported()}
    result["scoring"] = bench_scoring(model, tokenizer, n_context)
    result["episode_cache"] = bench_episode_cache(model, tokenizer)
    result["qnet_features"] = bench_qnet_features(model, tokenizer)
    result["dpo"] = [
        bench_dpo(str(smollm2_dir()), tokenizer, length, bf16)
        for length in dpo_lengths for bf16 in (False, True) if (not bf16 or result["bf16_supported"])
    ]
    # the cpu profile's pairs: ≈ 717 tokens, ≈ 93 % of them prompt
    result["dpo_shared_prompt"] = bench_dpo_shared_prompt(str(smollm2_dir()), tokenizer, 768, result["bf16_supported"])
    return result


def recorded_steps(rows: list[dict[str, Any]], env_name: str, limit: int) -> list[tuple[list[dict[str, str]], list[str]]]:
    """(messages, candidate texts) of the first ``limit`` recorded steps with 2+ distinct candidates."""
    from qlib.agent.prompts import recorded_prompts
    from qlib.envs import make

    env, steps = make(env_name), []
    for row in rows:
        for step, messages in recorded_prompts(env_name, env.reset(row["task_id"]), row["trajectory"],
                                               variant=row.get("prompt", "react")):
            if len(steps) >= limit:
                return steps
            if len(step.get("candidates") or []) >= 2:
                steps.append((messages, [c["text"] for c in step["candidates"]]))
    return steps


def bench_q_precision(env_name: str = "webshop", steps: int = 20, threads: int | None = 1) -> dict[str, Any]:
    """fp32 vs bf16 scoring of the released step Q model on recorded ``q`` steps (interleaved per step).

    Needs the released artifacts (``results/artifacts/run``): the Q model ``<env>_step`` and Table 2's
    ``q`` episodes; returns ``{"skipped": why}`` without them.
    """
    from qlib.episode_store import load_results
    from qlib.qmodel import load_q_model
    from qlib.release import release_dir
    from qlib.workbook.layout import run_paths

    if threads:
        torch.set_num_threads(threads)
    run = release_dir(run_paths("cpu"))
    model_dir, episodes = run / "qmodels" / f"{env_name}_step", run / "episodes" / f"table2_{env_name}.jsonl"
    if not (model_dir / "qlib_config.json").exists() or not episodes.exists():
        return {"skipped": f"needs the released {model_dir} and {episodes}"}
    rows = [r for r in load_results(episodes) if r.get("method") == "q"]
    models = {"fp32": load_q_model(model_dir), "bf16": load_q_model(model_dir, dtype=torch.bfloat16)}
    seconds, same = {name: 0.0 for name in models}, 0
    recorded = recorded_steps(rows, env_name, steps)
    for messages, texts in recorded:
        best = {}
        for name, model in models.items():
            start = time.perf_counter()
            q = model.score(messages, texts)
            seconds[name] += time.perf_counter() - start
            best[name] = max(range(len(q)), key=q.__getitem__)
        same += best["fp32"] == best["bf16"]
    return {"steps": len(recorded), "fp32_s": round(seconds["fp32"], 1), "bf16_s": round(seconds["bf16"], 1),
            "bf16_speedup": round(seconds["fp32"] / max(seconds["bf16"], 1e-9), 2),
            "bf16_same_argmax": f"{same}/{len(recorded)}"}


if __name__ == "__main__":
    import json

    print(json.dumps(bench_qmodel()))
